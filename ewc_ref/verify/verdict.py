"""The verdict of ``diagnose`` from its judged candidates (diagnosis.py computes them).

One rule decides (docs/file-format.md, diagnose): a deterministic candidate within round-off wins; else a
tested cause within round-off (c F + alpha, a KFAC diagonal) stops any statistical verdict; else the
accepted statistical candidates (mc, shuffled) are compared by ranking (R2), the better winning by
ranking.MARGIN, "cannot tell" otherwise; else "none" with its causes ranked by evidence (causes.py).
The scale is then named by the factor search (factors.py), for a statistical winner within its noise band.
"""

from __future__ import annotations

import math

import numpy as np

from .causes import likely_causes, tested_causes
from .factors import NATURAL, ScaleFactor
from .ranking import rank
from .readings import FAMILIES
from .results import Diagnosis
from .scale import fit_scale, match_scale, scale_factors

#: sampled.py's tests: rivals of mc and shuffled (ranking.centred_scores) and causes of a "none", never the verdict.
CENTRED = ("sampled", "subset")


def statistical_scale(c, test, n, n_outputs, lik_name, sigma):
    """(factor or None, words, se) of a statistical candidate: the simplest factor in its 2-se band; a
    shuffled reading of a loader family (readings.FAMILIES) is that family's factor."""
    se = test.scale_se if math.isfinite(test.scale_se) else 0.1 * abs(c.scale)
    family = next((f for f in FAMILIES if (f.aggregation, f.batch_loss) == (getattr(test, "reduction", ""),
                                                                         getattr(test, "batch_loss", ""))), None)
    factors = scale_factors(n, c.batch_size, n_outputs, lik_name, sigma, samples=c.samples if c.estimator == "mc" else None)
    if c.estimator == "shuffled" and family is not None:  # the search's words for that factor (its conventions)
        named = next((f for f in factors if f.expression == family.expression), None)
        words = (f"{named.words} (a loop {family.name}; c = {c.scale:.4g})" if named is not None
                 else f"x {family.expression}: {family.words} (c = {c.scale:.4g})")
        return ScaleFactor(c.scale, family.expression, words, 1), words + f" (+/- {se:.2g}, the standard error of the sampling noise)", se
    factor, words = match_scale(c.scale, factors, rtol=2 * se / max(abs(c.scale), 1e-300), simplest_first=True,
                                prefer=NATURAL[c.estimator])
    return factor, words + f" (+/- {se:.2g}, the standard error of the sampling noise)", se




def statistical_winner(candidates, tests, scores):
    """(the accepted statistical candidate to report or None, the other accepted ones, 'cannot tell' or '').

    One passing its own test is the answer; when mc and shuffled both pass, ranking.rank decides by
    the scores (ranking (R2)), and a margin below ranking.MARGIN is "cannot tell". A shuffled reading
    whose c and B are confounded (not identified, or a full THEIRS judged on its diagonal) takes part
    in the comparison but is never the verdict: when it wins, the answer is 'none' with row order as
    the first cause. sampled.py's readings (a loader at sampled labels, a subset of rows) that pass are rivals:
    scored with the others (ranking.centred_scores), never named; when one leads, or the leader wins by less
    than the margin, the answer is 'cannot tell'; when nothing nameable passes, 'none' with them as causes.
    """
    accepted = [c for c in candidates if c.estimator in NATURAL and c.fits]
    rivals = [name for name, test in tests.items() if name in CENTRED and test is not None and test.accepted]
    nameable = [c for c in accepted if not (c.estimator == "shuffled" and not tests["shuffled"].identified)]
    if nameable and rivals and scores:
        # a loader at sampled labels or a random subset that passes is a rival, never named alone: when it
        # leads, or the leader wins by less than the margin, the answer is "cannot tell" naming every one; with
        # nothing nameable passing (an unidentified shuffled reading only) it is "none", the rivals its causes
        name, _ = rank(scores)
        if name is None or name in rivals:
            return None, accepted, "cannot tell"
        accepted.sort(key=lambda c: c.estimator != name)
    elif rivals and scores:
        return None, [], ""
    elif len(accepted) == 2 and scores:
        name, _ = rank({c.estimator: scores[c.estimator] for c in accepted})
        if name is None:
            return None, accepted, "cannot tell"
        accepted.sort(key=lambda c: c.estimator != name)
    if accepted and accepted[0].estimator == "shuffled" and not tests["shuffled"].identified:
        return None, accepted[1:], ""
    if not accepted:
        return None, [], ""
    return accepted[0], accepted[1:], ""


def n_batches_of(c, n: int, loader) -> int | None:
    """K of a minibatch candidate: the recorded batches, floor(M / B) with drop_last, else ceil(M / B)."""
    if c.batch_size is None:
        return None
    m = n if loader.order is None else loader.order.size
    if "recorded" in c.variant:
        return int(loader.batches.size)
    return m // c.batch_size if c.variant.endswith("dropped") else -(-m // c.batch_size)


def score_margin(scores: dict) -> float | None:
    values = sorted(scores.values(), reverse=True)
    return values[0] - values[1] if len(values) >= 2 else None


def assemble_verdict(candidates, matrices, mc_test, shuffled, n, p, structure, precision, tol, model, lik,
             not_tried, screened, loader, scores, data, centred=None) -> Diagnosis:
    """The winner (best deterministic fit, else the best accepted statistical one, else 'none')."""
    c_out = model.n_outputs
    sigma = float(getattr(lik, "sigma", 1.0))
    common = dict(n=n, n_params=p, structure=structure, precision=precision, tol=tol, mc=mc_test,
                  shuffled=shuffled, not_tried=not_tried, batch_sizes_screened=screened,
                  centred=centred or {})
    deterministic = [c for c in candidates if c.fits and c.estimator not in NATURAL]
    tests = {"mc": mc_test, "shuffled": shuffled, **(centred or {})}
    also = []
    undecided, tested = "", []
    if deterministic:
        winner = deterministic[0]
    else:  # a tested cause within round-off (c F + alpha, a KFAC diagonal) stops a statistical verdict
        tested = tested_causes(model, lik, *data[:3], matrices, candidates[0], tol, data[3])
        exact_cause = any(rel <= 10 * tol for rel, _ in tested)
        winner, also, undecided = (None, [], "") if exact_cause else statistical_winner(candidates, tests, scores)
    common.update(statistical_scores=scores, score_margin=score_margin(scores))
    if undecided:
        best = max(also, key=lambda c: scores[c.estimator])
        rivals = [centred[name].label() for name in CENTRED if name in scores]
        return Diagnosis("cannot tell", best.scale, best.rel_error, None, None, candidates,
                         scale_words=f"x {best.scale:.6g} (the fitted c of {best.label})", closest=best,
                         also_consistent=[c.label for c in also] + rivals, **common)
    if winner is None:
        best = candidates[0]
        return Diagnosis("none", best.scale, best.rel_error, None, None, candidates,
                         scale_words=f"x {best.scale:.12g} (the fitted c of the closest, {best.label})",
                         scale_factor=None, closest=best, causes=likely_causes(candidates, shuffled, not_tried, tested, tol, centred), **common)
    if winner.estimator in NATURAL:
        factor, words, _ = statistical_scale(winner, tests[winner.estimator], n, c_out, lik.name, sigma)
        # mc's expectation is exact: neither exact nor a candidate equal to it (a ReLU net's hessian) is a runner-up
        exact = matrices[("exact", None, "")]
        others = [c for c in candidates if c is not winner and not (
            winner.estimator == "mc" and c.key in matrices and fit_scale(matrices[c.key], exact)[1] <= tol)]
        equivalent, runner_up = [], (others[0] if others else None)
    else:
        factors = scale_factors(n, winner.batch_size, c_out, lik.name, sigma, n_batches_of(winner, n, loader))
        factor, words = match_scale(winner.scale, factors, rtol=max(10 * winner.rel_error, 1e-9))
        equivalent, runner_up = equivalent_and_runner_up(winner, candidates, matrices, tol)
    # float64 epsilon as the floor: an exact 0 residual should not give an astronomic margin
    margin = runner_up.rel_error / max(winner.rel_error, np.finfo(float).eps) if runner_up is not None else math.inf
    return Diagnosis(winner.estimator, winner.scale, winner.rel_error, winner.batch_size,
                     winner.samples if winner.estimator == "mc" else None, candidates, scale_words=words,
                     scale_factor=None if factor is None else factor.expression, runner_up=runner_up,
                     margin=margin, equivalent=equivalent, also_consistent=[c.label for c in also],
                     variant=winner.variant, **common)


def equivalent_and_runner_up(winner, candidates, matrices, tol):
    """Candidates whose matrix equals the winner's here (e.g. pred = empirical at 100% accuracy),
    and the best of the others."""
    win_matrix = matrices[winner.key]
    equivalent, others = [], []
    for c in candidates:
        if c is winner:
            continue
        if c.key not in matrices:  # statistical: mc, shuffled
            # an unjudged mc is exact itself; a shuffled expectation within round-off is a deterministic
            # candidate in disguise (B = 1: empirical, B = N: the squared mean gradient)
            if (c.estimator == "mc" and c.samples is not None) or (c.estimator == "shuffled" and c.rel_error > tol):
                others.append(c)
            continue
        same = fit_scale(win_matrix, matrices[c.key])[1] <= tol and c.fits
        (equivalent if same else others).append(c)
    return equivalent, (others[0] if others else None)
