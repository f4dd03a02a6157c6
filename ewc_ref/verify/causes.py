"""Why THEIRS matches nothing: the causes of a "none" verdict, each TESTED and ranked by its evidence.

For a diagonal (or the diagonal of a full THEIRS) t : (P,), each cause is a fit whose relative
residual is compared with the closest candidate's (diagnosis (D1)):

- a Kronecker-factored diagonal: t ~= c diag(G (x) A) for our KFAC of the exact (KFLR) and the
  empirical Fisher (``ewc_ref.fisher(structure='kfac')``; both bias conventions have the same diagonal);
- a constant added: t ~= c F + alpha (least squares with an intercept, F = exact or empirical): a
  prior precision or damping (H + alpha I);
- a constant per tensor: t has one value within each parameter tensor (a mean over the tensor's
  entries inside the code): the largest within-tensor relative spread;
- row order: the shuffled test (its band of B), and the way to record the order: at the observed labels,
  or at the model's most probable labels when the observed-label reading fails (diagnosis._predicted_shuffled;
  the ordered screen covers both, so the recorded order makes either exact; a loader at SAMPLED labels would
  not become exact by recording the order);
- labels sampled from the model, or a random subset of rows (``sampled.judge_centred``, run by diagnose
  for a diag THEIRS when neither mc nor shuffled passes): a passing test is listed after the causes that
  fit within round-off and before row order, the better synthetic likelihood first; a failing one among
  the rejected, with its p-value.

A tested cause that fits within 10 x the round-off threshold also stops a statistical verdict (mc,
shuffled): an exact explanation beats a statistical one (diagnosis.py). EKFAC's diagonal (its
eigenvalues corrected in the Kronecker eigenbasis) is not computed here. Causes that cannot be tested from THEIRS, MODEL and DATA alone (other weights, another likelihood,
mixed labels, half precision) follow, marked "not tested". A cause that fits within 10 x the
round-off threshold is first; then row order when the shuffled test accepts; then the others by
their relative residual, each line with its numbers.
"""

from __future__ import annotations

import math

import numpy as np

from ..curvature.estimate import fisher_unchecked
from .scale import fit_scale
from .shuffled import ShuffledTest

#: Why a passing sampled.py test is a cause and not the verdict (docs/shuffled-loader-fisher.md).
CENTRED_CAVEAT = ("; a cause, not a verdict: an observed-label loader whose own test failed, a float32 error or the "
                  "other of these two can pass this test as well (measured, docs/shuffled-loader-fisher.md)")


def _intercept_fit(t: np.ndarray, f: np.ndarray) -> tuple[float, float, float]:
    """(c, alpha, relative residual) of t ~= c f + alpha by least squares."""
    design = np.stack([f, np.ones_like(f)], axis=1)
    coef, *_ = np.linalg.lstsq(design, t, rcond=None)
    return float(coef[0]), float(coef[1]), float(np.linalg.norm(t - design @ coef) / max(np.linalg.norm(t), 1e-300))


def tested_causes(model, lik, x, y, t_diag: np.ndarray, matrices: dict, closest, tol: float,
                  kfac_diagonals: dict | None = None) -> list[tuple[float, str]]:
    """[(relative residual, line)] of the causes testable from the diagonal (module docstring);
    `kfac_diagonals` {estimator: (P,)} from the one pass (one_pass.DiagPass), else computed here."""
    out = []
    base = f"against {closest.rel_error:.3g} for the closest candidate, {closest.label}"
    for name in ("exact", "empirical"):
        # the diagonal is the same in both bias conventions: a bias entry is G_ii x A's entry of the constant
        # input 1 (joined) or bias_G_ii = G_ii (separate)
        diag = (kfac_diagonals[name] if kfac_diagonals is not None else
                fisher_unchecked(model, lik, x, y, estimator=name, structure="kfac", kfac_bias="joined").diagonal)
        c, rel = fit_scale(t_diag, diag)
        label = "KFLR / KFAC with the exact G" if name == "exact" else "KFAC of the empirical Fisher"
        out.append((rel, f"a Kronecker-factored diagonal ({label}, either bias convention): THEIRS ~= {c:.6g} x "
                         f"diag(G (x) A), relative error {rel:.3g} ({base})"))
    for name in ("exact", "empirical"):
        if (name, None, "") in matrices:
            f = np.ravel(matrices[(name, None, "")])
            f = f if f.size == t_diag.size else np.diag(matrices[(name, None, "")])
            c, alpha, rel = _intercept_fit(t_diag, f)
            out.append((rel, f"a constant added (a prior precision or damping, H + alpha I): THEIRS ~= {c:.6g} x F_{name} "
                             f"+ {alpha:.4g} (alpha = {alpha / max(abs(float(np.mean(t_diag))), 1e-300):.3g} x the mean "
                             f"entry), relative error {rel:.3g} ({base})"))
    spreads = [float(np.ptp(t_diag[s]) / max(np.abs(t_diag[s]).max(), 1e-300)) for s in model.param_slices]
    if max(spreads) <= 10 * tol:
        out.append((0.0, f"one number per parameter tensor: THEIRS is constant within each of the {len(spreads)} tensors "
                         f"(largest within-tensor spread {max(spreads):.2g}): a mean over the tensor's entries (a "
                         "reduction over the wrong axis)"))
    return out


def likely_causes(candidates, shuffled: ShuffledTest, not_tried, tested: list | None = None, tol: float = 0.0,
                  centred: dict | None = None) -> list[str]:
    """Causes of a 'none', ranked by evidence (module docstring); `tested` from ``tested_causes``, `centred`
    {'sampled' | 'subset': sampled.CentredTest} when judged."""
    tested = sorted(tested or [], key=lambda item: item[0])
    fitting = [line + " -- fits within round-off" for rel, line in tested if rel <= 10 * tol]
    others = [c for c in candidates if c.estimator != "shuffled"]
    plausible = shuffled is not None and (shuffled.accepted or (
        math.isfinite(shuffled.implied_batch_size) and shuffled.implied_batch_size > 1
        and (not others or shuffled.rel_error < min(c.rel_error for c in others))))
    causes = list(fitting)
    judged = centred or {}
    # a passing test of its own is more evidence than an expectation that fits best: first, the better score first
    causes += [test.reason + CENTRED_CAVEAT
               for _, test in sorted(judged.items(), key=lambda item: -item[1].score) if test.accepted]
    if plausible:
        low, high = shuffled.batch_size_interval
        how = f", batches {shuffled.reduction}" if shuffled.reduction else ""
        evidence = (f"the shuffled test accepts (p = {shuffled.p_noise:.2g})" if shuffled.accepted
                    else f"its expectation fits better than every candidate (relative error {shuffled.rel_error:.3g})")
        at = ", at the model's most probable labels," if shuffled.labels == "predicted" else ""
        causes.append(f"rows in another order than DATA: a shuffled loader{at} with B ~ {shuffled.implied_batch_size:.0f} "
                      f"(99% {low:.0f}..{high:.0f}{how}); {evidence}. Record the order the loader yielded its rows and "
                      "batched finds it exactly: iterate ewc_ref.recorder.Recorder(loader) in the Fisher loop and "
                      "rec.save('data.npz'), or er.save_data(path, x, y, order=indices, batches=sizes)")
    causes += [line for rel, line in tested if rel > 10 * tol]
    causes += [f"tested, rejected: {test.reason}" for test in judged.values() if not test.accepted]
    causes += ["not tested: a Fisher at other weights (saved before or after an optimizer step, or of another task)",
               "not tested: another loss or likelihood than MODEL's (label smoothing, class weights, another sigma, a "
               "regulariser)",
               "not tested: clipped or capped values, labels mixed across a batch, or half-precision arithmetic"]
    if not judged:
        causes.append("not tested: a minibatch loop at labels SAMPLED from the model, or squared gradients of a random "
                      "subset of the rows (a 'fisher_n' sample): judged only for a diag THEIRS when neither mc nor "
                      "shuffled passes its own test")
    if not plausible:
        causes.append("rows in another order than DATA (a shuffled loader) with batches too small or too few to tell")
    causes += [f"a candidate not tried: {item['estimator']} ({item['flag']})" for item in not_tried]
    return causes
