"""Naming a foreign EWC penalty: its anchor, curvature, combination over tasks and lambda.

``verify.penalty_fit`` reads THEIR penalty as one diagonal quadratic, grad Omega = W (theta - a).
Every variant of continual/penalty.py after tasks 1..T (optima theta*_t, per-task diagonal Fishers
F_t of one estimator, a mean over each task's examples) is such a quadratic, with

    W = s sum_t c_t F_t        (c_T = 1)                                                     (N1)

    combination    c_t                     anchor a
    -------------  ----------------------  ------------------------------------------------
    separate       1                       sum_t F_t theta*_t / sum_t F_t (precision-weighted)
    accumulated    1                       theta*_T
    online         gamma^(T - t)           theta*_T
    latest only    0 for t < T             theta*_T
    l2             1, F_t = 1 (identity)    1/T sum_t theta*_t

and s = lambda_paper, the lambda of the report's eq. (11), Omega = lambda/2 sum_i F_i (theta_i -
theta*_i)^2 (derivations/05_ewc_objective.md). The rows are hypotheses with their own parameters
(s; gamma), fitted by least squares to W and ranked by ONE rule: a row fits when its relative
residual ||W - W_row|| / ||W|| is within the round-off threshold of the penalty fit, and among the
rows that fit the one with fewest parameters wins (latest only, sum: 1; online: 2; free weights: T).

A .mean() of each parameter tensor's terms (instead of a sum) gives W_i = s F_i / P_t(i), P_t(i)
the size of coordinate i's tensor: no row fits W, and no single factor exists. When no row fits,
the rows are fitted once more to W_i x P_t(i) (``per_tensor_sizes``; no new free parameter, the
same threshold), and a row that fits there is named with the factor per tensor (e.g. 2/P_t).

The estimator of F_t is found by running ``diagnose`` (verify/diagnosis.py) on W against each
task's model and data, whose candidates propose the estimators and minibatch sizes worth fitting
by (N1), and then on W per task (the term s c_t F_t peeled from W with the other tasks' terms
removed), which confirms the per-task curvature with every estimator, B and S diagnose knows.

The anchor is a candidate within round-off in the W-weighted norm, relative to the size of the
parameters: ||sqrt|W| (a - candidate)|| / ||sqrt|W| theta*_T|| <= tol. The candidates are each
theta*_t, the precision-weighted mean of the fitted combination and the plain mean, then a least
squares mixture sum_t w_t theta*_t (reported with its weights when it fits), else "none" with
every distance.

lambda: given THEIR lambda, the factor s / lambda is named from the conventions of the catalogue
(``LAMBDA_FACTORS``): 2 for lambda sum F d^2 without the 1/2 (Avalanche), 2/P for a mean over the
parameters, gamma for Schwarz et al.'s gamma F* (the decay applied to the latest task too), ...
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import as_generator
from ..curvature.batched import batched_fishers
from ..curvature.estimate import fisher
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from ..progress import Progress
from ..verify.diagnosis import diagnose
from ..verify.penalty_fit import (
    PenaltyFit,
    check_samples,
    fit_penalty,
    power_of_two,
    probe_points,
    sample_penalty,
)
from .penalty_causes import curvature_causes, fisher_at_theta
from .penalty_report import AnchorCandidate, CurvatureCandidate, PenaltyDiagnosis, TaskCurvature
from .penalty_screen import screen_batch_sizes

#: Estimators fitted by (N1) for every task, before diagnose's proposals.
BASE_ESTIMATORS = ("exact", "empirical", "pred")
#: Above this many operations (T N ln N P) 'batched' is not fitted for every B; --batch-sizes gives B.
#: Measured: every B = 2..2000 for P = 9.7e3 (1.5e8 operations) took 2.7 s on the shared, loaded
#: 2-core machine, so the limit is ~10 s of prefix sums.
BATCHED_LIMIT = 5e8
#: The rows of (N1), simplest first (the number of parameters each fits); 'at theta' is the
#: non-quadratic hypothesis of a Fisher recomputed at the current weights.
ROWS = ("latest only", "sum", "online", "weights", "at theta")


def diagnose_penalty(models, lik: Likelihood, data, theirs, lam: float | None = None, gamma: float | None = None,
                     batch_sizes=None, tol: float | None = None, rng=0, progress: bool = False) -> PenaltyDiagnosis:
    """Name THEIR penalty: anchor, curvature (estimator, B), combination, gamma and lambda (module docstring).

    Parameters
    ----------
    models : list of T MLPs, theta*_1..theta*_T (the weights after each past task), same architecture
    lik : the likelihood of the models
    data : list of T (x, y), each task's data (rows in the order THEIR Fisher iterated over them)
    theirs : (theta (M, P), value (M,), grad (M, P)), a ``PenaltyFit``, or a callable
        theta (P,) -> (value, grad (P,)) probed at ``probe_points(theta*_T, 0.1)``
    lam : THEIR lambda (optional): the verdict then gives lambda_paper / lambda
    gamma : THEIR online decay (optional): the fitted gamma is compared with it and gamma^2
    batch_sizes : minibatch sizes to fit as 'batched' besides those diagnose proposes
    tol : relative round-off threshold (default: the penalty fit's, 1e-8 float64, 1e-4 float32)
    rng : seed of diagnose's statistical tests
    progress : stages on stderr

    Returns
    -------
    PenaltyDiagnosis (``.report()`` text, ``.to_dict()`` the object of docs/file-format.md, ``.to_json()`` its text)

    Raises
    ------
    ValueError or TypeError naming the argument (models, data, theirs, lam, gamma, batch_sizes, tol).
    """
    models, data = _check_tasks(models, lik, data)
    lam = _check_positive(lam, "lam")
    gamma = _check_gamma(gamma)
    p = models[0].n_params
    samples = None
    if isinstance(theirs, PenaltyFit):
        fit = theirs
    else:
        if callable(theirs):
            theirs = sample_penalty(theirs, probe_points(models[-1].theta, 0.1))
        if not (isinstance(theirs, tuple | list) and len(theirs) == 3):
            raise TypeError("theirs: expected (theta, value, grad), a PenaltyFit or a callable theta -> (value, grad)")
        samples = check_samples(*theirs)
        fit = fit_penalty(*samples, tol)
    if fit.weights.shape != (p,):
        raise ValueError(f"theirs: expected P = {p} parameters like the models, got {fit.weights.shape[0]}")
    tol = fit.tol if tol is None else tol
    log = Progress(1, "diagnose-penalty", enabled=progress)
    result = PenaltyDiagnosis(fit=fit, n_tasks=len(models), n_params=p, tol=tol, lam=lam, gamma_theirs=gamma,
                              n_examples=int(data[-1][0].shape[0]))
    if fit.quadratic not in ("diagonal quadratic", "cannot tell", "value inconsistent"):
        result.causes = [f"THEIR penalty is {fit.quadratic}: {fit.reason}"]
        if fit.quadratic != "quadratic, not diagonal":
            result.curvature = fisher_at_theta(models, lik, data, samples, tol, log, result, BASE_ESTIMATORS, BATCHED_LIMIT)
            result.name(lam, gamma)
        return result
    known = np.ones(p, dtype=bool)
    known[fit.undetermined] = False
    weights = np.where(known, fit.weights, 0.0)
    if not np.any(weights):
        result.causes = ["W = 0 at every determined coordinate: THEIR penalty is constant (lambda = 0, or no task consolidated)"]
        return result
    # whole tensors with W = 0 are not penalised (a new head, a param_list): fitted without them
    for name, cut in zip(models[0].param_names, models[0].param_slices, strict=True):
        if not np.any(weights[cut]):
            result.unpenalised.append(name)
            known[cut] = False
    # W / 2^e, max |W| in [0.5, 1): norms neither overflow nor underflow; every scale is multiplied back exactly
    unit = power_of_two(float(np.max(np.abs(weights))))
    weights = weights / unit
    fishers = _candidate_fishers(models, lik, data, weights, batch_sizes, rng, log, result)
    candidates = [row for key, fs in fishers.items() for row in _fit_rows(weights[known], [f[known] for f in fs], key)]
    result.candidates = _ranked(candidates, tol)
    best = result.candidates[0]
    per_tensor = None
    if best.rel_error > tol and len(models[0].param_slices) > 1:
        # one more hypothesis, no free parameter: a .mean() per parameter tensor, W_i = s F_i / P_t(i)
        sizes, extra = per_tensor_sizes(models[0], weights)
        per_tensor = _ranked([row for key, fs in fishers.items()
                              for row in _fit_rows((weights * sizes / extra)[known], [f[known] for f in fs], key)], tol)
        if per_tensor[0].rel_error <= tol:
            result.candidates, best, unit = per_tensor, per_tensor[0], unit * extra
            weights = weights * sizes / extra
            result.per_tensor_mean = {name: int(c.stop - c.start) for name, c in
                                      zip(models[0].param_names, models[0].param_slices, strict=True)}
    anchors = [np.asarray(m.theta, dtype=np.float64) for m in models]
    if best.rel_error <= tol:
        combined = fishers[(best.estimator, best.batch_size)]
        result.anchors = _anchor_candidates(fit.anchor, weights, anchors, best.coefficients, combined)
        result.anchor = next((a for a in result.anchors if a.rel_error <= tol), None)
        # e.g. equal optima: separate and accumulated are then the same penalty (continual/penalty.py)
        result.anchor_equivalent = [a.name for a in result.anchors if a.rel_error <= tol and a is not result.anchor
                                    and a.kind != "mixture"]  # a fitted mixture reproduces any single optimum
        if best.estimator == "identity":  # l2: every F_t = 1, so the anchor tells one quadratic (W = s) from T (W = s T)
            row = "sum" if result.anchor is not None and result.anchor.kind in ("mean", "weighted mean") else "latest only"
            best = next(c for c in result.candidates if c.estimator == "identity" and c.row == row)
        result.curvature = best
        result.equivalent = [c.label for c in result.candidates if c is not best and c.rel_error <= tol and c.row == best.row]
        if not result.unpenalised:  # diagnose compares whole Fishers; W has none on the unpenalised tensors
            result.per_task = _per_task(models, lik, data, weights, best, combined, rng, log)
    else:
        result.anchors = _anchor_candidates(fit.anchor, weights, anchors, None, None)
        result.anchor = next((a for a in result.anchors if a.rel_error <= tol), None)
        result.curvature = _statistical(result.proposal_diagnoses, len(models))
        if result.curvature is None:
            result.causes = curvature_causes(result, weights[known], fishers, known, data)
            if per_tensor is not None:
                result.causes.insert(1, f"not a mean per parameter tensor either (W_i x P_t fitted): closest "
                                        f"{per_tensor[0].label}, relative error {per_tensor[0].rel_error:.3g}")
    _rescale(result, unit)
    result.name(lam, gamma)
    return result


def _ranked(candidates: list, tol: float) -> list:
    """The rule: rows within round-off first, the fewest parameters among them, then the smaller error."""
    return sorted(candidates, key=lambda c: (c.rel_error > tol, ROWS.index(c.row) if c.rel_error <= tol else 0,
                                             c.rel_error))


def per_tensor_sizes(model: MLP, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """(P_t(i) (P,), 2^e): the size of the parameter tensor of each coordinate, and the exact power of two
    that brings max |W_i P_t(i)| / 2^e back near 1 (as ``unit`` does for W)."""
    sizes = np.empty(weights.shape)
    for cut in model.param_slices:
        sizes[cut] = cut.stop - cut.start
    return sizes, power_of_two(float(np.max(np.abs(weights * sizes))))


def _rescale(result, unit: float) -> None:
    """Multiply every scale fitted to W / unit by unit (a power of two: exact)."""
    for c in result.candidates:
        c.scale *= unit
        c.scale_se = None if c.scale_se is None else c.scale_se * unit
    for d in [*result.per_task, *result.proposal_diagnoses]:
        d.scale *= unit
        d.scale_se = None if d.scale_se is None else d.scale_se * unit
    c = result.curvature
    if c is not None and all(c is not x for x in result.candidates):  # a statistical verdict from diagnose's scale
        c.scale *= unit
        c.scale_se = None if c.scale_se is None else c.scale_se * unit


def _candidate_fishers(models, lik, data, weights, batch_sizes, rng, log, result) -> dict:
    """{(estimator, B): [F_t (P,) for each task]} for the base estimators, diagnose's winner, batched B and F = I."""
    p = models[0].n_params
    proposals = _proposals(models, lik, data, weights, rng, log, result)
    fishers = {}
    for name, b in dict.fromkeys([*((e, None) for e in BASE_ESTIMATORS), *proposals]):
        if b is not None and any(b > x.shape[0] for x, _ in data):
            continue
        log.stage(f"computing {name}{'' if b is None else f', B = {b}'} for {len(models)} task(s)")
        fishers[(name, b)] = [fisher(m, lik, x, y, estimator=name, structure="diag", batch_size=b).diagonal
                              for m, (x, y) in zip(models, data, strict=True)]
    # one task: diagnose has screened every B already; T tasks: every B here, by prefix sums
    sizes = (_batch_sizes_to_fit(batch_sizes, models, lik, data, weights, rng, log, result)
             if len(models) > 1 or batch_sizes else [])
    if sizes:
        log.stage(f"computing batched for B in {sizes[0]}..{sizes[-1]} ({len(sizes)} sizes) for {len(models)} task(s)")
        per_task = [batched_fishers(m, lik, x, y, sizes) for m, (x, y) in zip(models, data, strict=True)]
        for b in sizes:
            fishers.setdefault(("batched", b), [f[b] for f in per_task])
    fishers[("identity", None)] = [np.ones(p) for _ in models]  # the l2 baseline: F = I
    return fishers


def _check_tasks(models, lik, data):
    if isinstance(models, MLP):
        models = [models]
    models = list(models)
    if not models or not all(isinstance(m, MLP) for m in models):
        raise TypeError("models: expected a list of ewc_ref.MLP, one per past task")
    if not isinstance(lik, Likelihood):
        raise TypeError(f"lik: expected an ewc_ref Likelihood, got {type(lik).__name__}")
    sizes = models[0].layer_sizes
    for t, m in enumerate(models):
        if m.layer_sizes != sizes or m.param_names != models[0].param_names:
            raise ValueError(f"models[{t}]: expected the architecture of models[0] ({sizes}), got {m.layer_sizes}")
        if not np.all(np.isfinite(m.theta)):
            raise ValueError(f"models[{t}]: parameters contain NaN or inf")
    data = list(data)
    if len(data) != len(models):
        raise ValueError(f"data: expected one (x, y) per model ({len(models)}), got {len(data)}")
    checked = [check_model_data(m, lik, x, y, f"data[{t}] x", f"data[{t}] y")
               for t, (m, (x, y)) in enumerate(zip(models, data, strict=True))]
    return models, checked


def _check_positive(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, float | int) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _check_gamma(gamma):
    gamma = _check_positive(gamma, "gamma")
    if gamma is not None and gamma > 1:
        raise ValueError(f"gamma: expected a number in (0, 1] (the online-EWC decay), got {gamma!r}")
    return gamma


def _batch_sizes_to_fit(batch_sizes, models, lik, data, weights, rng, log, result) -> list[int]:
    """The B fitted as 'batched' on all entries: those given; else every B = 2..min N_t when affordable,
    else the B that the screen on a few entries of W finds (penalty_screen.py; none when none fits there)."""
    n = min(x.shape[0] for x, _ in data)
    if batch_sizes is not None:
        return _check_batch_sizes(batch_sizes, n)
    if n < 2:
        return []
    result.batch_sizes_screened = (2, n)
    cost = len(models) * n * models[0].n_params * max(1.0, math.log(n))  # prefix sums: sum_B K (P,) subtractions
    if cost <= BATCHED_LIMIT:
        return list(range(2, n + 1))
    log.stage(f"screening batched for every B = 2..{n} on a few entries of W")
    chosen, (closest, error, entries) = screen_batch_sizes(models, lik, data, weights, _fit_rows, result.tol,
                                                           as_generator(rng))
    result.batch_screen = {"entries": entries, "closest": closest, "rel_error": error, "confirmed": chosen}
    return chosen


def _check_batch_sizes(batch_sizes, n: int) -> list[int]:
    out = []
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or not 2 <= b <= n:
            raise ValueError(f"batch_sizes: expected integers in 2..N = {n} (the smallest task's N), got {b!r}")
        out.append(int(b))
    return sorted(set(out))


def _proposals(models, lik, data, weights, rng, log, result) -> list:
    """diagnose of W against the latest task's model: its deterministic winner is fitted by (N1) too.

    For T = 1 this is the whole Fisher diagnosis (every B, mc and shuffled judged statistically); for
    T >= 2 W mixes several tasks' Fishers and it rarely fits, but a winner outside the base set (the
    Hessian) is then fitted per task.
    """
    m, (x, y) = models[-1], data[-1]
    log.stage(f"diagnose W against task {len(models)}'s model and data")
    d = diagnose(m, lik, x, y, np.abs(weights), rng=rng)
    result.proposal_diagnoses = [TaskCurvature.from_diagnosis(len(models), d)]
    if d.estimator in ("none", "mc", "shuffled"):
        return []
    return [(d.estimator, d.batch_size)]


def _statistical(proposals, t_count) -> CurvatureCandidate | None:
    """One task whose W diagnose names statistically (mc, shuffled): its verdict with the scale's standard error."""
    if t_count != 1 or proposals[0].estimator not in ("mc", "shuffled"):
        return None
    d = proposals[0]
    return CurvatureCandidate(d.estimator, d.batch_size, "latest only", d.scale, d.rel_error, [1.0], samples=d.samples,
                              scale_se=d.scale_se)


def _fit_rows(w: np.ndarray, fs: list, key) -> list[CurvatureCandidate]:
    """The rows of (N1) fitted to w : (P',) with per-task diagonals fs (T of (P',))."""
    estimator, b = key
    design = np.stack(fs, axis=1)  # (P', T)
    norm = float(np.linalg.norm(w))
    t_count = design.shape[1]

    def row(name, coefficients, gamma=None):
        coefficients = np.asarray(coefficients, dtype=np.float64)
        basis = design @ coefficients
        bb = float(basis @ basis)
        s = float(w @ basis) / bb if bb > 0 else 0.0
        error = float(np.linalg.norm(w - s * basis)) / norm
        return CurvatureCandidate(estimator, b, name, s, error, list(map(float, coefficients)), gamma)

    rows = [row("latest only", [0.0] * (t_count - 1) + [1.0])]
    if estimator == "identity":  # l2: every F_t = 1, so only the number of terms is seen (the anchor decides)
        return rows + ([row("sum", [1.0] * t_count)] if t_count >= 2 else [])
    if t_count >= 2:
        rows.append(row("sum", [1.0] * t_count))
        free, *_ = np.linalg.lstsq(design, w, rcond=None)
        if free[-1] > 0 and t_count >= 2 and free[-2] > 0:
            # online: c_t = gamma^(T - t), gamma from the two most recent (largest) free coefficients
            gamma = float(free[-2] / free[-1])
            if gamma <= 1 + 1e-12:
                rows.append(row("online", [gamma ** (t_count - 1 - t) for t in range(t_count)], gamma=gamma))
        if t_count >= 3 or not rows[-1].row == "online":
            rows.append(row("weights", free / free[-1] if free[-1] != 0 else free))
    return rows


def _anchor_candidates(anchor, weights, anchors, coefficients, fishers) -> list[AnchorCandidate]:
    """Every candidate anchor with its W-weighted relative distance to THEIR anchor, in the order named."""
    ok = np.isfinite(anchor) & (weights != 0)
    root = np.sqrt(np.abs(weights[ok]))
    size = max(float(np.linalg.norm(root * a[ok])) for a in anchors) or 1.0

    def distance(candidate):
        return float(np.linalg.norm(root * (anchor[ok] - candidate[ok]))) / size

    t_count = len(anchors)
    out = [AnchorCandidate(f"theta*_{t_count} (the latest task's optimum)", distance(anchors[-1]), task=t_count)]
    out += [AnchorCandidate(f"theta*_{t + 1} (task {t + 1}'s optimum, not the latest)", distance(a), task=t + 1)
            for t, a in enumerate(anchors[:-1])]
    if t_count >= 2:
        out.append(AnchorCandidate("the mean of the optima 1/T sum_t theta*_t", distance(np.mean(anchors, axis=0)),
                                   kind="mean"))
    if t_count >= 2 and fishers is not None:
        terms = [c * f for c, f in zip(coefficients, fishers, strict=True)]
        total = np.sum(terms, axis=0)
        mean = np.divide(np.sum([tf * a for tf, a in zip(terms, anchors, strict=True)], axis=0), total,
                         out=np.zeros_like(total), where=total > 0)
        out.append(AnchorCandidate("the precision-weighted mean sum_t F_t theta*_t / sum_t F_t", distance(mean),
                                   kind="weighted mean"))
    if t_count >= 2:
        stack = np.stack([root * a[ok] for a in anchors], axis=1)
        mix, *_ = np.linalg.lstsq(stack, root * anchor[ok], rcond=None)
        out.append(AnchorCandidate("a mixture sum_t w_t theta*_t, w = [" + ", ".join(f"{v:.6g}" for v in mix) + "]",
                                   distance(np.stack(anchors, axis=1) @ mix), kind="mixture", mixture=list(map(float, mix))))
    return out


def _per_task(models, lik, data, weights, best, fishers, rng, log) -> list[TaskCurvature]:
    """diagnose on W per task: s c_t F_t = W - s sum_{u != t} c_u F_u, for every task with c_t > 0."""
    if best.estimator == "identity":
        return []
    out = []
    for t, (m, (x, y)) in enumerate(zip(models, data, strict=True)):
        if best.coefficients[t] <= 0:
            continue
        others = sum((best.scale * c * f for u, (c, f) in enumerate(zip(best.coefficients, fishers, strict=True)) if u != t),
                     np.zeros_like(weights))
        term = weights - others
        if not np.any(term):
            continue
        log.stage(f"diagnose task {t + 1}'s term of W")
        out.append(TaskCurvature.from_diagnosis(t + 1, diagnose(m, lik, x, y, term, rng=rng)))
    return out

