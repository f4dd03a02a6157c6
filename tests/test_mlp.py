"""The explicit MLP: gradients, per-sample gradients and Jacobians against finite differences.

Tolerances: central differences with h = 1e-5 have truncation error ~h^2 |F'''| ~ 1e-10
and round-off ~1e-16/h ~ 1e-11, so 1e-6 normwise relative leaves four orders of margin
while still catching any wrong factor or transposition. Sums of per-sample gradients and
the batch gradient differ only by summation order: 1e-12 relative.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.strategies import architectures, mlps, models_and_data
from ewc_ref.verify.gradcheck import relu_margin


@given(models_and_data())
def test_gradient_matches_finite_differences(case):
    model, lik, x, y = case
    assume(relu_margin(model, x) > 1e-3)
    assert er.check_gradients(model, lik, x, y) <= 1e-6


@given(models_and_data())
def test_per_sample_gradients_match_finite_differences(case):
    model, lik, x, y = case
    assume(relu_margin(model, x) > 1e-3)
    assert er.check_per_sample_gradients(model, lik, x, y) <= 1e-6


@given(models_and_data())
def test_jacobian_matches_finite_differences(case):
    model, _, x, _ = case
    assume(relu_margin(model, x) > 1e-3)
    assert er.check_jacobian(model, x) <= 1e-6


@given(models_and_data())
def test_mean_of_per_sample_gradients_is_the_batch_gradient(case):
    model, lik, x, y = case
    G = er.per_sample_gradients(model, lik, x, y)
    _, grad = er.loss_and_grad(model, lik, x, y)
    np.testing.assert_allclose(G.mean(axis=0), grad, rtol=1e-12, atol=1e-12 * np.abs(G).max())


@given(models_and_data())
def test_per_sample_gradient_is_jacobian_transpose_times_output_gradient(case):
    model, lik, x, y = case
    J = model.jacobian(x)
    f = model.predict(x)
    expected = np.einsum("ncp,nc->np", J, lik.grad(f, y))
    G = er.per_sample_gradients(model, lik, x, y)
    np.testing.assert_allclose(G, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@given(mlps())
def test_flat_vector_order_and_views(model):
    # parameters_to_vector order: per layer weight row-major, then bias.
    expected = np.concatenate(
        [np.concatenate([w.ravel(), b if b is not None else []]) for w, b in zip(model.weights, model.biases, strict=False)]
    )
    np.testing.assert_array_equal(model.theta, expected)
    model.theta[0] += 1.0  # views: updating theta updates the layer
    assert model.weights[0].flat[0] == expected[0] + 1.0
    assert sum(int(np.prod(s)) for s in model.param_shapes) == model.n_params


@given(mlps())
def test_state_dict_round_trip(model):
    state = model.state_dict()
    rebuilt = er.MLP.from_state_dict(state, model.activation.name)
    np.testing.assert_array_equal(rebuilt.theta, model.theta)
    assert rebuilt.param_names == model.param_names == list(state)


def test_module_indices_are_preserved():
    rng = np.random.default_rng(0)
    state = {"1.weight": rng.standard_normal((4, 3)), "1.bias": rng.standard_normal(4), "4.weight": rng.standard_normal((2, 4))}
    model = er.MLP.from_state_dict(state, "tanh")
    assert model.param_names == ["1.weight", "1.bias", "4.weight"]
    assert model.n_params == 12 + 4 + 8


@given(architectures(), st.sampled_from(sorted(er.ACTIVATIONS)))
def test_float32_is_preserved(sizes, activation):
    model = er.MLP.random(sizes, activation, rng=0, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((5, sizes[0])).astype(np.float32)
    y = np.zeros(5, dtype=int) if sizes[-1] >= 1 else None
    f, cache = model.forward(x)
    assert f.dtype == np.float32
    G = er.per_sample_gradients(model, er.Categorical(), x, y)
    assert G.dtype == np.float32
    G64 = er.per_sample_gradients(model.with_theta(model.theta.astype(np.float64)), er.Categorical(), x.astype(np.float64), y)
    np.testing.assert_allclose(G, G64, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(G64).max()))


def test_forward_cache_exposes_every_layer():
    model = er.MLP.random([3, 5, 4, 2], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((6, 3))
    f, cache = model.forward(x)
    assert [z.shape for z in cache.pre_activations] == [(6, 5), (6, 4), (6, 2)]
    assert [a.shape for a in cache.inputs] == [(6, 3), (6, 5), (6, 4)]
    np.testing.assert_array_equal(cache.inputs[1], np.tanh(cache.pre_activations[0]))
    np.testing.assert_array_equal(cache.output, f)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: er.MLP([np.ones((3, 2)), np.ones((2, 4))]), "chain"),
        (lambda: er.MLP([np.ones((3, 2))], [np.ones(2)]), "biases\\[0\\]"),
        (lambda: er.MLP([np.ones((3, 2))], activation="gelu"), "activation"),
        (lambda: er.MLP([np.array([[np.nan, 1.0]])]), "non-finite"),
        (lambda: er.MLP([np.ones((3, 2), dtype=complex)]), "float32 or float64"),
        (lambda: er.MLP.random([3, 2]).predict(np.ones((4, 5))), "expected 3 features"),
        (lambda: er.MLP.random([3, 2]).with_theta(np.ones(3)), "theta"),
    ],
)
def test_bad_model_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@given(mlps())
def test_models_pickle_for_worker_processes(model):
    import pickle

    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.theta, model.theta)
    assert (clone.param_names, clone.activation.name, clone.dtype) == (model.param_names, model.activation.name, model.dtype)
