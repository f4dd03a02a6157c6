"""The pieces of diagnose against their naive twins and the statistics of its mc test.

Batched Fishers against er.fisher, entry moments against label enumeration, the least-squares
scale, and the mc test over seeds. Tolerances: deterministic identities to 1e-10 relative (float64
summation order; the closed-form scale fits to ~1e-15); mc: the implied S of an S-sample estimate
is M / chi2_M (relative sd sqrt(2/M)), its acceptance tested over fixed seeds at significance 1e-6
(ewc_ref.verify.statistics).
"""

import math

import numpy as np
import pytest
from scipy.special import expit, softmax
from support.diagnose_catalogue import PROBLEMS
from support.problems import (
    exact_diag,
    grads,
    make_problem,
    mc_diag,
)

import ewc_ref as er
from ewc_ref.curvature.batched import batched_fishers
from ewc_ref.verify.diagnosis import diagnose
from ewc_ref.verify.gradcheck import relative_error
from ewc_ref.verify.scale import ROUNDOFF_TOL, describe_scale, fit_scale
from ewc_ref.verify.statistics import MC_ALPHA, MC_NOISE_ALPHA, entry_moments, judge_mc


# --------------------------------------------------------------------------- pieces: naive twins
@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_batched_fishers_match_fisher_for_every_batch_size(likelihood, structure):
    model, lik, x, y = make_problem(likelihood, seed=4, n=37)  # prime N: partial last batches
    sizes = list(range(1, 38))  # every B, as diagnose screens them
    fast = batched_fishers(model, lik, x, y, sizes, structure, chunk_size=6)
    for b in sizes:
        ours = er.fisher(model, lik, x, y, estimator="batched", structure=structure, batch_size=b).data
        assert relative_error(fast[b], ours) <= 1e-10, b  # summation order only


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
def test_entry_moments_against_label_enumeration(likelihood):
    """Mean and covariance of one draw's g_i g_j, against brute force over labels."""
    model, lik, x, y = make_problem(likelihood, seed=2, n=3, sizes=(3, 4, 3))
    p = model.n_params
    i_idx = np.array([0, 5, 7, 7, p - 1])
    j_idx = np.array([0, 5, 2, 9, p - 1])
    mean, cov = entry_moments(model, lik, x, i_idx, j_idx)
    f = model.predict(x)
    total_mean, total_cov = np.zeros(5), np.zeros((5, 5))
    for n in range(len(x)):
        if likelihood == "categorical":
            labels = [np.array([k]) for k in range(3)]
            weights = softmax(f[n])
        elif likelihood == "bernoulli":
            labels = [np.array([[(k >> c) & 1 for c in range(3)]], float) for k in range(8)]
            s = expit(f[n])
            weights = [np.prod(np.where(lab[0] == 1, s, 1 - s)) for lab in labels]
        else:  # Gauss-Hermite (probabilists') is exact for the degree-4 integrand
            nodes, w = np.polynomial.hermite_e.hermegauss(5)
            grid = np.array(np.meshgrid(nodes, nodes, nodes, indexing="ij")).reshape(3, -1).T
            labels = [f[n][None] + g[None] for g in grid]
            weights = np.prod(np.array(np.meshgrid(w, w, w, indexing="ij")).reshape(3, -1).T, axis=1) / (2 * np.pi) ** 1.5
        q = np.array([(g := grads(model, lik, x[n:n + 1], lab)[0])[i_idx] * g[j_idx] for lab in labels])
        weights = np.asarray(weights)
        m = weights @ q
        total_mean += m
        total_cov += (q - m).T @ ((q - m) * weights[:, None])
    assert relative_error(mean, total_mean / len(x)) <= 1e-10
    assert relative_error(cov, total_cov / len(x) ** 2) <= 1e-10
    # The mean is the exact Fisher's diagonal entries.
    assert relative_error(mean[[0, 1, 4]], exact_diag(model, lik, x)[[0, 5, p - 1]]) <= 1e-10


def test_fit_scale_is_least_squares_not_a_norm_ratio():
    """Contract, eq (1): c = <T, F> / <F, F> minimises ||T - c F|| (the projection of T on F), and
    rel_error = ||T - c F|| / ||T||. T = [1, 0], F = [1, 1]: c = 1/2 and rel_error = sqrt(1/2); a
    norm ratio ||T|| / ||F|| would give 1/sqrt(2) and a residual of 0.54, not the minimum."""
    c, err = fit_scale(np.array([1.0, 0.0]), np.array([1.0, 1.0]))  # fit_scale(theirs, candidate)
    assert c == 0.5
    assert err == pytest.approx(math.sqrt(0.5), rel=1e-15)
    # Optimality, not the number alone: no other scale leaves a smaller residual.
    rng = np.random.default_rng(1)
    T, F = rng.standard_normal(20), rng.standard_normal(20)
    c, err = fit_scale(T, F)
    for other in (c * (1 + 1e-3), c * (1 - 1e-3), float(np.linalg.norm(T) / np.linalg.norm(F))):
        assert np.linalg.norm(T - other * F) / np.linalg.norm(T) > err


def test_fit_scale_and_describe_scale():
    rng = np.random.default_rng(0)
    F = rng.random(50)
    c, err = fit_scale(3.5 * F, F)
    assert c == pytest.approx(3.5, rel=1e-14) and err <= 1e-15
    assert fit_scale(np.ones(3), np.zeros(3)) == (0.0, 1.0)
    assert describe_scale(1.0, 10).startswith("x 1: a mean")
    assert "N/(N-1) = 10/9" in describe_scale(10 / 9, 10)
    assert "no simple factor" in describe_scale(1.0 + 1e-3, 10_000)
    assert "B^2 = 8^2" in describe_scale(64.0, 96, batch_size=8)


def test_mc_false_rejection_is_rare_over_seeds():
    """Genuine mc estimates (S = 1 and 3, 6 seeds each) are all accepted, S recovered."""
    model, lik, x, y = PROBLEMS["categorical"]
    for samples in (1, 3):
        for seed in range(6):
            result = diagnose(model, lik, x, y, mc_diag(model, lik, x, samples, 100 + seed), batch_sizes=[], hessian=False)
            assert result.estimator == "mc", (samples, seed, result.mc.reason)
            assert samples / 2 <= result.mc.implied_samples <= 2 * samples


def test_implied_samples_is_unbiased_over_seeds():
    """Contract, eq (3): for a genuine S-sample mc estimate, Q1 ~ chi2_M' / S, so the implied
    S_hat = M' / Q1 estimates S with E[S_hat / S] = M' / (M' - 2) (1.02 at M' = 103) under the CLT.
    THEIRS: 12 seeds x S in {1, 10} of ``mc_diag`` (inverse-CDF labels, independent of
    ewc_ref.model.likelihoods.sample), judged by ``judge_mc`` against one set of exact moments (the
    judgement of each THEIRS is what diagnose runs; the moments do not depend on THEIRS).
    Measured mean S_hat / S over these seeds: 1.00 (S = 1) and 1.05 (S = 10), per-seed sd 0.13
    and 0.17 (1.01 and 1.02 over seeds 1000-1011, sd 0.19 and 0.15), so the standard error of each mean is <= 0.06
    and [0.8, 1.25] is a 4-sigma band; an S_hat off by x 1.5 (mean ~1.5) fails.
    diagnose reports the same S_hat as judge_mc on the same THEIRS (checked for one seed)."""
    model, lik, x, y = PROBLEMS["categorical"]
    p = model.n_params
    index = np.arange(p)  # P = 104 <= MC_ENTRIES: every diagonal entry is tested
    exact, cov = entry_moments(model, lik, x, index, index)
    for samples in (1, 10):
        ratios = []
        for seed in range(12):
            theirs = mc_diag(model, lik, x, samples, 200 + seed)
            scale = fit_scale(theirs, exact_diag(model, lik, x))[0]
            roundoff = ROUNDOFF_TOL["float64"] * float(np.linalg.norm(theirs)) / math.sqrt(p)
            test = judge_mc(theirs, scale, exact, cov, roundoff)
            assert test.entries == p - 1  # Sigma of full rank here; one direction (F's) is spent on c (statistics (S2'))
            ratios.append(test.implied_samples / samples)
        assert 0.8 <= np.mean(ratios) <= 1.25, (samples, ratios)
    result = diagnose(model, lik, x, y, theirs, batch_sizes=[], hessian=False)
    assert result.mc.implied_samples_chi2 == pytest.approx(test.implied_samples, rel=1e-9)


@pytest.mark.parametrize(("gain", "seed"), [(4.0, 12), (8.0, 4)], ids=["confident", "very confident"])
def test_bootstrap_calibration_accepts_genuine_mc_where_the_clt_fails(gain, seed):
    """Contract (module docstring, "Both distributions assume the CLT..."): a genuine one-sample
    mc estimate of a confident network is accepted as mc, although the chi-square and F
    p-values of (3)-(4) reject it: a rarely drawn wrong label has a huge gradient, so the
    whitened residuals are far from Gaussian with N = 100, and only the p-values against
    simulated one-sample estimates (MC_BOOTSTRAP) are right. Measured on this problem, 20
    genuine S = 1 estimates per gain: the Gaussian-theory test at MC_ALPHA = 1e-6 rejected 2
    (gain 4, mean max softmax 0.86) and 5 (gain 8, 0.93) that the calibrated one accepts. The two
    cases here (with the scale error projected out, statistics (S2')): gain 4 seed 12, p_noise
    1.2e-8 by theory, calibrated 0.055; gain 8 seed 4, p_shape 3.9e-8 by theory - so removing
    either calibration rejects one of them. At gain 8 a shuffled reading passes its own test too, and
    the scores of ranking (R2) differ by 2.1 < the margin 3 (Monte Carlo sd ~0.8 at SCORE_DRAWS): the
    verdict is 'cannot tell' naming mc, which is what this problem's data can say."""
    model, lik, x, y = make_problem("categorical", seed=0, n=100)
    model = model.with_theta(model.theta * gain)
    theirs = mc_diag(model, lik, x, 1, seed)
    result = diagnose(model, lik, x, y, theirs, batch_sizes=[], hessian=False)
    assert result.mc.accepted, result.mc.reason
    assert result.estimator == ("mc" if gain == 4.0 else "cannot tell"), result.report()
    if gain == 8.0:
        assert any(label.startswith("mc") for label in result.also_consistent), result.also_consistent
    # The same judgement with the Gaussian-theory p-values alone rejects: the calibration decides.
    index = np.arange(model.n_params)
    exact, cov = entry_moments(model, lik, x, index, index)
    roundoff = ROUNDOFF_TOL["float64"] * float(np.linalg.norm(theirs)) / math.sqrt(len(index))
    theory = judge_mc(theirs, result.scale, exact, cov, roundoff)
    assert not theory.accepted and (theory.p_noise < MC_NOISE_ALPHA or theory.p_shape < MC_ALPHA), theory.reason


@pytest.mark.parametrize(("n", "gain"), [(30, 1.0), (100, 8.0)], ids=["N(C-1) < M", "very confident"])
def test_genuine_mc_is_accepted_where_the_fitted_scale_used_to_reject_it(n, gain):
    """Statistics eq (2'): with c fitted on the tested entries the residual is (c_0/c) Pi eps exactly,
    so its scale error is never read as a systematic one. Before, the residual T/c - F was whitened
    with Sigma itself: at N = 30 (N (C - 1) = 90 < M = 104, Sigma singular) every genuine one-sample
    estimate was rejected ("directions that mc sampling cannot change"), and at gain 8 (mean max
    softmax 0.93) 4 of 20 were, and the interval missed S = 1 in 6 of 20 at N = 300. Here 8 seeds
    each: all accepted as mc with S = 1 inside the 95% interval (reported S: the rounded point estimate)."""
    model, lik, x, y = make_problem("categorical", seed=0, n=n)
    model = model.with_theta(model.theta * gain)
    index = np.arange(model.n_params)
    exact, cov, draws = entry_moments(model, lik, x, index, index, bootstrap=64, rng=1)
    for seed in range(300, 308):
        theirs = mc_diag(model, lik, x, 1, seed)
        roundoff = ROUNDOFF_TOL["float64"] * float(np.linalg.norm(theirs)) / math.sqrt(len(index))
        test = judge_mc(theirs, fit_scale(theirs, exact)[0], exact, cov, roundoff, draws)
        assert test.accepted, (seed, test.reason)
        # issue 28: the reported S is the point estimate (rounded), read with its interval, which holds 1
        assert test.samples_interval[0] <= 1 <= test.samples_interval[1], (seed, test.reason)
        assert test.samples == max(1, round(test.implied_samples)), (seed, test.reason)
