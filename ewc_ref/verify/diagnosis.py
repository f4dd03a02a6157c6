"""Which Fisher did they compute?  Diagnose a foreign curvature file against every estimator.

Published EWC code disagrees on what "the Fisher" is: some square the gradient of a
minibatch-mean loss, some use the observed labels, some sample labels from the model, some
forget the 1/N or divide twice. Given THEIRS (a diag or full curvature npz, docs/file-format.md) and
the same weights and data, ``diagnose`` computes every candidate F on our side and fits

    THEIRS ~= c * F,     c = <T, F> / <F, F>,     rel_error = ||T - c F|| / ||T||          (1)

(least squares on the flattened arrays, Frobenius norms). The candidates are

- ``empirical``, ``exact`` (= ``ggn`` here), ``pred`` and, for small problems, ``hessian``
  (ewc_ref.fisher);
- ``batched`` for every plausible minibatch size B: all divisors of N, the powers of two up
  to N and the common sizes 8, 16, 32, 64, 100, 128, 256 (B = 1 is ``empirical`` itself:
  each minibatch is one example). All of them come from one pass over the per-example
  gradients: the gradient sum of rows [a, b) is the difference of two prefix sums
  (``batched_fishers``; its naive twin is ``ewc_ref.fisher(estimator='batched')`` per B);
- ``mc``, judged statistically (below), because an mc estimate equals ``exact`` only in
  expectation.

A deterministic candidate fits when rel_error <= ``tol``, a round-off threshold that depends
on the precision THEIRS was computed in (``roundoff_tolerance``): 1e-8 for float64, 1e-4 for
float32 (detected when every value of THEIRS, or of the model's parameters, is a float32
number written as float64, as ``.double()`` exports are). When several fit, the best one wins;
when none fits and ``mc`` is not accepted either, the answer is ``"none"``: a Fisher of the
wrong thing must not be forced into a class.

Judging ``mc`` is the business of ``statistics`` (its module docstring, eqs 2-4).

``mc``'s expectation is ``exact``, so when ``exact`` fits within round-off it wins (an mc
estimate with S -> infinity is indistinguishable from it) and mc is not judged.

Scales are reported as floats at full precision and described in words by matching c with
the factors buggy code produces (``describe_scale``): N ("the 1/N average is missing"),
1/N ("divided by N twice"), N/(N-1), B^2 (the squared gradient of a minibatch SUM), ...
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_positive_int
from ..curvature import budget, diag_hessian
from ..curvature.batched import batched_fishers_unchecked
from ..curvature.estimate import fisher_unchecked
from ..curvature.estimators import ESTIMATOR_TABLE
from ..curvature.result import as_theirs
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from ..progress import Progress
from . import kfac
from .results import Candidate, Diagnosis, MCTest
from .scale import candidate_batch_sizes, describe_scale, fit_scale, roundoff_tolerance
from .statistics import MC_BOOTSTRAP, entry_moments, judge_mc, sample_entries


def diagnose(model: MLP, lik: Likelihood, x, y, theirs, batch_sizes=None, tol: float | None = None,
             rng=0, progress: bool = False, hessian: bool | None = None) -> Diagnosis:
    """Find the estimator and scale with THEIRS ~= scale * F_estimator (module docstring).

    Parameters
    ----------
    model, lik, x, y : the weights and data THEIRS was computed on (rows in their order)
    theirs : Curvature (diag, full or kfac), dict {state_dict name: array} or of a kfac file, (P,) or (P, P) array
    batch_sizes : minibatch sizes to try for 'batched' (default ``candidate_batch_sizes(N)``)
    tol : round-off threshold on the relative residual (default ``roundoff_tolerance``)
    rng : seed or Generator for the mc test's entry subset (large P)
    progress : report the stages on stderr
    hessian : include the Hessian candidate (default: when P * N <= budget.HESSIAN_LIMIT, or for a
        diag THEIRS when its backward recursion is cheap, ``diag_hessian.is_cheap``)

    Returns
    -------
    Diagnosis (``.to_json()`` is the object of docs/file-format.md, ``.report()`` the text)

    Raises
    ------
    ValueError naming the argument: THEIRS of the wrong shape, all-zero or non-finite; data
    that does not fit the model; non-finite parameters.
    """
    x, y = check_model_data(model, lik, x, y)
    if not np.all(np.isfinite(model.theta)):
        raise ValueError("model: parameters contain NaN or inf")
    if kfac.is_kfac(theirs):  # products G (x) A, both bias conventions: verify/kfac.py
        theirs, entries = kfac.check_kfac_theirs(theirs, model)
        precision, tol = _check_tol(tol, entries, model)
        log = Progress(1, "diagnose", enabled=progress)
        return kfac.diagnose_kfac(model, lik, x, y, theirs, precision, tol, np.random.default_rng(rng), log)
    structure, t = _check_theirs(theirs, model)
    precision, tol = _check_tol(tol, t, model)
    n, p = x.shape[0], model.n_params
    if batch_sizes is None:
        batch_sizes = [b for b in candidate_batch_sizes(n) if b > 1]
    else:
        batch_sizes = sorted({check_positive_int(b, "batch_sizes", upper=n) for b in batch_sizes} - {1})
    if hessian is None:
        hessian = p * n <= budget.HESSIAN_LIMIT or (structure == "diag" and diag_hessian.is_cheap(model, lik))
    log = Progress(1, "diagnose", enabled=progress)
    matrices = _candidate_matrices(model, lik, x, y, structure, batch_sizes, hessian, log)
    candidates = [Candidate(name, *fit_scale(t, matrix), batch_size=b, note=ESTIMATOR_TABLE[name].diagnose_note)
                  for (name, b), matrix in matrices.items()]
    for c in candidates:
        c.fits = c.rel_error <= tol
    mc_test = _mc_candidate(model, lik, x, t, structure, tol, candidates, np.random.default_rng(rng), log)
    candidates.sort(key=lambda c: (c.rel_error, ESTIMATOR_TABLE[c.estimator].diagnose_rank, c.batch_size or 0))
    return _verdict(candidates, matrices, mc_test, n, p, structure, precision, tol)


def _check_theirs(theirs, model: MLP) -> tuple[str, np.ndarray]:
    """('diag' | 'full', THEIRS as float64): finite and not all zero, or ValueError naming `theirs`."""
    structure, t = as_theirs(theirs, model)
    if not np.all(np.isfinite(t)):
        raise ValueError("theirs: contains non-finite values (NaN or inf)")
    if not np.any(t):
        raise ValueError("theirs: all entries are zero; expected a curvature matrix with a nonzero entry")
    return structure, t


def _check_tol(tol, t: np.ndarray, model: MLP) -> tuple[str, float]:
    """(precision, threshold): `tol` if given (a number in (0, 1)), else the round-off threshold."""
    precision, default_tol = roundoff_tolerance(t, model)
    if tol is None:
        return precision, default_tol
    if not (isinstance(tol, float | int) and 0 < tol < 1):
        raise ValueError(f"tol: expected a number in (0, 1), got {tol!r}")
    return precision, float(tol)


def _candidate_matrices(model, lik, x, y, structure, batch_sizes, hessian, log) -> dict:
    """{(estimator, B or None): our matrix} for every deterministic candidate (estimator table rows)."""
    matrices = {}
    for name, row in ESTIMATOR_TABLE.items():
        if row.diagnose == "fit" or (row.diagnose == "fit-small" and hessian):
            log.stage(f"computing {name} ({structure})")
            matrices[(name, None)] = fisher_unchecked(model, lik, x, y, estimator=name, structure=structure).data
    log.stage(f"computing batched for {len(batch_sizes)} batch sizes")
    chunk = max(1, budget.BATCHED_CHUNK_BYTES // max(1, model.n_params))
    for b, matrix in batched_fishers_unchecked(model, lik, x, y, batch_sizes, structure, chunk).items():
        matrices[("batched", b)] = matrix
    return matrices


def _mc_candidate(model, lik, x, t, structure, tol, candidates, rng, log) -> MCTest | None:
    """Judge mc unless exact fits within round-off; append its Candidate (scale and error of exact)."""
    exact = next(c for c in candidates if c.estimator == "exact")
    if exact.fits:
        candidates.append(Candidate("mc", exact.scale, exact.rel_error, samples=None, fits=False,
                                    note="not judged: exact fits within round-off (mc with S -> infinity)"))
        return None
    log.stage("judging mc against the exact per-example label distributions")
    i_idx, j_idx = sample_entries(model.n_params, structure, rng)
    exact_entries, cov, draws = entry_moments(model, lik, x, i_idx, j_idx, bootstrap=MC_BOOTSTRAP, rng=rng)
    theirs_entries = t[i_idx] if structure == "diag" else t[i_idx, j_idx]
    roundoff = tol * float(np.linalg.norm(theirs_entries)) / math.sqrt(len(theirs_entries))
    mc_test = judge_mc(theirs_entries, exact.scale, exact_entries, cov, roundoff, draws)
    candidates.append(Candidate("mc", exact.scale, exact.rel_error, samples=mc_test.samples,
                                fits=mc_test.accepted, note=mc_test.reason))
    return mc_test


def _verdict(candidates, matrices, mc_test, n, p, structure, precision, tol) -> Diagnosis:
    """The winner (best deterministic fit, else an accepted mc, else 'none'), runner-up and scale in words."""
    deterministic = [c for c in candidates if c.fits and c.estimator != "mc"]
    if deterministic:
        winner = deterministic[0]
    elif mc_test is not None and mc_test.accepted:
        winner = next(c for c in candidates if c.estimator == "mc")
    else:
        best = candidates[0]
        return Diagnosis("none", best.scale, best.rel_error, None, None, candidates, n, p, structure, precision,
                         tol, scale_words=describe_scale(best.scale, n, best.batch_size, rtol=10 * best.rel_error),
                         mc=mc_test, closest=best)
    equivalent, runner_up = _equivalent_and_runner_up(winner, candidates, matrices, mc_test, tol)
    # float64 epsilon as the floor: an exact 0 residual should not give an astronomic margin
    margin = runner_up.rel_error / max(winner.rel_error, np.finfo(float).eps) if runner_up is not None else math.inf
    if winner.estimator == "mc":
        rtol = 4 * mc_test.scale_se / max(abs(winner.scale), 1e-300)
        words = describe_scale(winner.scale, n, None, rtol=rtol)
        words += f" (+/- {mc_test.scale_se:.2g}, the Monte Carlo standard error)"
    else:
        words = describe_scale(winner.scale, n, winner.batch_size, rtol=max(10 * winner.rel_error, 1e-9))
    return Diagnosis(winner.estimator, winner.scale, winner.rel_error, winner.batch_size,
                     winner.samples if winner.estimator == "mc" else None, candidates, n, p, structure, precision,
                     tol, scale_words=words, runner_up=runner_up, margin=margin, equivalent=equivalent,
                     mc=mc_test)


def _equivalent_and_runner_up(winner, candidates, matrices, mc_test, tol):
    """Candidates whose matrix equals the winner's here (e.g. pred = empirical at 100% accuracy),
    and the best of the others."""
    win_matrix = matrices[(winner.estimator, winner.batch_size)] if winner.estimator != "mc" else matrices[("exact", None)]
    equivalent, others = [], []
    for c in candidates:
        if c is winner or c.estimator == "mc":
            if c is not winner and mc_test is not None:  # an unjudged mc is exact itself
                others.append(c)
            continue
        same = fit_scale(win_matrix, matrices[(c.estimator, c.batch_size)])[1] <= tol and c.fits
        (equivalent if same else others).append(c)
    if winner.estimator == "mc":  # exact has the same residual: the runner-up is the best other estimator
        others = [c for c in others if c.estimator != "exact"]
    return equivalent, (others[0] if others else None)
