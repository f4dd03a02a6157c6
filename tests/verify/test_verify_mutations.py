"""Issue 28 item 10: tests that bite in ewc_ref/verify/.

A mutation pass over verify/ (2026-12-05) left wrong lines alive. Each test below names the
mutation it kills; each checks a quantity against its definition, not against the code's own
pipeline (the bootstrap draws are whitened with the same covariance, so an mc covariance off by
N was invisible there).
"""

import math

import numpy as np
import pytest
from scipy.stats import f as f_dist
from support.problems import batched_diag, grads, make_problem, mc_diag, rescaled, small_problem

import ewc_ref as er
from ewc_ref.curvature.result import Curvature
from ewc_ref.verify.diagnosis import _mean_gradient, diagnose
from ewc_ref.verify.kfac import g_entry_moments, kfac_fit, kronecker_blocks, sample_g_entries
from ewc_ref.verify.one_pass import diag_pass
from ewc_ref.verify.scale import fit_scale
from ewc_ref.verify.statistics import entry_moments, judge_mc, sample_entries

PROBLEM = make_problem("categorical", n=100)
DRAWS = 400  # relative sd of a variance over 400 draws ~ sqrt(2/400) = 7% (more with kurtosis)


def _variance_ratio(draws, cov):
    """median over entries of (variance of the genuine one-sample draws) / diag(cov)."""
    var = draws.var(axis=0, ddof=1)
    keep = np.diag(cov) > 1e-12 * np.diag(cov).max()
    return float(np.median(var[keep] / np.diag(cov)[keep]))


def test_mc_one_sample_covariance_of_the_one_pass_is_the_spread_of_genuine_draws():
    """Mutation: mc_cov / n instead of / n^2 in diag_pass (off by N = 100). Median ratio within [0.75, 1.33]."""
    model, lik, x, y = PROBLEM
    cols = np.arange(model.n_params)
    one = diag_pass(model, lik, x, y, cols, cols, DRAWS, np.random.default_rng(0))
    assert 0.75 <= _variance_ratio(one.mc_draws, one.mc_cov) <= 1.33
    np.testing.assert_allclose(one.mc_draws.mean(axis=0), one.mc_mean, atol=5 * np.sqrt(np.diag(one.mc_cov) / DRAWS).max())


def test_mc_one_sample_covariance_of_entry_moments_is_the_spread_of_genuine_draws():
    """Mutation: cov / n instead of / n^2 in statistics.entry_moments (off by N)."""
    model, lik, x, y = PROBLEM
    i, j = sample_entries(model.n_params, "full", np.random.default_rng(1), limit=40)
    mean, cov, draws = entry_moments(model, lik, x, i, j, bootstrap=DRAWS, rng=2)
    assert 0.75 <= _variance_ratio(draws, cov) <= 1.33


def test_kfac_g_entry_covariance_is_the_spread_of_genuine_draws():
    """Mutation: cov / n instead of / n^2 in kfac.g_entry_moments (off by N)."""
    model, lik, x, y = PROBLEM
    i, j = sample_g_entries(model, np.random.default_rng(3), limit=30)
    mean, cov, draws = g_entry_moments(model, lik, x, i, j, bootstrap=DRAWS, rng=4)
    assert 0.75 <= _variance_ratio(draws, cov) <= 1.33


def test_shape_test_p_value_is_two_sided():
    """Mutation: the F p-value of (4) without its factor 2. Without bootstrap draws p_shape is exactly
    2 min(sf, cdf) of F(M - M//2, M//2) at the reported ratio."""
    model, lik, x, y = PROBLEM
    index = np.arange(model.n_params)
    exact, cov = entry_moments(model, lik, x, index, index)
    theirs = mc_diag(model, lik, x, 1, 7)
    test = judge_mc(theirs, fit_scale(theirs, exact)[0], exact, cov, 1e-8 * float(np.linalg.norm(theirs)) / 10)
    m, half = test.entries, test.entries // 2
    want = 2 * min(f_dist.sf(test.shape_ratio, m - half, half), f_dist.cdf(test.shape_ratio, m - half, half))
    assert test.p_shape == pytest.approx(want, rel=1e-12)


def test_off_diagonal_entries_of_a_full_theirs_are_strictly_off_the_diagonal():
    """Mutation: i <= j kept for the off-diagonal samples. P = 5 (a fifth of random pairs has i == j)."""
    for seed in range(5):
        i, j = sample_entries(5, "full", np.random.default_rng(seed))
        np.testing.assert_array_equal(i[:5], j[:5])  # the diagonal part
        assert np.all(i[5:] < j[5:]) and len(set(zip(i[5:], j[5:], strict=True))) >= 5


def test_tol_zero_is_refused():
    """Mutation: 0 <= tol accepted."""
    model, lik, x, y = PROBLEM
    theirs = batched_diag(grads(model, lik, x, y), 10)
    for bad in (0, 0.0, 1, -1e-9):
        with pytest.raises(ValueError, match="tol: expected a number in"):
            diagnose(model, lik, x, y, theirs, tol=bad)


def test_screen_confirms_a_batch_size_within_ten_times_the_threshold():
    """Mutation: the confirmation margin 10 tol reduced to tol. THEIRS = F_48 + a relative 3e-6 perturbation,
    tol = 1e-6: the screen's error (3e-6) is between tol and 10 tol, so B = 48 is recomputed on all entries
    (entries None) though it does not fit; with the margin tol it is only the screen's closest."""
    model, lik, x, y = make_problem("categorical", n=480)
    F = batched_diag(grads(model, lik, x, y), 48)
    noise = np.random.default_rng(0).standard_normal(F.size)
    theirs = F + 3e-6 * np.linalg.norm(F) * noise / np.linalg.norm(noise)
    result = diagnose(model, lik, x, y, theirs, tol=1e-6, hessian=False)
    b48 = next(c for c in result.candidates if c.estimator == "batched" and c.batch_size == 48 and c.variant == "")
    assert b48.entries is None and not b48.fits and 1e-6 < b48.rel_error < 1e-5, b48


def test_mean_gradient_is_a_mean_over_n():
    """Mutation: the mean gradient of a full THEIRS divided by N - 1 (and the one pass's, by construction)."""
    model, lik, x, y = PROBLEM
    want = grads(model, lik, x, y).mean(axis=0)
    np.testing.assert_allclose(_mean_gradient(model, lik, x, y), want, rtol=1e-12, atol=1e-16)
    cols = np.arange(model.n_params)
    one = diag_pass(model, lik, x, y, cols, cols, 0, np.random.default_rng(0))
    np.testing.assert_allclose(one.mean_gradient, want, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("kfac_bias", ["joined", "separate"])
def test_kfac_fit_with_distinct_factor_scales_and_noise_is_the_dense_fit(kfac_bias):
    """Mutation: A's coefficient a in place of g in the dA term of kfac (K2). split 0.25 and scale 10
    make a = 0.25 and g = 40, and noise on both factors makes dA, dG nonzero."""
    model, lik, x, y = small_problem()
    ours = er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias=kfac_bias)
    theirs = rescaled(ours, 10.0, 0.25, np.random.default_rng(5), 1e-2)
    c, rel, _ = kfac_fit(kronecker_blocks(theirs), kronecker_blocks(ours))
    c_dense, rel_dense = fit_scale(theirs.to_dense(), ours.to_dense())
    assert c == pytest.approx(c_dense, rel=1e-9) and rel == pytest.approx(rel_dense, rel=1e-7)
    assert rel > 1e-3  # the noise is visible: the dA and dG terms are exercised


def test_an_all_zero_kfac_theirs_is_refused():
    """Mutation: the all-zero KFAC guard skipped (a zero THEIRS would be 'diagnosed')."""
    model, lik, x, y = small_problem()
    ours = er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias="joined")
    zero = Curvature("kfac", "theirs", ours.param_names, ours.param_shapes,
                     [tuple(None if f is None else np.zeros_like(f) for f in factors) for factors in ours.data],
                     ours.layer_has_bias, kfac_bias="joined")
    with pytest.raises(ValueError, match="every Kronecker product G \\(x\\) A is zero"):
        diagnose(model, lik, x, y, zero)
    assert math.isfinite(diagnose(model, lik, x, y, ours).scale)
