"""The exact Hessian of the mean loss (ewc_ref/curvature/second_order.py, dense_hessian.py), checked five independent ways.

1. Central finite differences of the analytic gradient (loss.py's backward pass).
2. The committed PyTorch fixtures (torch.autograd Hessian, double-backward HVP, curvlinops GGN).
3. The decomposition H = GGN + residual with both terms computed without the R-backward
   pass: GGN = 1/N sum_n J_n^T Lambda_n J_n from model.jacobian (C backward passes of unit
   vectors) and the residual by a second-order *forward* pass of the network output alone
   (no loss, no backward pass). This is the naive twin of `hessian`.
4. Closed forms: a linear model has H == GGN for any labels; a two-layer ReLU network has the
   hand-derived residual 1/N sum_n r_nc 1[z_nj > 0] x_nk in its W_2/W_1 block.
5. The Bartlett identity: E_{y ~ p}[H(y)] == GGN, with the expectation enumerated exactly.

Tolerances. Identities between exact float64 computations that sum the same terms in a
different order: 1e-10 normwise relative (observed ~1e-14). Symmetry of the HVP-built Hessian
(rows H e_i never symmetrised): 1e-12. Finite differences with h = 1e-5: truncation error
h^2 / 6 |g'''| ~ 2e-11 |g'''| and round-off ~ eps |g| / h ~ 1e-11 |g|, so 1e-6 of the scale
max(|H v|, |g|) leaves five orders of margin and still catches any wrong factor; ReLU kinks
are avoided with relu_margin > 1e-3 (a step of 1e-5 along a unit vector moves no
pre-activation across 0).
"""

import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from support.memory import traced_peak

import ewc_ref as er
from ewc_ref.curvature import budget
from ewc_ref.curvature import dense_hessian as hs
from ewc_ref.model.likelihoods import Bernoulli, Categorical, Gaussian
from ewc_ref.strategies import mlps, models_and_data
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error, relu_margin

SMALL = {"max_layers": 3, "max_width": 6}  # P <= ~100: P HVPs and the P^2 residual stay fast
IDENTITY_RTOL = 1e-10
FD_RTOL = 1e-6


def ggn_naive(model, lik, x):
    """1/N sum_n J_n^T Lambda_n J_n from the materialised Jacobian J : (N, C, P)."""
    J = model.jacobian(x)
    return np.einsum("ncp,ncd,ndq->pq", J, lik.hessian(model.predict(x)), J) / x.shape[0]


def gradient(model, lik, x, y, theta):
    return er.loss_and_grad(model.with_theta(theta), lik, x, y)[1]


def unit_directions(model, k, seed):
    V = np.random.default_rng(seed).standard_normal((k, model.n_params))
    return V / np.linalg.norm(V, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- finite differences
@given(models_and_data(**SMALL), st.integers(0, 2**32 - 1))
def test_hvp_matches_finite_differences_of_the_gradient(case, seed):
    model, lik, x, y = case
    assume(relu_margin(model, x) > 1e-3)
    V = unit_directions(model, 3, seed)
    HV = er.hessian_vector_product(model, lik, x, y, V)                     # (K, P) batch
    g = gradient(model, lik, x, y, model.theta)
    scale = max(np.abs(HV).max(), np.abs(g).max())
    for v, hv in zip(V, HV, strict=True):
        # d/dt grad(theta + t v) at t = 0 by central differences, through the package's checker.
        numeric = numerical_jacobian(lambda t: gradient(model, lik, x, y, model.theta + t[0] * v), np.zeros(1))[:, 0]
        assert np.abs(hv - numeric).max() <= FD_RTOL * scale


@given(models_and_data(max_layers=3, max_width=4))
def test_full_hessian_matches_finite_differences_of_the_gradient(case):
    model, lik, x, y = case
    assume(relu_margin(model, x) > 1e-3)
    H = hs.hessian(model, lik, x, y)
    numeric = numerical_jacobian(lambda t: gradient(model, lik, x, y, t), model.theta)   # (P, P)
    scale = max(np.abs(H).max(), np.abs(gradient(model, lik, x, y, model.theta)).max())
    assert np.abs(H - numeric).max() <= FD_RTOL * scale


# ----------------------------------------------------------------------------- structure
@given(models_and_data(**SMALL))
def test_hessian_is_symmetric(case):
    model, lik, x, y = case
    H = hs.hessian(model, lik, x, y)
    assert relative_error(H, H.T) <= 1e-12


@given(models_and_data(**SMALL), st.integers(1, 7))
def test_diag_blocks_batches_and_chunks_are_views_of_one_hessian(case, chunk_size):
    model, lik, x, y = case
    H = hs.hessian(model, lik, x, y)
    # Different chunkings only change the BLAS batch shape: round-off, 1e-12.
    assert relative_error(hs.hessian(model, lik, x, y, chunk_size=chunk_size), H) <= 1e-12
    assert relative_error(er.hessian_diag(model, lik, x, y, chunk_size=chunk_size), np.diag(H)) <= 1e-12
    blocks = er.hessian_blocks(model, lik, x, y, chunk_size=chunk_size)
    assert len(blocks) == model.n_layers
    for block, s in zip(blocks, model.layer_slices, strict=True):
        assert relative_error(block, H[s, s]) <= 1e-12
    V = unit_directions(model, 4, 0)
    HV = er.hessian_vector_product(model, lik, x, y, V)
    assert relative_error(HV, V @ H.T) <= IDENTITY_RTOL
    assert relative_error(er.hessian_vector_product(model, lik, x, y, V[1]), HV[1]) <= 1e-12


# ----------------------------------------------------------------------------- GGN and residual
@given(models_and_data(**SMALL), st.integers(0, 2**32 - 1))
def test_ggn_vector_product_matches_materialised_jacobian(case, seed):
    model, lik, x, y = case
    V = unit_directions(model, 3, seed)
    G = ggn_naive(model, lik, x)
    assert relative_error(er.ggn_vector_product(model, lik, x, y, V), V @ G) <= IDENTITY_RTOL
    assert relative_error(er.ggn_vector_product(model, lik, x, y, V[0]), G @ V[0]) <= IDENTITY_RTOL


@given(models_and_data(**SMALL))
def test_hessian_is_ggn_plus_independently_computed_residual(case):
    # The naive twin of `hessian`: neither term uses the R-backward pass (module docstring).
    model, lik, x, y = case
    H = hs.hessian(model, lik, x, y)
    residual = er.hessian_residual(model, lik, x, y)
    assert relative_error(ggn_naive(model, lik, x) + residual, H) <= IDENTITY_RTOL
    assert relative_error(residual, residual.T) <= 1e-12


@given(st.sampled_from(["random", "model"]).flatmap(
    lambda labels: models_and_data(max_layers=1, max_width=8, labels=labels)))
def test_linear_model_hessian_equals_ggn_for_any_labels(case):
    # f = W x + b is linear in theta, and all three likelihoods use their canonical link, so
    # d^2 f / d theta^2 = 0 and H = J^T Lambda J whatever the labels (issue 4d).
    model, lik, x, y = case
    residual = er.hessian_residual(model, lik, x, y)
    assert np.all(residual == 0)                    # every second-order tangent is exactly 0
    assert relative_error(hs.hessian(model, lik, x, y), ggn_naive(model, lik, x)) <= IDENTITY_RTOL


def test_relu_network_residual_is_the_hand_derived_cross_term():
    # f = W_2 relu(W_1 x + b_1) + b_2: relu'' = 0, yet d f_c / d W_2[c, j] = a_j depends on
    # W_1 and b_1, so d^2 f_c / d W_2[c, j] d W_1[j, k] = 1[z_j > 0] x_k and
    # d^2 f_c / d W_2[c, j] d b_1[j] = 1[z_j > 0]. Every other second derivative is 0.
    rng = np.random.default_rng(7)
    d_in, hidden, c, n = 3, 4, 2, 5
    model = er.MLP([rng.standard_normal((hidden, d_in)), rng.standard_normal((c, hidden))],
                   [rng.standard_normal(hidden), rng.standard_normal(c)], "relu")
    x = rng.standard_normal((n, d_in))
    y = rng.standard_normal((n, c))
    lik = Gaussian(0.8)
    f, cache = model.forward(x)
    r = lik.grad(f, y) / n                                        # (N, C), nonzero: y != f
    active = cache.pre_activations[0] > 0                         # (N, hidden)
    assert 0 < active.sum() < active.size and relu_margin(model, x) > 1e-2
    index = model.unflatten(np.arange(model.n_params))            # flat position of each entry
    W1, b1, W2 = index["0.weight"], index["0.bias"], index["2.weight"]
    expected = np.zeros((model.n_params, model.n_params))
    for i in range(n):
        for cc, j in itertools.product(range(c), range(hidden)):
            if active[i, j]:
                for k in range(d_in):
                    expected[W2[cc, j], W1[j, k]] += r[i, cc] * x[i, k]
                expected[W2[cc, j], b1[j]] += r[i, cc]
    expected = expected + expected.T                              # the mixed partials, both orders
    residual = er.hessian_residual(model, lik, x, y)
    assert np.abs(residual).max() > 0.1                           # not zero: no over-generalising
    assert relative_error(residual, expected) <= 1e-12
    H = hs.hessian(model, lik, x, y)
    assert relative_error(H - ggn_naive(model, lik, x), expected) <= IDENTITY_RTOL
    assert relative_error(H, ggn_naive(model, lik, x)) > 1e-2     # so H != GGN here


# ----------------------------------------------------------------------------- Bartlett identity
def label_distribution(lik, f_n):
    """[(weight, label)] with sum_k weight_k h(label_k) == E_{y ~ p(y | f_n)}[h(y)] exactly for
    every h affine in y (the Hessian is: it depends on y only through r = d l / d f)."""
    c = f_n.shape[0]
    if isinstance(lik, Categorical):                              # all C labels
        return [(p, np.array([k])) for k, p in enumerate(lik.mean(f_n[None])[0])]
    if isinstance(lik, Bernoulli):                                # all 2^C bit vectors
        p = lik.mean(f_n[None])[0]
        bits = itertools.product([0.0, 1.0], repeat=c)
        return [(np.prod(np.where(b, p, 1 - p)), np.array([b])) for b in map(np.array, bits)]
    # Gaussian: 2-point Gauss-Hermite per output, nodes f +- sigma, exact up to cubics.
    nodes = itertools.product([-1.0, 1.0], repeat=c)
    return [(0.5**c, (f_n + lik.sigma * np.array(s))[None]) for s in nodes]


@given(models_and_data(n=st.integers(1, 3), max_layers=3, max_width=4))
def test_expected_hessian_over_model_labels_is_the_ggn(case):
    # E_{y ~ p}[d^2 l_n / d theta^2] = J^T Lambda J + sum_c E[r_nc] d^2 f_c / d theta^2 and
    # E[r_n] = E[p - onehot(y)] = 0 (likewise for bernoulli and gaussian): Bartlett (issue 4a).
    model, lik, x, _ = case
    assume(model.n_outputs <= 4)                                  # 2^C bernoulli labels
    f = model.predict(x)
    expected_H = np.zeros((model.n_params, model.n_params))
    for i in range(x.shape[0]):
        for weight, label in label_distribution(lik, f[i]):
            expected_H += weight * hs.hessian(model, lik, x[i:i + 1], label)
    expected_H /= x.shape[0]
    assert relative_error(expected_H, ggn_naive(model, lik, x)) <= IDENTITY_RTOL


# ----------------------------------------------------------------------------- PyTorch fixtures
def test_hessian_hvp_and_ggnvp_match_torch(torch_problem):  # the case table of tests/conftest.py
    p = torch_problem
    model, lik, x, y, ref = p.model, p.lik, p.x, p.y, p.reference
    H = er.hessian_full(model, lik, x, y)
    assert relative_error(H, ref["hessian_full"]) <= IDENTITY_RTOL
    assert relative_error(H, H.T) <= 1e-12
    assert relative_error(er.hessian_diag(model, lik, x, y), np.diag(ref["hessian_full"])) <= IDENTITY_RTOL
    v = ref["hvp_vector"]
    assert relative_error(er.hessian_vector_product(model, lik, x, y, v), ref["hvp"]) <= IDENTITY_RTOL
    assert relative_error(er.ggn_vector_product(model, lik, x, y, v), ref["ggnvp"]) <= IDENTITY_RTOL
    # torch's Hessian minus curvlinops' GGN is our independently computed residual.
    residual = er.hessian_residual(model, lik, x, y)
    # The difference of two fixtures carries round-off relative to |H|, not to |H - GGN|.
    difference = ref["hessian_full"] - ref["exact_full"]
    assert np.abs(residual - difference).max() <= IDENTITY_RTOL * np.abs(ref["hessian_full"]).max()
    assert np.abs(residual).max() > 1e-2 * np.abs(ref["hessian_full"]).max()   # trained nets: H != GGN


# ----------------------------------------------------------------------------- dtype and input
@given(mlps(sizes=[3, 4, 2], dtype=np.float32))
def test_float32_is_preserved(model):
    x = np.ones((2, 3), np.float32)
    y = np.array([0, 1])
    v = np.ones(model.n_params, np.float32)
    for result in (er.hessian_vector_product(model, Categorical(), x, y, v),
                   er.ggn_vector_product(model, Categorical(), x, y, v),
                   er.hessian_full(model, Categorical(), x, y),
                   er.hessian_residual(model, Categorical(), x, y)):
        assert result.dtype == np.float32


def small_case():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((5, 3))
    return model, Categorical(), x, np.array([0, 1, 1, 0, 1])


@pytest.mark.parametrize("function", [er.hessian_vector_product, er.ggn_vector_product])
@pytest.mark.parametrize(("v", "error", "match"), [
    (np.ones(25), ValueError, r"v: expected shape \(26,\) or \(K, 26\)"),
    (np.ones((2, 3, 26)), ValueError, r"v: expected shape"),
    (np.ones((2, 25)), ValueError, r"v: expected shape"),
    (np.full(26, np.nan), ValueError, r"v: contains 26 non-finite"),
    (np.array(["a"] * 26), TypeError, r"v: expected a float32 or float64 array"),
])
def test_bad_vectors_are_rejected_by_name(function, v, error, match):
    model, lik, x, y = small_case()
    assert model.n_params == 26
    with pytest.raises(error, match=match):
        function(model, lik, x, y, v)


def test_bad_data_and_chunk_size_are_rejected_by_name():
    model, lik, x, y = small_case()
    with pytest.raises(ValueError, match=r"^y: categorical labels must lie in 0..1"):
        er.hessian_diag(model, lik, x, np.array([0, 1, 2, 0, 1]))
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^x: contains 1 non-finite"):
        er.hessian_full(model, lik, bad_x, y)
    for function in (er.hessian_full, er.hessian_diag, er.hessian_blocks, er.hessian_residual):
        with pytest.raises(ValueError, match=r"^chunk_size: expected an integer >= 1"):
            function(model, lik, x, y, chunk_size=0)


def test_dense_results_refuse_beyond_the_memory_limit(monkeypatch):
    model, lik, x, y = small_case()
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 8 * 26 * 26 - 1)   # one byte short of P x P
    for function in (er.hessian_full, er.hessian_residual):
        with pytest.raises(ValueError, match=r"^model: the dense P x P .*P = 26 .*MAX_DENSE_BYTES = .*hessian_diag"):
            function(model, lik, x, y)
    er.hessian_blocks(model, lik, x, y)                            # 16^2 + 10^2 numbers still fit
    er.hessian_diag(model, lik, x, y)                              # O(P) memory: never refused
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 8 * (16 * 16 + 10 * 10) - 1)
    with pytest.raises(ValueError, match=r"^model: the per-layer Hessian blocks of sizes \[16, 10\]"):
        er.hessian_blocks(model, lik, x, y)
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 8 * 26 * 26)        # exactly P x P is allowed
    assert er.hessian_full(model, lik, x, y).shape == (26, 26)


def test_package_exports():
    from ewc_ref.curvature import diag_hessian, second_order

    assert er.hessian is er.hessian_full is hs.hessian
    assert er.hessian_diag is diag_hessian.hessian_diag  # the recursion; hs.hessian_diag_by_hvp is its twin
    for name in ("hessian_blocks", "hessian_residual"):
        assert getattr(er, name) is getattr(hs, name)
    for name in ("hessian_vector_product", "ggn_vector_product"):
        assert getattr(er, name) is getattr(second_order, name)


@pytest.mark.parametrize("how", ["hessian", "fisher", "fisher in 3 row chunks"])
def test_dense_hessian_needs_one_p_by_p_array_plus_bounded_chunks(monkeypatch, how):
    """tracemalloc peak of a dense Hessian: P^2 float64 for the result, plus O(CHUNK_NUMBERS) (issue #26).

    CHUNK_NUMBERS is lowered to 2^14 so that the per-chunk temporaries (~6.4 K P numbers, K P <=
    CHUNK_NUMBERS: about 1 MiB) are small beside P^2 (P = 1870: 27 MiB), and the bound 1.25 P^2 fails if
    any second P x P array is made: the accumulator's `chunk_mean * n` copy (5.4 P^2 before) or unit
    vectors E : (K, P) with K = P when only K N width was bounded (N = 1 makes K = 273 > 2^14 / P = 8).
    The streamed sums are checked against the one-pass Hessian, so the in-place weighting is tested too.
    """

    monkeypatch.setattr(budget, "CHUNK_NUMBERS", 2**14)
    model = er.MLP.random([20, 60, 10], "tanh", rng=0)
    P = model.n_params
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 20)), np.array([1, 7, 4])
    lik = Categorical()
    compute = {
        "hessian": lambda: er.hessian(model, lik, x[:1], y[:1]),
        "fisher": lambda: er.fisher(model, lik, x[:1], y[:1], estimator="hessian", structure="full").data,
        "fisher in 3 row chunks": lambda: er.fisher(model, lik, x, y, estimator="hessian", structure="full",
                                                    chunk_size=1).data,
    }[how]
    compute()  # imports its lazily imported modules (scipy: ~3 MiB of code) outside the trace
    with traced_peak() as traced:
        H = compute()
    peak = traced.peak
    assert peak <= 1.25 * 8 * P * P, f"peak {peak / (8 * P * P):.2f} P^2"
    reference = er.hessian(model, lik, x, y) if how.endswith("chunks") else er.hessian(model, lik, x[:1], y[:1], chunk_size=P)
    assert relative_error(H, reference) <= IDENTITY_RTOL
