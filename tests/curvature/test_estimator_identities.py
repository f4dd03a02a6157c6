"""Every Fisher estimator, proven equal where mathematics says so and different where it does not.

Tolerances. Identities between float64 computations that differ only in summation order
(fast vs naive, full vs diag, chunked vs one-shot): 1e-10 relative, normwise per matrix; the
observed residuals are ~1e-15 (see the closing note of issue [B]). Gauss-Hermite quadrature
is exact for the quadratic integrand g g^T, so enumeration identities hold to round-off too.
Monte Carlo: per-entry z-scores against the CLT standard error from the samples, |z| <= 5
with a fixed seed (a 5-sigma excursion has probability ~6e-7 per entry).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.curvature import close

import ewc_ref as er
from ewc_ref.curvature.naive import expected_outer_product
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.gradcheck import relative_error


def kwargs_for(estimator, n, draw_batch=None):
    if estimator == "mc":
        return {"samples": 3, "rng": 11}
    if estimator == "batched":
        return {"batch_size": draw_batch or max(1, n // 2)}
    return {}


# --------------------------------------------------------------------------- 4a: Bartlett
@given(models_and_data(n=1, max_width=6, labels="model").filter(lambda c: c[0].n_outputs <= 5))
def test_bartlett_identity_by_enumeration(case):
    """E_{y~p}[g g^T] (all labels, exact weights) == J^T Lambda J, per example."""
    model, lik, x, y = case
    enumerated = expected_outer_product(model, lik, x)
    exact = er.fisher(model, lik, x, y, "exact", "full").data
    ggn = er.fisher(model, lik, x, y, "ggn", "full").data
    assert close(exact, enumerated)
    assert close(ggn, enumerated)


# --------------------------------------------------------------------------- 4b: CLT
CLT_CASES = [("categorical", "tanh", [4, 6, 3]), ("bernoulli", "sigmoid", [3, 5, 2]), ("gaussian", "relu", [3, 5, 2])]


@pytest.mark.parametrize(("likelihood", "activation", "sizes"), CLT_CASES)
def test_empirical_fisher_with_model_labels_converges_to_the_expected_hessian(likelihood, activation, sizes):
    """F_emp(y ~ model) -> E[F_emp] = exact Fisher = E_y[Hessian] (Bartlett), at rate 1/sqrt(S).

    Each of S label sets gives one empirical Fisher; their mean must sit within 5 standard
    errors of the exact Fisher entrywise. For the rate, the root-mean-square deviation over
    10 independent replicates must shrink ~4x from S = 40 to 16 S = 640 (one replicate's
    ratio is too noisy: heavy-tailed g g^T entries).
    """
    lik = er.get_likelihood(likelihood, 0.8 if likelihood == "gaussian" else None)
    model = er.MLP.random(sizes, activation, rng=3)
    x = np.random.default_rng(4).standard_normal((6, sizes[0]))
    exact = er.fisher(model, lik, x, lik.most_probable(model.predict(x)), "exact", "full").data
    rng = np.random.default_rng(5)
    f = model.predict(x)

    def draws(S):
        return np.stack([er.fisher(model, lik, x, lik.sample(f, rng), "empirical", "full").data for _ in range(S)])

    sample = draws(1600)
    stderr = sample.std(axis=0, ddof=1) / np.sqrt(len(sample))
    mask = stderr > 1e-12 * np.abs(exact).max()
    z = (sample.mean(axis=0) - exact)[mask] / stderr[mask]
    assert np.all(np.abs(z) <= 5), np.abs(z).max()

    def rms_deviation(S, replicates=10):
        return np.sqrt(np.mean([np.sum((draws(S).mean(0) - exact) ** 2) for _ in range(replicates)]))

    ratio = rms_deviation(640) / rms_deviation(40)
    assert 0.15 < ratio < 0.4, ratio  # expected 1/sqrt(16) = 0.25


def test_mc_estimator_is_unbiased_within_clt_bound():
    lik = er.Categorical()
    model = er.MLP.random([4, 6, 3], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((8, 4))
    y = np.zeros(8, dtype=int)
    exact = er.fisher(model, lik, x, y, "exact", "diag").flat
    runs = np.stack([er.fisher(model, lik, x, y, "mc", "diag", samples=20, rng=seed).flat for seed in range(200)])
    z = (runs.mean(0) - exact) / (runs.std(0, ddof=1) / np.sqrt(len(runs)))
    assert np.all(np.abs(z) <= 5), np.abs(z).max()


# --------------------------------------------------------------------------- 4c: counter-case
def test_empirical_fisher_is_not_the_fisher_when_labels_are_not_from_the_model():
    """A confident logistic regression that is wrong on every example: observed labels give
    g = (p - y) x with |p - y| ~ 1, the model's own labels weigh p (1 - p) ~ 0. The traces
    must differ by more than 10x, not by sampling noise."""
    w = np.array([[4.0, -3.0]])
    model = er.MLP([w], [np.array([0.5])], "identity")
    x = np.random.default_rng(0).standard_normal((40, 2))
    f = model.predict(x)
    y = (f < 0).astype(float)  # always the improbable label
    empirical = er.fisher(model, er.Bernoulli(), x, y, "empirical", "full").data
    exact = er.fisher(model, er.Bernoulli(), x, y, "exact", "full").data
    assert np.trace(empirical) > 10 * np.trace(exact)
    # Same model, labels drawn from it: the two agree in expectation (test above); here,
    # with the model's own most-probable labels, pred underestimates the Fisher instead.
    pred = er.fisher(model, er.Bernoulli(), x, y, "pred", "full").data
    assert np.trace(pred) < np.trace(exact)


# --------------------------------------------------------------------------- 4e: scaling
@given(models_and_data(n=1, max_width=6), st.integers(2, 9), st.sampled_from(["empirical", "exact", "pred", "ggn", "batched"]))
def test_copies_of_one_example_leave_every_mean_estimator_unchanged(case, copies, estimator):
    """Mean, not sum: an estimator that forgot the 1/N (or divided twice) would scale by N."""
    model, lik, x, y = case
    kw1 = {"batch_size": 1} if estimator == "batched" else {}
    kwn = {"batch_size": copies} if estimator == "batched" else {}
    one = er.fisher(model, lik, x, y, estimator, "full", **kw1).data
    many = er.fisher(model, lik, np.repeat(x, copies, 0), np.repeat(y, copies, 0), estimator, "full", **kwn).data
    assert close(many, one)


# --------------------------------------------------------------------------- 4f: consistency
@given(models_and_data(max_width=8), st.sampled_from(["empirical", "exact", "mc", "pred", "ggn", "batched"]))
def test_diag_and_blocks_are_parts_of_full(case, estimator):
    model, lik, x, y = case
    kw = kwargs_for(estimator, x.shape[0])
    full = er.fisher(model, lik, x, y, estimator, "full", **kw)
    diag = er.fisher(model, lik, x, y, estimator, "diag", **kw)
    block = er.fisher(model, lik, x, y, estimator, "block", **kw)
    assert close(diag.flat, np.diagonal(full.data))
    assert close(block.data, [full.data[s, s] for s in model.layer_slices])
    assert close(block.flat, diag.flat)


@given(models_and_data(n=1, max_width=8), st.sampled_from(["empirical", "exact", "mc", "pred", "ggn"]))
def test_kfac_is_the_exact_block_for_one_example(case, estimator):
    model, lik, x, y = case
    kw = kwargs_for(estimator, 1)
    kfac = er.fisher(model, lik, x, y, estimator, "kfac", **kw)
    block = er.fisher(model, lik, x, y, estimator, "block", **kw)
    assert close(kfac.to_dense(), block.to_dense())
    assert close(kfac.flat, block.flat)


@given(models_and_data(max_width=8))
def test_kfac_is_the_kronecker_product_of_mean_factors(case):
    """For N > 1 KFAC is NOT the block (mean of products != product of means): check the
    factors themselves against their definitions instead."""
    model, lik, x, y = case
    kfac = er.fisher(model, lik, x, y, "empirical", "kfac")
    f, cache = model.forward(x)
    deltas = model.backward_deltas(cache, lik.grad(f, y))
    for l, (A, G) in enumerate(kfac.data):
        a = cache.inputs[l]
        if model.has_bias[l]:
            a = np.hstack([a, np.ones((len(a), 1))])
        assert close(A, a.T @ a / len(a))
        assert close(G, deltas[l].T @ deltas[l] / len(a))


@given(models_and_data())
def test_batched_with_batch_size_one_is_empirical(case):
    model, lik, x, y = case
    assert close(er.fisher(model, lik, x, y, "batched", "diag", batch_size=1).flat,
                 er.fisher(model, lik, x, y, "empirical", "diag").flat)


@given(models_and_data(max_width=8), st.sampled_from(["diag", "full", "block", "kfac"]), st.data())
def test_matvec_to_dense_and_flat_agree(case, structure, data):
    model, lik, x, y = case
    F = er.fisher(model, lik, x, y, "exact", structure)
    dense = F.to_dense()
    v = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal((model.n_params, 2))
    assert close(F.matvec(v), dense @ v)
    assert close(F.matvec(v[:, 0]), dense @ v[:, 0])
    assert close(F.flat, np.diagonal(dense))
    assert np.allclose(dense, dense.T, rtol=0, atol=1e-14 * max(1.0, np.abs(dense).max()))


@given(models_and_data(max_layers=1, max_width=6), st.sampled_from(["full", "diag"]))
def test_linear_model_hessian_is_the_exact_fisher_for_any_labels(case, structure):
    """4d: one Linear layer (linear / logistic / softmax regression) with a canonical link:
    d^2 l / d theta^2 = J^T Lambda J exactly, since d^2 f / d theta^2 = 0, whatever y is."""
    model, lik, x, y = case
    H = er.fisher(model, lik, x, y, "hessian", structure).data
    F = er.fisher(model, lik, x, y, "exact", structure).data
    assert close(H, F)


def test_hessian_differs_from_the_fisher_for_a_hidden_layer_away_from_the_mode():
    """The counterpart of 4d: with a hidden layer and labels that do not fit, the residual
    sum_c r_c d^2 f_c is far from zero, so H != exact Fisher."""
    model = er.MLP.random([3, 5, 2], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((20, 3))
    y = np.random.default_rng(2).integers(0, 2, 20)
    H = er.fisher(model, er.Categorical(), x, y, "hessian", "full").data
    F = er.fisher(model, er.Categorical(), x, y, "exact", "full").data
    assert relative_error(H, F) > 1e-2


def test_fisher_of_a_saturated_network_is_not_lost_to_cancellation():
    """Softmax regression with margins of 40-80 nats: every p_max rounds to 1.0, so a gradient
    built as p_y - 1 (or a Lambda diagonal as p (1 - p)) would be exactly zero there. The exact
    Fisher must match 1/N sum_n x_n x_n^T (x) Lambda_n with Lambda_n from log-space
    probabilities, and the empirical Fisher at the (most probable) observed labels must match
    1/N sum_n (x_n x_n^T) (x) (r_n r_n^T) with r_n = p_n - e_y from log space, entrywise."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    x = 2.0 * np.eye(3)[[0, 1, 2, 0, 1, 2]] + 0.1 * rng.standard_normal((6, 3))
    W = 30.0 * np.eye(3)
    model = er.MLP([W], [None], "identity")
    f = model.predict(x)
    margins = np.sort(f, axis=1)[:, -1] - np.sort(f, axis=1)[:, -2]
    assert margins.min() > 37  # fl(softmax) = 1.0 for the top class of every example
    log_p = f - logsumexp(f, axis=1, keepdims=True)
    log_q = np.array([[logsumexp(np.delete(row, i)) for i in range(3)] for row in f]) - logsumexp(f, axis=1)[:, None]
    lam = -np.exp(log_p[:, :, None] + log_p[:, None, :])
    lam[:, np.arange(3), np.arange(3)] = np.exp(log_p + log_q)
    # Weight W[c, i] is flat index 3 c + i; d f_c / d W[c', i] = delta_cc' x_i.
    reference = np.einsum("ncd,ni,nj->cidj", lam, x, x).reshape(9, 9) / len(x)
    y = np.argmax(f, axis=1)
    r = np.exp(log_p)
    r[np.arange(6), y] = -np.exp(log_q[np.arange(6), y])
    empirical_reference = np.einsum("nc,nd,ni,nj->cidj", r, r, x, x).reshape(9, 9) / len(x)
    for estimator, expected in (("exact", reference), ("empirical", empirical_reference)):
        F = er.fisher(model, er.Categorical(), x, y, estimator, "full").data
        mask = np.abs(expected) > 1e-300
        # exp() of arguments up to ~200 carries ~200 eps relative error on both sides.
        assert np.all(np.abs(F - expected)[mask] <= 1e-12 * np.abs(expected)[mask]), estimator
    assert np.abs(reference).max() < 1e-15  # the whole matrix is below 1 - fl(1 - eps)


def test_enumerated_bernoulli_fisher_keeps_a_saturated_output():
    """Contract: label enumeration weighs label 0 by sigmoid(-f), not 1 - sigmoid(f): at f = 584.8
    (found by Hypothesis 6.100) 1 - p cancels to 0 and the enumerated Fisher was 0 while the exact one
    is p (1 - p) J^T J ~ 1e-254 |J|^2."""
    model = er.MLP([np.array([[1.0]])], [np.array([0.0])], "identity")
    x, y = np.array([[584.77]]), np.array([[1.0]])
    enumerated = expected_outer_product(model, er.Bernoulli(), x)
    exact = er.fisher(model, er.Bernoulli(), x, y, "exact", "full").data
    assert enumerated[0, 0] > 0 and close(exact, enumerated)
