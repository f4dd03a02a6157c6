"""Bayes' rule as arrays (ewc_ref.bayes.posterior): priors, the summed log-likelihood, the subspace
adapter, the batched forward pass against its naive twin, eq (4) and the linear-Gaussian
closed form.

Tolerances: identities that only reorder float64 sums, 1e-12 relative; central differences
with h = 1e-5 have truncation ~h^2 |f'''| ~ 1e-10 and round-off ~1e-16 / h, so 1e-6
normwise relative leaves four orders of margin.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

import ewc_ref as er
from ewc_ref.bayes.posterior import _forward_batch, _forward_batch_naive
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error, relu_margin


def spd_matrices(d):
    return st.integers(0, 2**32 - 1).map(lambda seed: _spd(d, seed))


def _spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T + 0.5 * np.eye(d)


@given(st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from(["isotropic", "diagonal", "full"]))
def test_gaussian_prior_is_the_normalised_gaussian(d, seed, structure):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(d)
    if structure == "isotropic":
        variance = float(rng.uniform(0.1, 5))
        prior, cov = er.GaussianPrior.isotropic(d, variance, mean), variance * np.eye(d)
    elif structure == "diagonal":
        variances = rng.uniform(0.1, 5, d)
        prior, cov = er.GaussianPrior.diagonal(mean, variances), np.diag(variances)
    else:
        cov = _spd(d, seed)
        prior = er.GaussianPrior(mean, np.linalg.inv(cov))
    z = rng.standard_normal((7, d))
    expected = stats.multivariate_normal(mean, cov).logpdf(z).reshape(7)
    np.testing.assert_allclose(prior.logpdf(z), expected, rtol=1e-12, atol=1e-12)
    numeric = numerical_jacobian(lambda t: prior.logpdf(t), z[0])
    assert relative_error(prior.grad(z[0]), numeric) <= 1e-6


@given(models_and_data())
def test_log_likelihood_is_minus_n_times_the_mean_loss(case):
    model, lik, x, y = case
    # eq (3) is a SUM over examples; the training loss of docs/file-format.md is the mean.
    np.testing.assert_allclose(er.log_likelihood(model, lik, x, y), -x.shape[0] * er.mean_loss(model, lik, x, y),
                               rtol=1e-12, atol=1e-12)


@given(models_and_data(max_layers=3, max_width=5), st.integers(1, 8))
def test_batched_forward_matches_naive_twin(case, k):
    model, _, x, _ = case
    thetas = model.theta + np.random.default_rng(k).standard_normal((k, model.n_params))
    fast, naive = _forward_batch(model, thetas, x), _forward_batch_naive(model, thetas, x)
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(naive).max()))


@st.composite
def posteriors(draw, max_free=3):
    model, lik, x, y = draw(models_and_data(max_layers=3, max_width=5))
    free = draw(st.lists(st.integers(0, model.n_params - 1), min_size=1, max_size=max_free, unique=True))
    prior = er.GaussianPrior.isotropic(len(free), draw(st.floats(0.1, 10.0)))
    return er.LogPosterior(er.Subspace(model, free), lik, x, y, prior)


@given(posteriors(), st.integers(0, 2**32 - 1))
def test_log_posterior_batch_pointwise_and_gradient(post, seed):
    z = post.subspace.z0() + 0.1 * np.random.default_rng(seed).standard_normal((5, post.d))
    pointwise = np.array([post(zk) for zk in z])
    naive = np.array([
        er.log_likelihood(post.subspace.model_at(zk), post.lik, post.x, post.y) + post.prior.logpdf(zk) for zk in z
    ])
    np.testing.assert_allclose(post(z), pointwise, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(pointwise).max()))
    np.testing.assert_allclose(pointwise, naive, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(naive).max()))
    assume(relu_margin(post.subspace.model_at(z[0]), post.x) > 1e-3)
    assert relative_error(post.grad(z[0]), numerical_jacobian(post, z[0])) <= 1e-6


def test_subspace_writes_free_entries_only():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    sub = er.Subspace(model, [5, 0, 12, 17])
    z = np.array([1.5, -2.0, 7.0, 3.0])
    theta = sub.full_theta(z)
    expected = model.theta.copy()
    expected[[5, 0, 12, 17]] = z
    np.testing.assert_array_equal(theta, expected)
    np.testing.assert_array_equal(sub.z0(), model.theta[[5, 0, 12, 17]])
    # P = 3*4 weights, 4 biases, 4*2 weights, 2 biases: index 5 is row 1, column 2 of the first weight.
    assert sub.free_names == ["0.weight[1, 2]", "0.weight[0, 0]", "0.bias[0]", "2.weight[0, 1]"]


def test_sequential_posterior_is_eq_4():
    rng = np.random.default_rng(3)
    model = er.MLP([np.zeros((1, 2))], [None], "identity")
    xa, xb = rng.standard_normal((20, 2)), rng.standard_normal((15, 2))
    ya, yb = (rng.random((20, 1)) < 0.5).astype(float), (rng.random((15, 1)) < 0.5).astype(float)
    sub, lik = er.Subspace(model, [0, 1]), er.Bernoulli()
    prior = er.GaussianPrior.isotropic(2, 2.0)
    post_a = er.LogPosterior(sub, lik, xa, ya, prior)
    log_evidence_a = -17.25  # any constant: eq (4) is an identity for every value
    post_b = er.sequential_log_posterior(post_a, log_evidence_a, xb, yb)
    post_ab = er.LogPosterior(sub, lik, np.vstack([xa, xb]), np.vstack([ya, yb]), prior)
    z = rng.standard_normal((6, 2))
    np.testing.assert_allclose(post_b(z), post_ab(z) - log_evidence_a, rtol=1e-12)
    np.testing.assert_allclose(post_b.grad(z[0]), post_ab.grad(z[0]), rtol=1e-12)


@given(st.integers(1, 30), st.integers(1, 3), st.integers(0, 2**32 - 1), st.floats(0.2, 3.0))
def test_linear_gaussian_evidence_is_the_marginal_likelihood(n, d, seed, sigma):
    rng = np.random.default_rng(seed)
    phi, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    m0, s0 = rng.standard_normal(d), _spd(d, seed + 1)
    mean, cov, log_evidence = er.linear_gaussian_posterior(phi, y, sigma, m0, s0)
    expected = stats.multivariate_normal(phi @ m0, sigma**2 * np.eye(n) + phi @ s0 @ phi.T).logpdf(y)
    np.testing.assert_allclose(log_evidence, expected, rtol=1e-10)
    # Candidate's identity log p(y) = log p(y | w) + log p(w) - log p(w | y) holds at every w.
    w = rng.standard_normal(d)
    identity = (stats.norm(phi @ w, sigma).logpdf(y).sum() + stats.multivariate_normal(m0, s0).logpdf(w)
                - stats.multivariate_normal(mean, cov).logpdf(w))
    np.testing.assert_allclose(identity, log_evidence, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda m, x, y: er.Subspace(m, [0, 0]), "free_indices"),
        (lambda m, x, y: er.Subspace(m, [99]), "free_indices"),
        (lambda m, x, y: er.Subspace(m, []), "free_indices"),
        (lambda m, x, y: er.LogPosterior(er.Subspace(m, [0, 1]), er.Bernoulli(), x, y, er.GaussianPrior.isotropic(3)), "prior"),
        (lambda m, x, y: er.LogPosterior(er.Subspace(m, [0]), er.Bernoulli(), x * np.nan, y, er.GaussianPrior.isotropic(1)), "x"),
        (lambda m, x, y: er.LogPosterior(er.Subspace(m, [0]), er.Bernoulli(), x, y[:3], er.GaussianPrior.isotropic(1)), "y"),
        (lambda m, x, y: er.LogPosterior(er.Subspace(m, [0]), er.Bernoulli(), x, y, er.GaussianPrior.isotropic(1))(np.zeros(2)), "z"),
        (lambda m, x, y: er.GaussianPrior(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
        (lambda m, x, y: er.GaussianPrior(np.zeros(2), np.array([1.0, -1.0])), "precision"),
        (lambda m, x, y: er.GaussianPrior.isotropic(2, variance=0.0), "variance"),
        (lambda m, x, y: er.linear_gaussian_posterior(x, y[:, 0], 1.0, np.zeros(3), np.eye(3)), "prior_mean"),
    ],
)
def test_bad_input_names_the_argument(build, match):
    model = er.MLP([np.zeros((1, 2))], [None], "identity")
    x = np.ones((5, 2))
    y = np.ones((5, 1))
    with pytest.raises(ValueError, match=match):
        build(model, x, y)
