"""The diagonal of the Hessian by the backward recursion (ewc_ref/curvature/diag_hessian.py).

The naive twin is P Hessian-vector products (dense_hessian.hessian_diag_by_hvp), which share no
code with the recursion beyond the forward pass and the likelihood's gradient and Hessian factor.
Tolerance: 1e-10 relative (normwise), both exact float64 computations that differ only in
summation order (~1e-16 observed).

The depth is a parameter, not left to Hypothesis, because each depth takes another path of the
recursion: 1 Linear layer (no backward step), 2 (one step, the residual of the first hidden layer
added directly), 3 (the second hidden layer's residual reaches the first layer as the GEMM
diagonal of eq (3)), 4 (a residual materialised as weighted vectors and carried two layers down).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.curvature import diag_hessian
from ewc_ref.curvature.dense_hessian import hessian_diag_by_hvp
from ewc_ref.model.activations import ACTIVATIONS
from ewc_ref.strategies import ACTIVATION_NAMES, LIKELIHOOD_NAMES, datasets, likelihoods, mlps
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-10
FEW = settings(max_examples=max(4, settings.default.max_examples // 8))


@st.composite
def nets_of_depth(draw, depth, activation, likelihood, dtype=np.float64):
    lik = draw(likelihoods((likelihood,)))
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    sizes[-1] = max(sizes[-1], lik.min_outputs)
    model = draw(mlps(sizes=sizes, activations=(activation,), dtype=dtype))
    x, y = draw(datasets(model, lik, n=st.integers(1, 7)))
    return model, lik, x, y


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("likelihood", LIKELIHOOD_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@FEW
@given(data=st.data())
def test_the_recursion_equals_p_hessian_vector_products(activation, likelihood, depth, data):
    model, lik, x, y = data.draw(nets_of_depth(depth, activation, likelihood))
    chunk_size = data.draw(st.integers(1, x.shape[0]), label="chunk_size")
    fast = er.hessian_diag(model, lik, x, y, chunk_size=chunk_size)
    assert relative_error(fast, hessian_diag_by_hvp(model, lik, x, y)) <= RTOL


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@given(data=st.data())
def test_the_streamed_estimator_is_the_recursion(activation, data):
    """fisher(estimator='hessian', structure='diag') streams the recursion over chunks."""
    model, lik, x, y = data.draw(nets_of_depth(4, activation, "gaussian"))
    F = er.fisher(model, lik, x, y, "hessian", "diag", chunk_size=data.draw(st.integers(1, x.shape[0])))
    assert relative_error(F.diagonal, hessian_diag_by_hvp(model, lik, x, y)) <= RTOL


@given(data=st.data())
def test_float32_is_preserved(data):
    """float32 in, float32 out; 1e-3 relative to the float64 twin on the same float32 weights
    (float32 round-off, 6e-8 per operation, through four layers of a few units)."""
    model, lik, x, y = data.draw(nets_of_depth(4, "tanh", "gaussian", dtype=np.float32))
    low = er.hessian_diag(model, lik, x, y)
    assert low.dtype == np.float32
    wide = er.MLP([w.astype(np.float64) for w in model.weights],
                  [None if b is None else b.astype(np.float64) for b in model.biases], "tanh")
    reference = hessian_diag_by_hvp(wide, lik, x.astype(np.float64), y.astype(np.float64))
    assert relative_error(low.astype(np.float64), reference) <= 1e-3


def test_the_curved_flag_is_phi_second_derivative_not_identically_zero():
    z = np.linspace(-3, 3, 61)
    for activation in ACTIVATIONS.values():
        a = activation.value(z)
        assert activation.curved == bool(np.any(activation.second_derivative(z, a))), activation.name


@pytest.mark.parametrize(("sizes", "activation", "expected"), [
    ([784, 256, 256, 10], "tanh", [9, 9]),       # both residuals handled without vectors (eq 3 by a GEMM)
    ([4, 5, 6, 7, 3], "tanh", [2, 2, 9]),        # r at z_2 (7 units) carried below z_1 as 7 vectors
    ([4, 5, 6, 7, 8, 3], "sigmoid", [2, 2, 10, 17]),  # 2 + 8 (r at z_3) + 7 (r at z_2)
    ([4, 5, 6, 7, 3], "relu", [2, 2, 2]),        # phi'' = 0: no residual
    ([4, 3], "tanh", []),
])
def test_backward_vectors_by_hand(sizes, activation, expected):
    """K_l counted by hand from eqs (2)-(3) (categorical: rank C - 1); the cost ratio is 1 exactly
    when no vector and no GEMM is added."""
    model = er.MLP.random(sizes, activation, rng=0)
    assert diag_hessian.backward_vectors(model, er.Categorical()) == expected
    ratio = diag_hessian.cost_ratio(model, er.Categorical())
    assert ratio >= 1
    assert (ratio == 1) == (activation == "relu" or len(sizes) <= 3)


def test_backward_vectors_are_the_vectors_the_recursion_carries(monkeypatch):
    """The count is the recursion's own: record the shape of every vector stack it multiplies by W_l."""
    model = er.MLP.random([3, 4, 5, 6, 2], "tanh", rng=1)
    x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    seen = []
    original = np.ascontiguousarray

    def record(array, *args, **kwargs):
        if array.ndim == 3:
            seen.append(array.shape[0])
        return original(array, *args, **kwargs)

    monkeypatch.setattr(diag_hessian.np, "ascontiguousarray", record)
    diag_hessian.diag_hessian_sums(model, er.Categorical(), x, y)
    assert seen == diag_hessian.backward_vectors(model, er.Categorical())


def test_the_gaussian_tanh_net_of_the_library_fixtures_is_backpacks_diag_hessian():
    """BackPACK 1.7.1 DiagHessian of MSELoss(mean) = 2 s^2 / C x ewc_ref's hessian diag
    (tests/fixtures/libraries/README.md); 1e-10: both float64, different summation order."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "fixtures" / "libraries"
    model, lik = er.load_model(root / "gaussian_model.npz")
    x, y = er.load_data(root / "gaussian_data.npz")
    theirs = er.curvature.result.Curvature.load(root / "gaussian__backpack_diaghessian_mse_mean.npz", model).diagonal
    assert relative_error(theirs, 2 / 3 * er.hessian_diag(model, lik, x, y)) <= RTOL


@pytest.mark.parametrize(("sizes", "tried"), [([3, 6, 5, 2], True), ([3, 8, 8, 8, 8, 2], False)])
def test_diagnose_tries_the_hessian_by_default_where_the_recursion_is_cheap(monkeypatch, sizes, tried):
    """Above HESSIAN_LIMIT (set to 0 here) the Hessian candidate of a diag THEIRS is included
    exactly when diag_hessian.is_cheap: two hidden tanh layers cost 1x, four cost 4.6x (> 2)."""
    from ewc_ref.curvature import budget
    from ewc_ref.verify.diagnosis import diagnose

    monkeypatch.setattr(budget, "HESSIAN_LIMIT", 0)
    model = er.MLP.random(sizes, "tanh", rng=3)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((40, 3)), rng.integers(0, 2, 40)
    theirs = 7.0 * er.hessian_diag(model, er.Categorical(), x, y)
    assert diag_hessian.is_cheap(model, er.Categorical()) == tried
    result = diagnose(model, er.Categorical(), x, y, theirs, batch_sizes=[8])
    assert any(c.estimator == "hessian" for c in result.candidates) == tried
    assert (result.estimator == "hessian") == tried
    if tried:
        assert abs(result.scale - 7.0) <= 1e-10 * 7.0
