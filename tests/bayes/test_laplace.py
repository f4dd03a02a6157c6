"""The Laplace Gaussian (ewc_ref.bayes.laplace) against closed forms and numerically integrated
posteriors.

Tolerances:
- linear-Gaussian model: the Laplace Gaussian IS the posterior, so mean, covariance and log
  evidence equal the closed form to 1e-10 relative (float64 round-off of a d <= 3 solve and an
  N-term sum, with margin); the grid equals it within the grid's own estimated error.
- precisions: the fisher() GGN against an explicit J^T Lambda J, 1e-12 (summation order); the
  R-op Hessian against central differences of the gradient, 1e-6 normwise relative (truncation
  ~h^2 |g'''| ~ 1e-10, round-off ~eps |g| / h ~ 1e-11, four orders of margin).
- Bernstein-von Mises: KL(grid || Laplace) must fall with N; the trend assertion uses a slope
  of log KL against log N of at most -0.25 (theory: -1; the weakest slope over 12 seeds in a
  trial was -0.6) and KL(1000) below KL(10) and KL(100), on nested data sets (the first N rows
  of one 1000-row set) so that the noise is shared.
"""

import numpy as np
import pytest
import support.grid_cases as gc
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.bayes.examples import figure_data
from ewc_ref.bayes.laplace import _fisher_sum, _log_likelihood_hessian, _log_likelihood_hessian_fd
from ewc_ref.verify.gradcheck import relative_error


def _jt_lambda_j(post, z):
    """Independent reference for N F restricted to the free parameters: sum_n J_n^T Lambda_n J_n
    from the explicit Jacobian."""
    model = post.subspace.model_at(z)
    jac = model.jacobian(post.x)[:, :, post.subspace.free_indices]
    lam = post.lik.hessian(model.predict(post.x))
    return np.einsum("nci,ncb,nbj->ij", jac, lam, jac)


def logistic_posterior(x, y, prior_variance=4.0, bias=False):
    d = x.shape[1] + bias
    model = er.MLP([np.zeros((1, x.shape[1]))], [np.zeros(1) if bias else None], "identity")
    return er.LogPosterior(er.Subspace(model, list(range(d))), er.Bernoulli(), x, y,
                           er.GaussianPrior.isotropic(d, prior_variance))


def logistic_data(seed, w_true, n, rho=0.0):
    """x ~ N(0, [[1, rho], [rho, 1]]) (2 inputs) or N(0, I), y ~ Bernoulli(sigmoid(x w_true))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, w_true.size))
    if rho:
        x = x @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    y = (rng.random((n, 1)) < 1 / (1 + np.exp(-x @ w_true[:, None]))).astype(float)
    return x, y


# ----------------------------------------------------------------------------- linear-Gaussian
@st.composite
def linear_gaussian_cases(draw):
    n_inputs = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 40))
    sigma = draw(st.floats(0.3, 2.0))
    d = n_inputs + bias
    prior_mean = rng.normal(0, 1, d)
    prior_var = rng.uniform(0.2, 4.0, d)
    x = rng.standard_normal((n, n_inputs))
    y = x @ rng.normal(0, 1, (n_inputs, 1)) + (rng.normal() if bias else 0) + sigma * rng.standard_normal((n, 1))
    return x, y, sigma, bias, prior_mean, prior_var


@given(linear_gaussian_cases())
@settings(max_examples=15)
def test_linear_gaussian_laplace_is_the_posterior(case):
    x, y, sigma, bias, prior_mean, prior_var = case
    d = prior_mean.size
    model = er.MLP([np.zeros((1, x.shape[1]))], [np.zeros(1) if bias else None], "identity")
    prior = er.GaussianPrior.diagonal(prior_mean, prior_var)
    post = er.LogPosterior(er.Subspace(model, list(range(d))), er.Gaussian(sigma), x, y, prior)
    features = np.column_stack([x, np.ones(len(x))]) if bias else x  # flat order: weights, then bias
    mean, cov, log_evidence = er.linear_gaussian_posterior(features, y[:, 0], sigma, prior_mean, np.diag(prior_var))

    for kind in ("hessian", "ggn"):
        gauss = er.laplace_approximation(post, kind=kind)
        std = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(gauss.mean, mean, rtol=1e-10, atol=1e-10 * std.max())
        np.testing.assert_allclose(gauss.cov, cov, rtol=1e-10, atol=1e-10 * np.abs(cov).max())
        np.testing.assert_allclose(gauss.log_evidence, log_evidence, rtol=1e-10, atol=1e-10)

    grid = er.grid_posterior(post, gauss.mean, gauss.std, n_points={1: 201, 2: 81, 3: 49}[d])
    # The grid's own estimates are the tolerances below, so they must be small as well: measured
    # <= 1e-9 of scale for d <= 2, <= 1e-7 at d = 3 (49 points per axis, correlated posterior).
    gc.assert_estimates_small(grid, 1e-8 if d <= 2 else 1e-6)
    assert abs(grid.log_evidence - log_evidence) <= grid.log_evidence_error
    assert np.all(np.abs(grid.mean - mean) <= grid.mean_error)
    assert np.all(np.abs(grid.cov - cov) <= grid.cov_error)
    comparison = er.compare_to_grid(grid, gauss)
    # Same density on both sides: only quadrature error remains.
    assert abs(comparison.kl_grid_gaussian) <= 10 * grid.log_evidence_error
    assert abs(comparison.log_evidence_error) <= grid.log_evidence_error + 1e-10 * (1 + abs(log_evidence))


# ----------------------------------------------------------------------------- precisions
@st.composite
def tiny_mlp_posteriors(draw, n_free=None):
    """A real network (1-3-1 or 2-3-1, tanh or sigmoid) with 1-3 free parameters, others frozen."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_inputs = draw(st.integers(1, 2))
    model = er.MLP.random([n_inputs, 3, 1], draw(st.sampled_from(["tanh", "sigmoid"])), rng=rng)
    n_free = draw(st.integers(1, 3)) if n_free is None else n_free
    free = sorted(rng.choice(model.n_params, n_free, replace=False).tolist())
    n = draw(st.integers(5, 40))
    x = rng.standard_normal((n, n_inputs))
    lik = draw(st.sampled_from([er.Bernoulli(), er.Gaussian(0.5)]))
    y = lik.sample(model.predict(x), rng)
    prior = er.GaussianPrior.isotropic(n_free, draw(st.floats(0.3, 3.0)), mean=model.theta[free])
    return er.LogPosterior(er.Subspace(model, free), lik, x, y, prior)


@given(tiny_mlp_posteriors(), st.integers(0, 2**32 - 1))
def test_precisions_against_independent_references(post, seed):
    z = post.subspace.z0() + 0.3 * np.random.default_rng(seed).standard_normal(post.d)
    ggn = _fisher_sum(post, z)
    np.testing.assert_allclose(ggn, _jt_lambda_j(post, z), rtol=1e-12, atol=1e-12 * np.abs(ggn).max())
    np.testing.assert_allclose(_fisher_sum(post, z, "diag"), np.diag(np.diag(ggn)), rtol=1e-12,
                               atol=1e-12 * np.abs(ggn).max())
    hessian = _log_likelihood_hessian(post, z)
    assert relative_error(hessian, _log_likelihood_hessian_fd(post, z)) <= 1e-6
    prior = post.prior.precision
    np.testing.assert_allclose(er.posterior_precision(post, z, "hessian"), -hessian + prior, rtol=1e-12)
    np.testing.assert_allclose(er.posterior_precision(post, z, "ggn"), ggn + prior, rtol=1e-12)
    np.testing.assert_allclose(er.posterior_precision(post, z, "fisher_diag"), np.diag(np.diag(ggn + prior)), rtol=1e-12)


@pytest.mark.parametrize("structure", ["GaussianPrior", "PosteriorPrior"])
def test_fisher_diag_precision_drops_a_non_diagonal_priors_off_diagonal_terms(structure):
    """Contract (module table): kind='fisher_diag' is diag(N F) + diag(Lambda_prior), EWC's
    approximation, even when the prior's precision is NOT diagonal. Keeping the prior's
    off-diagonal terms (mutant A2) makes the precision non-diagonal and fails. With a
    PosteriorPrior (eq 4) the prior's precision is task A's fisher_diag precision, diagonal too."""
    x, y = logistic_data(5, np.array([1.0, -0.5]), 25, rho=0.6)
    prior_precision = np.array([[2.0, 1.2, 0.3], [1.2, 1.5, -0.4], [0.3, -0.4, 1.0]])  # SPD, non-diagonal
    model = er.MLP([np.zeros((1, 2))], [np.zeros(1)], "identity")
    prior = er.GaussianPrior(np.array([0.1, -0.2, 0.3]), prior_precision)
    post = er.LogPosterior(er.Subspace(model, [0, 1, 2]), er.Bernoulli(), x, y, prior)
    z = np.array([0.4, -0.3, 0.2])
    expected_prior = np.diag(np.diag(prior_precision))
    if structure == "PosteriorPrior":
        post = er.sequential_log_posterior(post, 0.0, *logistic_data(6, np.array([-1.0, 1.0]), 15))
        expected_prior = expected_prior + np.diag(np.diag(_fisher_sum(post.prior.log_posterior, z)))
    precision = er.posterior_precision(post, z, "fisher_diag")
    expected = np.diag(np.diag(_fisher_sum(post, z))) + expected_prior
    np.testing.assert_array_equal(precision - np.diag(np.diag(precision)), 0.0)
    np.testing.assert_allclose(precision, expected, rtol=1e-12)
    # The full kinds keep the prior's correlation (the contrast that makes the test meaningful).
    assert abs(er.posterior_precision(post, z, "ggn")[0, 1]) > 0.5
    gauss = er.laplace_approximation(post, z, kind="fisher_diag")
    np.testing.assert_array_equal(gauss.precision - np.diag(np.diag(gauss.precision)), 0.0)


@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
@settings(max_examples=10)
def test_logistic_regression_hessian_equals_ggn(seed, n):
    # A linear model with the canonical link: the residual term of the Hessian vanishes.
    x, y = logistic_data(seed, np.array([1.0, -2.0]), n)
    post = logistic_posterior(x, y, bias=True)
    z = np.random.default_rng(seed).standard_normal(3)
    hessian, ggn = -_log_likelihood_hessian(post, z), _fisher_sum(post, z)
    np.testing.assert_allclose(hessian, ggn, rtol=1e-10, atol=1e-12 * np.abs(ggn).max())


# ----------------------------------------------------------------------------- MAP and grid mode
@given(tiny_mlp_posteriors(n_free=2))
@settings(max_examples=12)
def test_map_gradient_vanishes_and_laplace_mean_is_within_one_cell_of_the_grid_mode(post):
    result = er.find_map(post)
    assert result.converged and result.grad_norm <= result.tolerance
    precision = er.posterior_precision(post, result.z)
    assume(np.linalg.eigvalsh(precision)[0] > 0)  # a saddle or flat point is not a Laplace case
    gauss = er.laplace_approximation(post, result.z)
    grid = er.grid_posterior(post, gauss.mean, gauss.std, n_points=61)
    best = np.max(grid.log_density) + grid.log_evidence
    if best > result.log_posterior + 1e-9 * (1 + abs(best)):
        # The optimiser found a local maximum; the grid saw a higher mode. Restart there.
        result = er.find_map(post, grid.mode)
        gauss = er.laplace_approximation(post, result.z)
    assert np.all(np.abs(gauss.mean - grid.mode) <= grid.spacing * (1 + 1e-9))


# ----------------------------------------------------------------------------- Bernstein-von Mises
@given(st.integers(0, 2**32 - 1), st.floats(-2.0, 2.0), st.floats(-2.0, 2.0))
@settings(max_examples=4)
def test_kl_grid_to_laplace_falls_with_n(seed, w0, w1):
    x, y = logistic_data(seed, np.array([w0, w1]), 1000)
    ns = np.array([10, 100, 1000])
    kls = []
    for n in ns:
        post = logistic_posterior(x[:n], y[:n])
        gauss = er.laplace_approximation(post)
        # 81 points: the posterior is tabulated to e^-30 of its peak with spacing ~0.2 std,
        # where the trapezoid rule on these smooth densities is accurate far below the KLs (~1e-3).
        grid = er.grid_posterior(post, gauss.mean, gauss.std, n_points=81)
        kls.append(er.compare_to_grid(grid, gauss).kl_grid_gaussian)
        assert kls[-1] > 100 * grid.log_evidence_error  # the KL is resolved by the grid
    kls = np.array(kls)
    slope = np.polyfit(np.log(ns), np.log(kls), 1)[0]
    assert slope <= -0.25, (kls, slope)
    assert kls[2] < min(kls[0], kls[1]), kls


# ----------------------------------------------------------------------------- eq (4) and EWC
def test_sequential_grid_posterior_equals_batch_and_ewc_gap_is_measurable():
    # Task A has strongly correlated inputs, so its posterior is correlated and a diagonal
    # precision (EWC) discards what a full one keeps.
    xa, ya = logistic_data(11, np.array([2.0, -1.0]), 30, rho=0.9)
    xb, yb = logistic_data(12, np.array([-1.0, -2.0]), 30)
    post_a = logistic_posterior(xa, ya)
    lap_a = er.laplace_approximation(post_a)
    grid_a = er.grid_posterior(post_a, lap_a.mean, lap_a.std, n_points=121)

    sequential = er.sequential_log_posterior(post_a, grid_a.log_evidence, xb, yb)
    lap_seq = er.laplace_approximation(sequential)
    grid_seq = er.grid_posterior(sequential, lap_seq.mean, lap_seq.std, n_points=121)
    batch = logistic_posterior(np.vstack([xa, xb]), np.vstack([ya, yb]))
    # A different resolution and start: the two grids share no points but the bounds.
    grid_batch = er.grid_posterior(batch, lap_seq.mean + 0.5 * lap_seq.std, 2 * lap_seq.std, n_points=101)

    # The tolerances below are sums of the grids' own estimates: each must be small (measured
    # <= 2e-10 of scale: 101-121 points per axis resolve these logistic posteriors).
    for grid in (grid_a, grid_seq, grid_batch):
        gc.assert_estimates_small(grid, 1e-8)
    # eq (4): p(theta | A, B) = p(theta | A u B), and p(A) p(B | A) = p(A, B).
    error = grid_a.log_evidence_error + grid_seq.log_evidence_error + grid_batch.log_evidence_error
    assert abs(grid_a.log_evidence + grid_seq.log_evidence - grid_batch.log_evidence) <= error
    batch_at_seq = batch(grid_seq.points()) - grid_batch.log_evidence
    assert np.max(np.abs(batch_at_seq - grid_seq.log_density.ravel())) <= error
    assert np.all(np.abs(grid_seq.mean - grid_batch.mean) <= grid_seq.mean_error + grid_batch.mean_error)
    assert abs(grid_seq.kl_to(lambda z: batch(z) - grid_batch.log_evidence)) <= error

    # EWC: p(theta | A) replaced by its diagonal-Fisher Laplace Gaussian (and, for contrast,
    # by the full-Hessian Laplace Gaussian).
    kls = {}
    for kind in ("fisher_diag", "hessian"):
        prior = er.laplace_approximation(post_a, lap_a.mean, kind=kind).as_prior()
        approx = er.LogPosterior(post_a.subspace, post_a.lik, xb, yb, prior)
        lap = er.laplace_approximation(approx)
        grid_approx = er.grid_posterior(approx, lap.mean, lap.std, n_points=121)
        kls[kind] = grid_seq.kl_to(lambda z: approx(z) - grid_approx.log_evidence)
        print(f"KL(exact sequential || {kind} Laplace of A as prior) = {kls[kind]:.4g}")
        assert kls[kind] > 1e3 * error  # measurable, far above the quadrature error
    # With correlation 0.9 in task A's inputs the diagonal loses most of the information.
    assert kls["fisher_diag"] > 10 * kls["hessian"]


# ----------------------------------------------------------------------------- bad input
def _symmetric_posterior():
    # f = w2 tanh(w1 x) is unchanged by (w1, w2) -> (-w1, -w2): two modes, and (0, 0) is a
    # saddle of the log posterior, where its Hessian is [[0, c], [c, 0]], c = sum_n x_n y_n / s^2.
    x = np.linspace(-2, 2, 20)[:, None]
    model = er.MLP([np.ones((1, 1)), np.ones((1, 1))], [None, None], "tanh")
    return er.LogPosterior(er.Subspace(model, [0, 1]), er.Gaussian(0.3), x, np.tanh(2 * x),
                           er.GaussianPrior.isotropic(2, 100.0))


def test_non_maximum_is_reported():
    post = _symmetric_posterior()
    np.testing.assert_allclose(post.grad(np.zeros(2)), 0.0, atol=1e-12)  # a stationary point
    with pytest.raises(ValueError, match="not a maximum"):
        er.laplace_approximation(post, z_map=[0.0, 0.0])


def test_map_failure_is_reported():
    x, y = logistic_data(0, np.array([1.0, 1.0]), 50)
    post = logistic_posterior(x, y)
    with pytest.raises(er.MAPNotFound, match="MAP not found"):
        er.find_map(post, z0=[30.0, -30.0], maxiter=1)
    result = er.find_map(post, z0=[30.0, -30.0], maxiter=1, check=False)
    assert not result.converged and result.grad_norm > result.tolerance


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda post, grid: er.laplace_approximation(post, kind="kfac"), "kind"),
        (lambda post, grid: er.laplace_approximation(post, z_map=[0.0, 0.0, 0.0]), "z_map"),
        (lambda post, grid: er.posterior_precision(post, np.zeros((2, 2))), "z"),
        (lambda post, grid: er.compare_to_grid(er.grid_posterior(lambda z: -z[:, 0] ** 2, [0.0], 1.0),
                                               er.laplace_approximation(post)), "dimension"),
        (lambda post, grid: er.kl_gaussians(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2)), "mean_q"),
        # was -2.0: a covariance that is not positive definite has no Gaussian
        (lambda post, grid: er.kl_gaussians(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0])),
         "cov_q: not positive definite \\(smallest eigenvalue -1\\)"),
        (lambda post, grid: er.kl_gaussians(np.zeros(2), np.zeros((2, 2)), np.zeros(2), np.eye(2)), "cov_p: not positive definite"),
        (lambda post, grid: er.kl_gaussians(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]])), "cov_q: .*symmetric"),
    ],
)
def test_bad_input(call, match):
    x, y = logistic_data(1, np.array([1.0, 0.5]), 20)
    with pytest.raises(ValueError, match=match):
        call(logistic_posterior(x, y), None)


def test_example_figure_data():
    data = figure_data(n_points=61)
    for key in ("posterior", "laplace", "diag_fisher"):
        assert data[key].shape == (61, 61) and np.all(np.isfinite(data[key]))
    for key in ("marginal_posterior", "marginal_laplace", "marginal_diag_fisher"):
        # The grid holds the posterior to e^-30 of its peak and neither Gaussian is broader here,
        # so each marginal integrates to 1 up to a 61-point trapezoid error on a smooth density.
        np.testing.assert_allclose(np.trapezoid(data[key], data["w0"]), 1.0, atol=1e-6)
    # Correlated inputs: the diagonal Gaussian is much further from the posterior.
    assert data["kl_diag_fisher"] > 10 * data["kl_laplace"] > 0


def test_non_positive_definite_precision_error_is_one_short_line():
    """Issue 14, item 7: a non-PD precision of P = 2410 once printed all 2410 entries of z (51 kB);
    the message now names the smallest eigenvalue and a summary of z, on one line of <= 300 chars."""
    from ewc_ref.bayes.laplace import LaplaceGaussian

    d = 2410
    with pytest.raises(ValueError, match="not positive definite") as info:
        LaplaceGaussian(np.linspace(-1, 1, d), -np.eye(d), 0.0, "hessian")
    message = str(info.value)
    assert "\n" not in message and len(message) <= 300, len(message)
    assert "d = 2410" in message and "-1" in message
