"""Grid posteriors (ewc_ref.bayes.grid): exact answers for densities with known normalisers, the
Richardson error estimate as an upper bound on the actual error, independent quadrature,
marginals, divergences, and refusals.

Tolerances: comparisons against known values use the grid's OWN error estimate (that is
the property under test: the estimate must bound the actual error). Independent adaptive
quadrature (scipy quad/nquad) is asked for 1e-10 / 1e-9 relative and its reported error is
added. Identities that only reorder sums: 1e-12.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import gammaln

import ewc_ref as er
from ewc_ref.bayes.laplace import kl_gaussians


def _spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.3 * np.eye(d)


@st.composite
def gaussians(draw, dims=(1, 2, 3)):
    d = draw(st.sampled_from(dims))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-5, 5, d)
    cov = _spd(d, seed) * draw(st.floats(0.01, 10.0))
    offset = draw(st.floats(-3.0, 3.0))
    scale_factor = draw(st.sampled_from([0.1, 1.0, 10.0]))
    return mean, cov, offset, scale_factor


@given(gaussians())
@settings(max_examples=15)
def test_gaussian_evidence_mean_and_cov_within_the_estimated_error(case):
    mean, cov, offset, scale_factor = case
    d = mean.size
    shift = 3.7  # log q = log N + shift, so log p(D) = shift exactly
    dist = stats.multivariate_normal(mean, cov)

    def log_q(z):
        return np.atleast_1d(dist.logpdf(z)) + shift

    std = np.sqrt(np.diag(cov))
    # The search starts off-centre and with a wrong width: the bounds must adapt.
    grid = er.grid_posterior(log_q, mean + offset * std, scale_factor * std, n_points={1: 201, 2: 81, 3: 33}[d])
    assert abs(grid.log_evidence - shift) <= grid.log_evidence_error
    assert np.all(np.abs(grid.mean - mean) <= grid.mean_error)
    assert np.all(np.abs(grid.cov - cov) <= grid.cov_error)
    assert grid.boundary_mass <= 1e-6
    # The grid mode is the grid point nearest the true mode (within one cell per axis).
    assert np.all(np.abs(grid.mode - mean) <= grid.spacing)
    if d == 1:
        assert abs(grid.quad_log_evidence - shift) <= 1e-9 + grid.quad_error


@given(st.floats(0.3, 30.0), st.sampled_from([21, 31, 41, 401]))
def test_richardson_estimate_bounds_the_error_of_a_skewed_density(a, n):
    # log q(z) = a z - exp(z) (log of a Gamma(a) variable): int q = Gamma(a), strongly skewed.
    def log_q(z):
        return a * z[:, 0] - np.exp(z[:, 0])

    grid = er.grid_posterior(log_q, [np.log(a)], 1 / np.sqrt(a), n_points=n)
    assert abs(grid.log_evidence - gammaln(a)) <= grid.log_evidence_error
    # E[z] = digamma(a), Var[z] = trigamma(a) for z = log of a Gamma(a) variable.
    from scipy.special import polygamma
    assert abs(grid.mean[0] - polygamma(0, a)) <= grid.mean_error[0]
    assert abs(grid.cov[0, 0] - polygamma(1, a)) <= grid.cov_error[0, 0]
    assert abs(grid.quad_log_evidence - gammaln(a)) <= 1e-9 * (1 + abs(gammaln(a))) + grid.quad_error


@st.composite
def small_posteriors(draw, d=None):
    """Logistic regression (1-2 weights) or a tiny tanh MLP with 1-2 free parameters."""
    d = draw(st.integers(1, 2)) if d is None else d
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 40))
    if draw(st.booleans()):
        model = er.MLP([rng.normal(0, 1, (1, 2))], [rng.normal(0, 1, 1)], "identity")
        x = rng.standard_normal((n, 2))
        lik = er.Bernoulli()
        free = list(range(d))
    else:
        model = er.MLP.random([1, 3, 1], "tanh", rng=rng)
        x = rng.standard_normal((n, 1))
        lik = er.Gaussian(draw(st.floats(0.3, 2.0)))
        free = sorted(rng.choice(model.n_params, d, replace=False).tolist())
    y = lik.sample(model.predict(x), rng)
    prior = er.GaussianPrior.isotropic(d, draw(st.floats(0.3, 5.0)), mean=model.theta[free])
    return er.LogPosterior(er.Subspace(model, free), lik, x, y, prior)


@given(small_posteriors())
@settings(max_examples=8)
def test_normalised_grid_posterior_integrates_to_one_by_independent_quadrature(post):
    grid = er.grid_posterior(post, post.subspace.z0(), 1.0, n_points={1: 201, 2: 61}[post.d])

    def density(z):
        return np.exp(post(z) - grid.log_evidence)

    lo, hi = grid.bounds[:, 0], grid.bounds[:, 1]
    pad = 0.2 * (hi - lo)
    # Adaptive Gauss-Kronrod cubature: an independent rule on independent points.
    result = integrate.cubature(density, lo - pad, hi + pad, rtol=1e-10, atol=0.0, max_subdivisions=2000)
    assert result.status == "converged"
    total, abserr = result.estimate, result.error
    # exp(-log p(D)) scales an error in log p(D) into a relative error of the integral.
    assert abs(total - 1) <= grid.log_evidence_error + abserr + 1e-9


@given(small_posteriors(d=2))
@settings(max_examples=10)
def test_marginals_integrate_to_one_and_carry_the_mean(post):
    grid = er.grid_posterior(post, post.subspace.z0(), 1.0, n_points=61)
    for axis in range(2):
        coords, density = grid.marginal(axis)
        total = np.trapezoid(density, coords)
        np.testing.assert_allclose(total, 1.0, rtol=1e-12)
        np.testing.assert_allclose(np.trapezoid(coords * density, coords), grid.mean[axis], rtol=1e-12,
                                   atol=1e-12 * (1 + np.sqrt(grid.cov[axis, axis])))
    np.testing.assert_allclose(grid.masses.sum(), 1.0, rtol=1e-12)


@given(gaussians(dims=(1, 2)), st.floats(-1.0, 1.0), st.floats(0.7, 1.4))
@settings(max_examples=15)
def test_grid_kl_and_tv_of_two_gaussians(case, shift, stretch):
    mean_p, cov_p, _, _ = case
    d = mean_p.size
    std = np.sqrt(np.diag(cov_p))
    mean_q, cov_q = mean_p + shift * std, cov_p * stretch
    p, q = stats.multivariate_normal(mean_p, cov_p), stats.multivariate_normal(mean_q, cov_q)
    grid = er.grid_posterior(lambda z: np.atleast_1d(p.logpdf(z)), mean_p, std, n_points={1: 401, 2: 101}[d])

    def log_q(z):
        return np.atleast_1d(q.logpdf(z))

    # The grid KL differs from the closed form by the quadrature error of a smooth integrand
    # that decays like the densities: use the grid's own relative evidence error, floored at 1e-9.
    tolerance = 1e-9 + 10 * grid.log_evidence_error
    assert abs(grid.kl_to(log_q) - kl_gaussians(mean_p, cov_p, mean_q, cov_q)) <= tolerance * (1 + kl_gaussians(mean_p, cov_p, mean_q, cov_q))
    assert grid.mass_of(log_q) <= 1 + 1e-9
    assert 0 <= grid.total_variation(log_q) <= 1
    if grid.mass_of(log_q) > 1 - 1e-9:
        expected = kl_gaussians(mean_q, cov_q, mean_p, cov_p)
        assert abs(grid.kl_from(log_q) - expected) <= tolerance * (1 + expected)


def test_kl_of_a_gaussian_with_itself_is_zero():
    grid = er.grid_posterior(lambda z: -0.5 * np.sum(z**2, -1), [0.0, 0.0], 1.0, n_points=81)
    same = stats.multivariate_normal(np.zeros(2), np.eye(2))
    assert abs(grid.kl_to(same.logpdf)) <= 1e-12
    assert grid.total_variation(same.logpdf) <= 1e-12


def _standard_normal(z):
    return -0.5 * np.sum(z**2, axis=-1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"log_density": _standard_normal, "center": np.zeros(4)}, "d <= 3"),
        ({"log_density": _standard_normal, "center": np.zeros(1), "n_points": 100}, "n_points"),
        ({"log_density": _standard_normal, "center": np.zeros(1), "scale": 0.0}, "scale"),
        ({"log_density": lambda z: np.full(len(z), np.nan), "center": np.zeros(1)}, "non-finite"),
        ({"log_density": lambda z: np.where(z[:, 0] > 1, np.inf, 0.0), "center": np.zeros(1)}, "non-finite"),
        ({"log_density": lambda z: np.full(len(z), -np.inf), "center": np.zeros(1)}, "-inf"),
        ({"log_density": lambda z: np.zeros(len(z)), "center": np.zeros(1)}, "could not find bounds"),
        ({"log_density": lambda z: np.zeros((len(z), 2)), "center": np.zeros(1)}, "shape"),
        ({"log_density": _standard_normal, "center": np.zeros(1), "bounds": [[-1.0, 1.0]]}, "outermost cells"),
        ({"log_density": _standard_normal, "center": np.zeros(2), "bounds": [[-1.0, 1.0]]}, "bounds"),
        ({"log_density": _standard_normal, "center": [np.nan]}, "center"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        er.grid_posterior(**kwargs)


def test_marginal_axis_is_checked():
    grid = er.grid_posterior(_standard_normal, np.zeros(2), 1.0, n_points=21)
    with pytest.raises(ValueError, match="axis"):
        grid.marginal(2)
