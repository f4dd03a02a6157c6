"""Likelihoods: closed-form derivatives against finite differences and scipy.stats,
the symmetric factor of Lambda, and label sampling against a CLT bound."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import ewc_ref as er
from ewc_ref.strategies import likelihoods
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error


@st.composite
def outputs_and_labels(draw):
    lik = draw(likelihoods())
    n, c = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    f = rng.standard_normal((n, c)) * draw(st.floats(0.1, 5.0))
    return lik, f, lik.sample(f, rng)


@given(outputs_and_labels())
def test_output_gradient_and_hessian_match_finite_differences(case):
    lik, f, y = case
    for n in range(f.shape[0]):
        row = f[n : n + 1]
        yn = y[n : n + 1]
        # Round-off of a central difference is absolute, ~eps |l| / h ~ 1e-10 for |l| ~ 10,
        # and saturated outputs have gradients far below 1: compare on a scale floored at 1.
        grad_fd = numerical_jacobian(lambda v: lik.nll(v[None], yn)[0], row[0])
        assert np.max(np.abs(lik.grad(row, yn)[0] - grad_fd)) <= 1e-7 * max(1.0, np.abs(grad_fd).max())
        hess_fd = numerical_jacobian(lambda v: lik.grad(v[None], yn)[0], row[0])
        assert np.max(np.abs(lik.hessian(row)[0] - hess_fd)) <= 1e-7 * max(1.0, np.abs(hess_fd).max())


@given(outputs_and_labels())
def test_hessian_factor_and_diagonal(case):
    lik, f, _ = case
    Q = lik.hessian_factor(f)
    Lam = lik.hessian(f)
    np.testing.assert_allclose(Q @ np.swapaxes(Q, -1, -2), Lam, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lik.hessian_diag(f), np.diagonal(Lam, axis1=1, axis2=2), rtol=1e-12, atol=1e-15)


def test_categorical_factor_columns_are_contiguous_backward_vectors():
    """exact back-propagates np.moveaxis(Q, -1, 0) : (C - 1, N, C); Q is stored that way, so the
    stacked backward GEMM reads it without a copy (and Q is still the factor, checked above)."""
    f = np.random.default_rng(0).standard_normal((7, 4))
    Q = er.Categorical().hessian_factor(f)
    assert Q.shape == (7, 4, 3)
    assert np.moveaxis(Q, -1, 0).flags.c_contiguous
    np.testing.assert_allclose(Q @ np.swapaxes(Q, -1, -2), er.Categorical().hessian(f), rtol=1e-12, atol=1e-15)


@given(outputs_and_labels())
def test_nll_is_the_scipy_log_density(case):
    lik, f, y = case
    if isinstance(lik, er.Categorical):
        p = np.exp(f - f.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        expected = -np.log(p[np.arange(len(y)), y])
    elif isinstance(lik, er.Gaussian):
        expected = -stats.norm.logpdf(y, f, lik.sigma).sum(1)
    else:
        expected = -stats.bernoulli.logpmf(y, 1 / (1 + np.exp(-f))).sum(1)
    np.testing.assert_allclose(lik.nll(f, y), expected, rtol=1e-10, atol=1e-12)


def test_nll_is_stable_for_extreme_logits():
    f = np.array([[1000.0, -1000.0]])
    assert np.isfinite(er.Categorical().nll(f, np.array([1])))[0]
    np.testing.assert_allclose(er.Categorical().nll(f, np.array([1])), [2000.0])
    np.testing.assert_allclose(er.Bernoulli().nll(f, np.array([[0.0, 1.0]])), [2000.0])


@pytest.mark.parametrize("lik", [er.Categorical(), er.Gaussian(0.5), er.Bernoulli()], ids=repr)
def test_sampling_matches_the_mean_within_a_clt_bound(lik):
    # With S = 20000 draws the sample mean of y (one-hot for categorical) has standard error
    # sqrt(Var / S); every entry must lie within 5 standard errors (fixed seed).
    rng = np.random.default_rng(0)
    f = np.array([[0.3, -1.2, 2.0]])
    S = 20000
    draws = np.stack([lik.sample(f, rng)[0] for _ in range(S)])
    if isinstance(lik, er.Categorical):
        draws = np.eye(3)[draws]
    mean = lik.mean(f)[0]
    var = np.full(3, lik.sigma**2) if isinstance(lik, er.Gaussian) else mean * (1 - mean)
    z = (draws.mean(0) - mean) / np.sqrt(var / S)
    assert np.all(np.abs(z) < 5), z


@pytest.mark.parametrize(
    ("lik", "y", "message"),
    [
        (er.Categorical(), np.array([0, 3]), "0..2"),
        (er.Categorical(), np.array([0.0, 1.0]), "integer"),
        (er.Categorical(), np.array([0, 1, 2]), "shape"),
        (er.Bernoulli(), np.array([[0.0, 0.5, 1.0]] * 2), "0 or 1"),
        (er.Gaussian(), np.array([[0.0, np.nan, 1.0]] * 2), "non-finite"),
        (er.Gaussian(), np.ones((2, 2)), "shape"),
    ],
)
def test_bad_labels_are_named(lik, y, message):
    with pytest.raises((ValueError, TypeError), match=message):
        lik.check_labels(y, 2, 3, "y")


def test_get_likelihood_validates():
    with pytest.raises(ValueError, match="likelihood"):
        er.get_likelihood("poisson")
    with pytest.raises(ValueError, match="sigma"):
        er.get_likelihood("gaussian", -1.0)
    with pytest.raises(ValueError, match="sigma"):
        er.get_likelihood("categorical", 2.0)


@given(outputs_and_labels(), st.integers(1, 4), st.integers(0, 6))
def test_sampling_is_chunk_invariant(case, samples, split):
    # Drawing rows [0, a) then [a, N) must give the labels drawn for all rows at once, so that
    # streamed Monte Carlo estimators do not depend on the chunk size.
    lik, f, _ = case
    split = min(split, f.shape[0])
    whole = lik.sample(f, np.random.default_rng(7), samples)
    rng = np.random.default_rng(7)
    parts = np.concatenate([lik.sample(f[:split], rng, samples), lik.sample(f[split:], rng, samples)])
    np.testing.assert_array_equal(parts, whole)
    assert whole.shape[:2] == (f.shape[0], samples)


# Margin by which one output of every row leads the others: 0 (not saturated), then 1 - p_max
# ~ e^-40 (a plain 1 - p keeps a few digits), e^-100 and e^-300 (a plain 1 - p is 0). Parametrized, so every margin is tested
# whatever Hypothesis draws (a drawn scale shrinks to the unsaturated case and may never leave it).
SATURATION_MARGINS = [0.0, 40.0, 100.0, 300.0]


@st.composite
def saturated_outputs(draw, margin: float):
    """(n, C) logits ~ N(0, s^2), s in [0.5, 3], with one output per row raised by `margin`."""
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    f = rng.standard_normal((n, c)) * draw(st.floats(0.5, 3.0))
    f[np.arange(n), rng.integers(0, c, n)] += margin
    return f


def _close_entrywise(actual, reference):
    # Both sides evaluate exp() of arguments up to ~|f| <= 500, whose relative error is
    # ~|arg| * eps <= 1e-13; entries that underflow below 1e-280 are not compared.
    mask = np.abs(reference) > 1e-280
    assert np.all(np.abs(actual - reference)[mask] <= 1e-12 * np.abs(reference)[mask])


@pytest.mark.parametrize("margin", SATURATION_MARGINS)
@given(data=st.data())
def test_categorical_derivatives_are_accurate_entrywise_for_saturated_outputs(margin, data):
    """grad, Lambda and Q Q^T against a log-space reference: p_i = exp(f_i - lse(f)) and
    1 - p_i = exp(lse(f without i) - lse(f)). A plain 1 - p would give 0 for p_max = 1 - 1e-20,
    losing the whole curvature of a confident network."""
    from scipy.special import logsumexp

    f = data.draw(saturated_outputs(margin))
    lik = er.Categorical()
    n, c = f.shape
    plain = 1.0 - np.exp(f.max(-1) - logsumexp(f, axis=-1))  # what a plain 1 - p_max keeps
    if margin >= 100:  # the case claimed: 1 - p_max below float64 resolution near 1
        assert np.all(plain == 0.0)
    elif margin >= 40:  # 1 - p_max < 1e-6: a plain 1 - p keeps at most 10 of its 16 digits
        assert np.all(plain < 1e-6)
    log_p = f - logsumexp(f, axis=-1, keepdims=True)
    log_q = np.array([[logsumexp(np.delete(row, i)) for i in range(c)] for row in f]) - logsumexp(f, axis=-1)[:, None]
    reference = -np.exp(log_p[:, :, None] + log_p[:, None, :])
    reference[:, np.arange(c), np.arange(c)] = np.exp(log_p + log_q)
    _close_entrywise(lik.hessian(f), reference)
    Q = lik.hessian_factor(f)
    assert Q.shape == (n, c, c - 1)  # rank of Lambda: C - 1 backward passes for 'exact'
    _close_entrywise(Q @ np.swapaxes(Q, -1, -2), reference)
    y = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    grad_reference = np.exp(log_p)
    grad_reference[np.arange(n), y] = -np.exp(log_q[np.arange(n), y])
    _close_entrywise(lik.grad(f, y), grad_reference)
    square = lik.hessian_factor_square(f)
    assert relative_error(square @ np.swapaxes(square, -1, -2), reference) <= 1e-12  # normwise only


@pytest.mark.parametrize("margin", SATURATION_MARGINS)
@given(data=st.data())
def test_bernoulli_derivatives_are_accurate_entrywise_for_saturated_outputs(margin, data):
    f = data.draw(saturated_outputs(margin)) * data.draw(st.sampled_from([1.0, -1.0]))  # p -> 1 and p -> 0
    lik = er.Bernoulli()
    y = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=f.size, max_size=f.size))).reshape(f.shape)
    softplus = np.logaddexp(0, f)  # -log(1 - p)
    softplus_neg = np.logaddexp(0, -f)  # -log p
    _close_entrywise(lik.hessian_diag(f), np.exp(-softplus - softplus_neg))
    _close_entrywise(lik.grad(f, y), np.where(y == 1, -np.exp(-softplus), np.exp(-softplus_neg)))
