"""What diagnose-penalty says when the quadratic rows of (N1) do not fit (penalty_names.py).

Two things, both computed, never a fixed list: the hypothesis of a Fisher recomputed at the current
weights for a penalty that is not a quadratic, grad_m = s F(theta_m) (theta_m - theta*_T), fitted by
least squares over all points and entries (``fisher_at_theta``); and for a curvature that matches no
row, the causes with their numbers (``curvature_causes``): the closest estimator and its rows, tasks
weighted by their sizes N_t, diagnose's own verdict and causes on W, the batched screen's closest B,
and the candidates not tried.
"""

from __future__ import annotations

import numpy as np

from ..curvature.estimate import fisher
from ..verify.penalty_fit import power_of_two
from .penalty_report import CurvatureCandidate


def curvature_causes(result, w, fishers, known, data) -> list[str]:
    """Computed causes of a curvature 'none': the closest fits, diagnose's own causes, N-weighted tasks, not tried."""
    causes = []
    closest = result.candidates[0]
    by_row = {}
    for c in result.candidates:
        if (c.estimator, c.batch_size) == (closest.estimator, closest.batch_size):
            by_row.setdefault(c.row, c.rel_error)
    causes.append(f"no estimator and combination fit W within round-off: closest {closest.label}, relative error "
                  f"{closest.rel_error:.3g} ({closest.rel_error / result.tol:.3g} x the threshold); its rows: "
                  + ", ".join(f"{row} {error:.3g}" for row, error in by_row.items()))
    sizes = np.array([x.shape[0] for x, _ in data], dtype=np.float64)
    if len(data) > 1 and np.ptp(sizes) > 0:  # the Fishers summed over examples: tasks weighted by N_t
        design = np.stack([n * f[known] for n, f in zip(sizes, fishers[(closest.estimator, closest.batch_size)],
                                                      strict=True)], axis=1).sum(axis=1)
        s = float(w @ design) / float(design @ design)
        causes.append(f"tasks weighted by their sizes N_t = {sizes.astype(int).tolist()} (Fishers summed over examples): "
                      f"relative error {float(np.linalg.norm(w - s * design)) / float(np.linalg.norm(w)):.3g}")
    exact = [c for c in result.candidates if c.estimator == "exact"]
    if len(data) > 1 and exact:  # mc's expectation is exact; its noise is judged by diagnose for one task only
        best = min(exact, key=lambda c: c.rel_error)
        causes.append(f"a sampled Fisher (mc) per task: its expectation, the exact Fisher, fits at best {best.label} with "
                      f"relative error {best.rel_error:.3g}; sampling noise is judged for one task only (diagnose), not "
                      "for a combination of tasks")
    for d in result.proposal_diagnoses:
        causes.append(f"diagnose of W against task {d.task}'s model: {d.label}"
                      + (f", relative error {d.rel_error:.3g}" if d.estimator != "none" else ""))
        causes += [f"  diagnose: {cause}" for cause in d.causes]
    screen = result.batch_screen
    if screen is not None and not screen["confirmed"]:
        causes.append(f"batched: no B fits on the {screen['entries']} screened entries of W (so none on all); closest "
                      f"B = {screen['closest']} at relative error {screen['rel_error']:.3g} there")
    causes += [f"a candidate not tried: {item['estimator']} ({item['why']}; {item['flag']})" for item in result.not_tried]
    return causes


def fisher_at_theta(models, lik, data, samples, tol, log, result, estimators, limit: float) -> CurvatureCandidate | None:
    """grad_m = s F_e(theta_m) (theta_m - theta*_T): the Fisher recomputed at each point, latest task and anchor.

    Tried for `estimators` when THEIR samples are known and M N_T P x their number is at most `limit`; the
    candidate within round-off (relative residual over all points and entries), else None.
    """
    if samples is None:
        return None
    theta, _, grad = samples
    model, (x, y) = models[-1], data[-1]
    cost = theta.shape[0] * x.shape[0] * model.n_params * len(estimators)
    if cost > limit:
        result.not_tried.append({"estimator": "Fisher at theta", "why": f"M N P x {len(estimators)} = {cost:.3g} > {limit:g}",
                                 "flag": "fewer points"})
        return None
    grad = np.asarray(grad, dtype=np.float64)
    unit = power_of_two(float(np.max(np.abs(grad))))  # exact rescaling, as for W
    grad = grad / unit
    anchor = np.asarray(model.theta, dtype=np.float64)
    best = None
    for name in estimators:
        log.stage(f"the Fisher recomputed at each point: {name}")
        direction = np.stack([fisher(model.with_theta(point.astype(model.dtype)), lik, x, y, estimator=name).diagonal
                              * (point - anchor) for point in np.asarray(theta, dtype=np.float64)])
        uu = float(np.sum(direction * direction))
        s = float(np.sum(direction * grad)) / uu if uu > 0 else 0.0
        error = float(np.linalg.norm(grad - s * direction) / np.linalg.norm(grad))
        candidate = CurvatureCandidate(name, None, "at theta", s * unit, error, [1.0])
        result.candidates.append(candidate)
        if best is None or error < best.rel_error:
            best = candidate
    result.candidates.sort(key=lambda c: c.rel_error)
    if best.rel_error > tol:
        result.causes.append(f"not the Fisher recomputed at each point either: closest {best.estimator} of task "
                             f"{len(models)} at theta, anchor theta*_{len(models)}, relative error {best.rel_error:.3g}")
        return None
    return best
