"""Grid posteriors (ewc_ref.bayes.grid): exact answers for densities with known normalisers,
independent quadrature, marginals, divergences, and refusals (the Richardson error estimate as an
upper bound on the actual error: test_grid_error_estimate.py).

Tolerances: comparisons against known values use the grid's OWN error estimate (that is
the property under test: the estimate must bound the actual error). Independent adaptive
quadrature (scipy quad/nquad) is asked for 1e-10 / 1e-9 relative and its reported error is
added. Identities that only reorder sums: 1e-12.
"""

import numpy as np
import pytest
import support.grid_cases as gc
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

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
    grid = er.grid_posterior(log_q, mean + offset * std, scale_factor * std, n_points={1: 201, 2: 81, 3: 49}[d])
    # The tolerances below are the grid's own estimates: they must also be small, or an inflated
    # estimate passes. Measured: <= 2.5e-10 of scale for d <= 2 (40x margin to 1e-8). At d = 3,
    # 49 points per axis leave few points across the narrow direction of the most correlated
    # draws: typically ~1e-8, up to 4e-4 (Hypothesis found it), so only 1e-2 is asserted there;
    # the closed-form table (test_error_estimate_is_small_when_resolved) holds 3-d to 1e-9.
    gc.assert_estimates_small(grid, 1e-8 if d <= 2 else 1e-2)
    assert abs(grid.log_evidence - shift) <= grid.log_evidence_error
    assert np.all(np.abs(grid.mean - mean) <= grid.mean_error)
    assert np.all(np.abs(grid.cov - cov) <= grid.cov_error)
    assert grid.boundary_mass <= 1e-6
    # The grid mode is the grid point nearest the true mode (within one cell per axis).
    assert np.all(np.abs(grid.mode - mean) <= grid.spacing)
    if d == 1:
        assert abs(grid.quad_log_evidence - shift) <= 1e-9 + grid.quad_error



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
    grid = er.grid_posterior(post, post.subspace.z0(), 1.0, n_points={1: 801, 2: 161}[post.d])
    # The tolerance below is the estimate of log p(D): it must be small too (at the default n the
    # measured maximum is ~1e-10; with 61 points it reached 9e-3, a test that could barely fail).
    assert grid.log_evidence_error <= 1e-8 * (1 + abs(grid.log_evidence))

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
    gc.assert_estimates_small(grid, 1e-8)  # the KL tolerance below scales with the estimate (measured <= 1.4e-10)

    def log_q(z):
        return np.atleast_1d(q.logpdf(z))

    # The grid KL differs from the closed form by the quadrature error of a smooth integrand
    # that decays like the densities: use the grid's own relative evidence error, floored at 1e-9.
    tolerance = 1e-9 + 10 * grid.log_evidence_error
    assert abs(grid.kl_to(log_q) - kl_gaussians(mean_p, cov_p, mean_q, cov_q)) <= tolerance * (1 + kl_gaussians(mean_p, cov_p, mean_q, cov_q))
    assert grid.mass_of(log_q) <= 1 + 1e-9
    assert 0 <= grid.total_variation(log_q) <= 1
    # KL(q || p) over the grid misses q's mass beyond it times log q - log p there (tens of nats:
    # the grid ends where p is e^-30 of its peak), so compare only when that mass is < 1e-12
    # (the missing part < ~1e-10, below the 1e-9 tolerance). With 1e-9 Hypothesis found a
    # wider q whose missing 1e-9 of mass gave an error of 3.5e-9.
    if grid.mass_of(log_q) > 1 - 1e-12:
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


@pytest.mark.parametrize("n", [11, 101])
@pytest.mark.parametrize("d", [1, 2])
def test_trapezoid_weights_are_exact_for_a_linear_integrand(d, n):
    """Contract: the weights are the trapezoid rule's (h/2 at the end points, h inside), which
    integrates a (multi)linear integrand exactly. q(z) = 1 + z_1 (+ 2 z_2) on fixed bounds [0, 1]^d,
    int q = 3/2 (d = 1) or 5/2 (d = 2), so log p(D) must equal log(int q) to round-off (~1e-13).
    End weights h instead of h/2 (mutant G1) add h/2 (q(0) + q(1)) ~ 0.1 and fail; the adaptive
    tests cannot see it, as their end points carry ~e^-30 of the mass."""
    coefficients = np.array([1.0, 2.0])[:d]

    def log_q(z):
        return np.log1p(z @ coefficients)

    bounds = np.tile([0.0, 1.0], (d, 1))
    # The mass is NOT small at the faces here, by design: allow it.
    grid = er.grid_posterior(log_q, np.full(d, 0.5), bounds=bounds, n_points=n, boundary_tol=0.9)
    exact = 1 + coefficients.sum() / 2
    assert abs(grid.log_evidence - np.log(exact)) <= 1e-13
    # The marginal of z_1 integrates the other axis with the same weights (exact: linear in z_2):
    # p(z_1) = (1 + z_1 + [d = 2]) / int q.
    coords, marginal = grid.marginal(0)
    np.testing.assert_allclose(marginal, (1 + coords + (d == 2)) / exact, rtol=1e-13)
