"""Why THEIRS matches nothing: the likely causes of a "none" verdict, most likely first."""

from __future__ import annotations

import math

from .shuffled import ShuffledTest


def likely_causes(candidates, shuffled: ShuffledTest, not_tried) -> list[str]:
    """Likely causes of a 'none', most likely first (row order first when a shuffled loader fits best)."""
    causes = []
    others = [c for c in candidates if c.estimator != "shuffled"]
    plausible = shuffled.accepted or (math.isfinite(shuffled.implied_batch_size) and shuffled.implied_batch_size > 1
                                      and (not others or shuffled.rel_error < min(c.rel_error for c in others)))
    low, high = shuffled.batch_size_interval
    how = f", batches {shuffled.reduction}" if shuffled.reduction else ""
    row_order = (f"rows in another order than DATA: a shuffled loader with B ~ {shuffled.implied_batch_size:.0f} "
                 f"(99% {low:.0f}..{high:.0f}{how}) is consistent with THEIRS; record the order the loader yielded "
                 "its rows and batched finds it exactly: iterate ewc_ref.recorder.Recorder(loader) in the Fisher loop and "
                 "rec.save('data.npz'), or er.save_data(path, x, y, order=indices, batches=sizes)")
    if plausible:
        causes.append(row_order)
    causes += ["a Fisher at other weights (saved before or after an optimizer step, or of another task)",
               "another loss or likelihood than MODEL's (label smoothing, class weights, another sigma, a regulariser)",
               "clipped or capped values, mixed labels, or half-precision arithmetic"]
    if not plausible:
        causes.append("rows in another order than DATA (a shuffled loader) with batches too small or too few to tell")
    causes += [f"a candidate not tried: {item['estimator']} ({item['flag']})" for item in not_tried]
    return causes
