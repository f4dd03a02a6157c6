"""The explicit MLP: gradients, per-sample gradients and Jacobians against finite differences.

Tolerances: central differences with h = 1e-5 have truncation error h^2 / 6 |F'''| ~ 2e-11 |F'''|
and round-off ~eps |F| / h ~ 2e-11 |F|; the checkers divide by max(derivative scale, |F|)
(ewc_ref/gradcheck.py), so 1e-6 leaves four orders of margin while still catching a wrong
factor, a zeroed entry or a transposition (the negative tests below). Sums of per-sample
gradients and the batch gradient differ only by summation order: 1e-12 relative.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.model.loss import loss_and_grad_unchecked
from ewc_ref.strategies import architectures, mlps, models_and_data
from ewc_ref.verify import gradcheck
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error, relu_margin


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


def test_gradient_check_passes_a_correct_gradient_near_a_minimum():
    """Regression (issue 12, thorough profile): at labels y = f + 1e-7 noise the gaussian loss is
    about log(sigma sqrt(2 pi)) ~ 1 while the gradient is ~1e-7, so the central difference's
    round-off eps |loss| / h ~ 2e-11 is ~1e-4 of the gradient. Relative to the gradient alone
    the correct gradient fails; relative to max(|loss|, |gradient|) it passes."""
    model = er.MLP.random([3, 5, 2], "tanh", rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3))
    y = model.predict(x) + 1e-7 * rng.standard_normal((6, 2))
    lik = er.Gaussian(1.0)
    loss, grad = er.loss_and_grad(model, lik, x, y)
    assert np.abs(grad).max() < 1e-6 < 0.5 < loss
    numeric = numerical_jacobian(lambda t: er.loss_and_grad(model.with_theta(t), lik, x, y)[0], model.theta)
    assert relative_error(grad, numeric) > 1e-6  # the old error model rejects a correct gradient
    assert er.check_gradients(model, lik, x, y) <= 1e-6
    assert er.check_per_sample_gradients(model, lik, x, y) <= 1e-6


def _largest_entry_zeroed(g):
    g = np.array(g, copy=True)
    g.flat[np.argmax(np.abs(g))] = 0.0
    return g


WRONG = {"off_by_1_percent": lambda g: 1.01 * g, "largest_entry_zeroed": _largest_entry_zeroed}


@pytest.mark.parametrize("mistake", sorted(WRONG))
@given(case=models_and_data())
def test_gradient_checks_fail_a_wrong_gradient(mistake, case):
    """The value-relative scale must not hide errors: a gradient (per-sample gradient, Jacobian)
    1% off, or with its largest entry zeroed, is rejected whenever it is not negligible next to
    the loss (outputs): >= 1e-3 of it, so a 1% error is >= 1e-5 of the scale, 10x the tolerance."""
    model, lik, x, y = case
    assume(relu_margin(model, x) > 1e-3)
    wrong = WRONG[mistake]
    losses = er.per_example_losses(model, lik, x, y)
    grad, G, J = er.loss_and_grad(model, lik, x, y)[1], er.per_sample_gradients(model, lik, x, y), model.jacobian(x)
    assume(np.abs(grad).max() >= 1e-3 * np.mean(np.abs(losses)))
    assume(np.abs(G).max() >= 1e-3 * np.abs(losses).max())
    assume(np.abs(J).max() >= 1e-3 * np.abs(model.predict(x)).max())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradcheck, "loss_and_grad_unchecked", lambda *a: (lambda lg: (lg[0], wrong(lg[1])))(loss_and_grad_unchecked(*a)))
        assert er.check_gradients(model, lik, x, y) > 1e-6
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradcheck, "per_sample_gradients_unchecked", lambda *a: wrong(er.per_sample_gradients(*a)))
        assert er.check_per_sample_gradients(model, lik, x, y) > 1e-6
    with pytest.MonkeyPatch.context() as patch:
        jacobian = er.MLP.jacobian
        patch.setattr(er.MLP, "jacobian", lambda self, x: wrong(jacobian(self, x)))
        assert er.check_jacobian(model, x) > 1e-6


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


# --------------------------------------------------------------------------- mutants M1, M2 (issue 12)
def test_with_theta_copies_the_callers_array():
    """Contract (M1): ``MLP.with_theta(theta)`` returns a model that owns a COPY of theta. A
    caller who reuses its array (an optimiser updating theta in place, a finite-difference
    loop writing theta + h e_i into one buffer) must not change models made from it earlier."""
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    original = model.theta.copy()
    theta = model.theta + 1.0
    new = model.with_theta(theta)
    expected_theta, expected_w = theta.copy(), new.weights[0].copy()
    theta[:] = -7.0
    np.testing.assert_array_equal(new.theta, expected_theta)
    np.testing.assert_array_equal(new.weights[0], expected_w)  # the layer views follow the copy
    assert not np.shares_memory(new.theta, theta)
    np.testing.assert_array_equal(model.theta, original)  # the source model is untouched too


@pytest.mark.parametrize("sizes", [[400, 25], [25, 400]], ids=["fan_in>fan_out", "fan_in<fan_out"])
def test_random_init_is_pytorchs_default_uniform_with_fan_in(sizes):
    """Contract (M2): ``MLP.random`` draws every weight AND bias of a Linear(fan_in, fan_out) from
    U(-b, b) with b = 1/sqrt(fan_in), as torch.nn.Linear.reset_parameters does.

    With fan_in != fan_out a bound from fan_out is 4x off either way. The maximum |w| of 10,000
    draws must lie in [0.99 b, b] (P(max < 0.99 b) = 0.99^10000 ~ 2e-44), and the sample mean of
    w^2 must be within 5 CLT standard errors of E w^2 = b^2 / 3, with Var w^2 = b^4 / 5 - b^4 / 9
    = 4 b^4 / 45 (fixed seed; a 5-sigma excursion has probability ~6e-7). Biases: the same on
    their fan_out draws, with the max only bounded above (25 draws do not reach 0.99 b)."""
    fan_in = sizes[0]
    bound = 1.0 / np.sqrt(fan_in)
    model = er.MLP.random(sizes, "relu", rng=0)
    for values in (model.weights[0].ravel(), model.biases[0]):
        n = values.size
        assert np.abs(values).max() <= bound
        if n >= 400:
            assert np.abs(values).max() >= 0.99 * bound
        stderr = bound**2 * np.sqrt(4 / 45 / n)
        assert abs(np.mean(values**2) - bound**2 / 3) <= 5 * stderr
        assert abs(np.mean(values)) <= 5 * bound / np.sqrt(3 * n)  # centred: sd of w is b / sqrt(3)
