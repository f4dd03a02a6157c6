"""A float32 THEIRS of a confident net: matched "within float32 round-off", or told why not (roundoff.py).

When no candidate fits a float32 THEIRS within the 1e-4 threshold and the likelihood is categorical,
``judge_float32`` takes the per-example candidates (empirical, and pred when its labels differ) and the
two closest minibatch ones (batched, in loader order) and computes for each, in one pass over its rows
(``roundoff.fisher_and_bound``), F, the a-priori bound B on a float32 computation's error and
F-hat, the same Fisher from torch's float32 output gradient (r_y = 0 where 1 - p_y < 2^-24). Then

1. THEIRS ~= c F-hat within the threshold (``fit_scale``, the same 1e-4), c is a named factor c0
   (``match_scale`` within 10 x that residual), and |T - c0 F| <= c0 B on every entry: matched --
   the candidate ``fits``, its scale c and error are those against F-hat, and ``roundoff`` says how
   much of the output gradient float32 lost, the bound and the error against F;
2. the same with c no named factor: not matched, a cause "THEIRS = c x F-hat" (a scale bug in
   float32 clothes: c = 1.001 is not round-off);
3. THEIRS within the bound at a named factor but not ~= F-hat: not matched; the cause gives the scales
   the bound allows ([lo, hi]: |T - c F| <= c B for every entry) -- another float32 implementation
   of the candidate, perhaps, but the bound alone is too wide (~1e-3 where the logits' forward error
   is bounded worst-case) to see a 1e-3 scale bug, so no verdict rests on it.

The bound is thus the safety net of the model (a match must also lie within it), never a widened
tolerance. Every match and cause says what to do: compute the loss in float64
(``F.cross_entropy(net.double()(x.double()), y)``) and square in float64.
"""

from __future__ import annotations

import math

import numpy as np

from .factors import search_factors
from .loader import VARIANTS, batch_sizes_of, reduction_of, screen_best
from .results import Candidate
from .roundoff import fisher_and_bound, modelled_grad_entries
from .scale import fit_scale, match_scale

#: Minibatch candidates (the closest by relative error) whose float32 computation is modelled.
BATCHED_TRIED = 2
#: What to do about it, in every message.
ADVICE = ("compute the loss in float64 (F.cross_entropy(net.double()(x.double()), y)) and square the "
          "gradients in float64, or accept a Fisher whose confident rows contribute float32 round-off")


def scale_interval(t: np.ndarray, f: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """[lo, hi]: the scales c > 0 with |t - c f| <= c b on every entry (t, f, b >= 0 : (P,)); lo > hi when none.

    |t - c f| <= c b  <=>  c (f + b) >= t  and  c (f - b) <= t:  lo = max t / (f + b), hi = min_{f > b} t / (f - b).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(f + b > 0, t / (f + b), np.where(t > 0, np.inf, 0.0))
        high = np.where(f > b, t / (f - b), np.inf)
    return float(low.max(initial=0.0)), float(high.min(initial=np.inf))


def _tries(model, x, y, t, cols, candidates, loader, pred_labels, tol: float, n: int):
    """Yields (candidates, rows, labels, sizes, reduction): the per-example candidates first, then the minibatch
    ones -- the recorded batches when known, else the BATCHED_TRIED (B, variant) that fit THEIRS best on the
    screened entries by the modelled float32 gradients, those within 10 tol there (else the best one alone):
    the screen against the exact F is blind once round-off dominates. The caller stops at a match."""
    rows = np.arange(n) if loader.order is None else loader.order
    same = pred_labels is not None and np.array_equal(np.asarray(pred_labels), np.asarray(y))
    by_name = {c.estimator: c for c in candidates if c.estimator in ("empirical", "pred")}
    if "empirical" in by_name:
        group = [by_name["empirical"]] + ([by_name["pred"]] if same and "pred" in by_name else [])
        yield group, np.arange(n), y, np.ones(n, dtype=np.int64), "mean"
    if "pred" in by_name and not same and pred_labels is not None:
        yield [by_name["pred"]], np.arange(n), pred_labels, np.ones(n, dtype=np.int64), "mean"
    if loader.batches is not None:
        for c in [c for c in candidates if c.estimator == "batched" and "recorded" in c.variant][:BATCHED_TRIED]:
            labels = pred_labels if c.variant.startswith("pred") else y
            yield [c], rows, labels[rows], np.asarray(loader.batches), reduction_of(c.variant)
        return
    if rows.size < 2:
        return
    entries = modelled_grad_entries(model, x[rows], y[rows], cols)
    # by error, then B, then '', 'dropped', 'kept, sum' (ranks of VARIANTS' indices): screen_arrays' stable order
    b, variant, _, err = screen_best(entries, t[cols], range(2, rows.size + 1), BATCHED_TRIED, variant_rank=(0, 2, 1))
    ranked = np.arange(b.size)
    existing = {c.key: c for c in candidates}
    for i in [i for i in ranked if err[i] <= 10 * tol] or ranked[:1]:
        key = ("batched", int(b[i]), VARIANTS[int(variant[i])])
        if key not in existing:
            existing[key] = Candidate("batched", math.nan, math.inf, batch_size=key[1], variant=key[2],
                                      note="tried for float32 round-off (the screen by float32's gradients)")
            candidates.append(existing[key])
        yield [existing[key]], rows, y[rows], batch_sizes_of(rows.size, key[1], key[2]), reduction_of(key[2])


def judge_float32(model, lik, x, y, t: np.ndarray, cols: np.ndarray, candidates: list, matrices: dict, loader,
                  pred_labels, tol: float, log) -> dict | None:
    """Rules 1-3 of the module docstring on a float32 diagonal THEIRS t : (P,); marks matched candidates.

    Returns the JSON object "roundoff" of docs/file-format.md (section 9) -- of the match, else of the
    closest try -- or None when nothing was tried (not categorical). A matched candidate gets
    ``fits``, the scale and relative error against F-hat, entries None (measured on all entries) and a
    note; ``matrices`` gains its F under the candidate's key.
    """
    if lik.name != "categorical":
        return None
    n, c_out = x.shape[0], model.n_outputs
    results = []
    for group, rows, labels, sizes, reduction in _tries(model, x, y, t, cols, candidates, loader, pred_labels, tol, n):
        head = group[0]
        log.stage(f"float32 round-off of {head.label.split(' (on')[0]}: one pass with the output gradient's bound")
        rb = fisher_and_bound(model, x[rows], np.asarray(labels), sizes, reduction)
        scale, rel = fit_scale(t, rb.modelled)
        factors = search_factors(n, head.batch_size, c_out, lik.name, 1.0, sizes.size if head.batch_size else None)
        # the scale to within the threshold: ordinary float32 errors of the p_c shift F-hat as a whole (~1e-6)
        factor, words = match_scale(scale, factors, rtol=max(10 * rel, tol))
        c0 = factor.value if factor is not None else scale
        closest = min(factors, key=lambda f: abs(math.log(abs(scale) / f.value)) if scale else math.inf)
        low, high = scale_interval(t, rb.fisher, rb.bound)
        holds = low <= c0 <= high
        exact_scale, exact_error = fit_scale(t, rb.fisher)
        for cand in group:
            if not math.isfinite(cand.scale):  # added by _tries: its fit against the exact F
                cand.scale, cand.rel_error = exact_scale, exact_error
        ok = rb.fisher > 0
        info = {"candidate": head.label.split(" (on")[0], "lost_rows": rb.cancelled_rows,
                "modelled_scale": scale, "modelled_rel_error": rel, "exact_scale": exact_scale,
                "exact_rel_error": exact_error,
                "bound_rel": float(np.linalg.norm(rb.bound) / max(np.linalg.norm(rb.fisher), 1e-300)),
                "dominated_entries": float(np.mean(rb.bound[ok] > 0.5 * rb.fisher[ok])) if ok.any() else 0.0,
                "scale_interval": [low, high] if low <= high else None, "bound_holds": bool(holds),
                "scale_factor": None if factor is None else factor.expression,
                "closest_factor": closest.expression, "closest_ratio": scale / closest.value,
                "matched": bool(rel <= tol and factor is not None and holds), "advice": ADVICE}
        results.append(info)
        if info["matched"]:
            for cand in group:
                cand.scale, cand.rel_error, cand.fits, cand.entries = scale, rel, True, None
                cand.note = (f"within float32 round-off: {info['lost_rows']:.0%} of rows lose 1 - p_y (< 2^-24); vs "
                             f"exact F relative error {exact_error:.3g} <= bound {info['bound_rel']:.3g}; vs float32's "
                             f"computation {rel:.3g}")
                matrices[cand.key] = rb.fisher
            info["scale_words"] = words
        if rel <= tol:  # an exact model of THEIRS (at a named scale or not): no other candidate fits better
            break
    if not results:
        return None
    matched = [r for r in results if r["matched"]]
    return min(matched or results, key=lambda r: (r["modelled_rel_error"], r["exact_rel_error"]))


def roundoff_words(info: dict, tol: float) -> str:
    """One line for the report or a cause: what float32 lost, the errors, the bound, what to do."""
    head = (f"{info['candidate']}, float32: {info['lost_rows']:.0%} of rows lose the output gradient's 1 - p_y "
            f"(below 2^-24, r_y computed as 0); {info['dominated_entries']:.0%} of entries are dominated by it; "
            f"relative error vs the exact F {info['exact_rel_error']:.3g} (bound {info['bound_rel']:.3g}), vs float32's "
            f"computation {info['modelled_rel_error']:.3g}")
    if info["matched"]:
        return head + f" <= {tol:g}: within float32 round-off. To remove it: {info['advice']}"
    interval = info["scale_interval"]
    if info["modelled_rel_error"] <= tol and info["scale_factor"] is None:
        why = (f"THEIRS = {info['closest_ratio']:.6g} x ({info['closest_factor']}) x its float32 computation "
               f"(c = {info['modelled_scale']:.9g}): no simple factor (a scale bug, not round-off)")
    elif info["modelled_rel_error"] <= tol:
        why = "THEIRS ~= its float32 computation but outside the a-priori round-off bound on some entries"
    elif interval is not None:
        why = (f"within the a-priori round-off bound for c in [{interval[0]:.6g}, {interval[1]:.6g}] but not ~= "
               "float32's computation (another float32 implementation?): the bound alone cannot see a 1e-3 scale bug")
    else:
        why = "beyond the float32 round-off bound at every scale: not round-off"
    return head + f"; {why}. {info['advice'][0].upper()}{info['advice'][1:]}"
