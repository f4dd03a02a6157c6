"""Training on a head view (ewc_ref.continual.training) and the continual-learning metrics (ewc_ref.continual.metrics).

Tolerances: the head gradient and its naive twin (an explicit smaller MLP) do the same float64
arithmetic in a different order: 1e-12 relative. Finite differences of the smooth tanh network:
central differences with h = 1e-5 have truncation + round-off ~1e-10 (ewc_ref.verify.gradcheck), we
allow 1e-7. SGD steps computed by hand: same operations, 1e-14.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.continual.datasets import load_digits, make_scenario
from ewc_ref.continual.experiments import run_sequence
from ewc_ref.continual.metrics import (
    average_accuracy,
    backward_transfer,
    fisher_weighted_drift,
    forgetting,
    plasticity,
)
from ewc_ref.continual.penalty import Penalty
from ewc_ref.continual.training import (
    TrainingDiverged,
    embed_curvature,
    head_accuracy,
    head_fisher,
    head_loss_and_grad,
    head_view,
    train_task,
)
from ewc_ref.model.loss import loss_and_grad
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error


@st.composite
def heads(draw):
    """A small MLP with C >= 2 outputs, a head of K <= C columns, data labelled within the head."""
    sizes = [draw(st.integers(1, 5))] + [draw(st.integers(1, 6)) for _ in range(draw(st.integers(0, 2)))]
    n_outputs = draw(st.integers(2, 6))
    activation = draw(st.sampled_from(["tanh", "sigmoid", "identity"]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    model = er.MLP.random([*sizes, n_outputs], activation, bias=bias, rng=rng)
    k = draw(st.integers(1, n_outputs))
    columns = rng.permutation(n_outputs)[:k]
    n = draw(st.integers(1, 6))
    x = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, k, size=n)
    return model, x, y, columns


@given(heads())
def test_head_gradient_equals_its_naive_twin_embedded(case):
    model, x, y, columns = case
    loss, grad = head_loss_and_grad(model, x, y, columns)
    head, index = head_view(model, columns)
    assert np.array_equal(head.theta, model.theta[index])
    head_loss, head_grad = loss_and_grad(head, er.Categorical(), x, y)
    assert loss == pytest.approx(head_loss, rel=1e-12, abs=1e-14)
    expected = np.zeros(model.n_params)
    expected[index] = head_grad
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14 * (1 + np.abs(head_grad).max()))
    other = np.setdiff1d(np.arange(model.n_params), index)
    assert np.all(grad[other] == 0.0)  # the other heads' rows get exactly nothing


@given(heads())
def test_head_gradient_matches_finite_differences(case):
    model, x, y, columns = case

    def loss_at(theta):
        return np.array(head_loss_and_grad(model.with_theta(theta), x, y, columns)[0])

    numeric = numerical_jacobian(loss_at, model.theta, h=1e-5)
    assert relative_error(head_loss_and_grad(model, x, y, columns)[1], numeric) < 1e-7


def test_head_fisher_is_the_sub_network_fisher_with_zeros_elsewhere():
    rng = np.random.default_rng(3)
    model = er.MLP.random([4, 5, 6], "tanh", rng=rng)
    x, columns = rng.normal(size=(9, 4)), np.array([4, 1])
    y = rng.integers(0, 2, size=9)
    head, index = head_view(model, columns)
    for estimator in ("exact", "empirical"):
        diag = head_fisher(model, x, y, columns, estimator=estimator)
        expected = np.zeros(model.n_params)
        expected[index] = er.fisher(head, er.Categorical(), x, y, estimator=estimator).flat
        np.testing.assert_array_equal(diag, expected)
        full = head_fisher(model, x, y, columns, estimator=estimator, structure="full")
        dense_head = er.fisher(head, er.Categorical(), x, y, estimator=estimator, structure="full").to_dense()
        v = rng.normal(size=model.n_params)
        expected_mv = np.zeros(model.n_params)
        expected_mv[index] = dense_head @ v[index]
        np.testing.assert_allclose(full.matvec(v), expected_mv, rtol=1e-12, atol=1e-15)
        # the full structure's diagonal is the diag structure's vector
        np.testing.assert_allclose(np.diag(embed_curvature(dense_head, index, model.n_params)), diag, rtol=1e-12, atol=1e-15)


def test_one_full_batch_epoch_is_one_gradient_step_with_the_penalty():
    rng = np.random.default_rng(4)
    model = er.MLP.random([3, 4, 5], "tanh", rng=rng)
    x, y, columns = rng.normal(size=(8, 3)), rng.integers(0, 3, size=8), np.array([0, 2, 4])
    anchor, fisher = rng.normal(size=model.n_params), rng.random(model.n_params)
    omega = Penalty(0.7)
    omega.consolidate(anchor, fisher)
    theta0 = model.theta.copy()
    _, g0 = head_loss_and_grad(model, x, y, columns)
    g0 = g0 + 0.7 * fisher * (theta0 - anchor)
    train_task(model, x, y, columns, epochs=1, batch_size=8, lr=0.05, penalty=omega, rng=0)
    np.testing.assert_allclose(model.theta, theta0 - 0.05 * g0, rtol=1e-14, atol=1e-15)


def test_momentum_is_pytorch_sgd():
    # v1 = g0, theta1 = theta0 - lr v1; v2 = mu v1 + g1, theta2 = theta1 - lr v2
    rng = np.random.default_rng(5)
    model = er.MLP.random([3, 4, 2], "tanh", rng=rng)
    x, y, columns = rng.normal(size=(6, 3)), rng.integers(0, 2, size=6), np.array([0, 1])
    reference = model.copy()
    _, g0 = head_loss_and_grad(reference, x, y, columns)
    reference.theta -= 0.1 * g0
    _, g1 = head_loss_and_grad(reference, x, y, columns)
    reference.theta -= 0.1 * (0.9 * g0 + g1)
    train_task(model, x, y, columns, epochs=2, batch_size=6, lr=0.1, momentum=0.9, rng=0)
    np.testing.assert_allclose(model.theta, reference.theta, rtol=1e-14, atol=1e-15)


def test_training_is_bit_identical_for_the_same_seed_and_differs_for_another():
    data = load_digits()
    scenario = make_scenario("domain", data, 2, rng=np.random.default_rng([7, 2]))
    runs = [run_sequence(scenario, "ewc", lam=5.0, epochs=1, hidden=(16,), seed=seed) for seed in (7, 7, 8)]
    assert np.array_equal(runs[0]["model"].theta, runs[1]["model"].theta)
    assert np.array_equal(runs[0]["R"], runs[1]["R"])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0]["fishers"], runs[1]["fishers"], strict=True))
    assert not np.array_equal(runs[0]["model"].theta, runs[2]["model"].theta)


def test_every_method_shares_the_first_optimum():
    scenario = make_scenario("task", load_digits(), 2)
    thetas = [run_sequence(scenario, m, lam=1.0, epochs=1, hidden=(8,), seed=0)["thetas"][0] for m in ("sgd", "l2", "ewc")]
    assert np.array_equal(thetas[0], thetas[1]) and np.array_equal(thetas[0], thetas[2])


def test_ewc_beats_sgd_on_permuted_digits():
    """Fixed-seed regression: 3 permuted-digit tasks, MLP 64-50-10, 5 epochs, seed 0.

    Measured (2025, this code): average accuracy SGD 0.611, L2 (lambda 0.001) 0.609,
    EWC (lambda 20, exact diagonal Fisher) 0.794; seeds 1 and 2 gave SGD/L2/EWC 0.574/0.576/0.708
    and 0.655/0.659/0.769, so the smallest EWC gain seen was +0.114. Margin 0.08.
    L2 is NOT between SGD and EWC here: at lambda 0.001 it equals SGD within 0.01, and any lambda
    large enough to stop forgetting also stops learning (docs/continual-learning.md, sweep), so we
    assert only that EWC beats it by the same margin.
    """
    scenario = make_scenario("domain", load_digits(), 3, rng=np.random.default_rng([0, 2]))
    accuracy = {
        method: average_accuracy(run_sequence(scenario, method, lam=lam, epochs=5, hidden=(50,), seed=0)["R"])
        for method, lam in (("sgd", 0.0), ("l2", 0.001), ("ewc", 20.0))
    }
    assert accuracy["ewc"] > accuracy["sgd"] + 0.08, accuracy
    assert accuracy["ewc"] > accuracy["l2"] + 0.08, accuracy
    assert abs(accuracy["l2"] - accuracy["sgd"]) < 0.03, accuracy


def test_an_unstable_step_size_is_refused_before_training():
    rng = np.random.default_rng(6)
    model = er.MLP.random([2, 3, 2], "tanh", rng=rng)
    omega = Penalty(100.0)
    omega.consolidate(model.theta, np.full(model.n_params, 0.5))  # lr * lambda * F = 0.1 * 100 * 0.5 = 5 > 2
    with pytest.raises(TrainingDiverged, match="lambda"):
        train_task(model, rng.normal(size=(4, 2)), np.zeros(4, int), [0, 1], epochs=1, lr=0.1, penalty=omega)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1, "batch_size": 0}, "batch_size"),
        ({"epochs": 1, "lr": -1.0}, "lr"),
        ({"epochs": 1, "momentum": 1.0}, "momentum"),
        ({"epochs": 1, "columns": [0, 0]}, "columns"),
        ({"epochs": 1, "columns": [0, 5]}, "columns"),
        ({"epochs": 1, "y": np.array([0, 1, 2, 0])}, "y"),
    ],
)
def test_train_task_bad_input_names_the_argument(kwargs, name):
    model = er.MLP.random([2, 3, 2], "tanh", rng=0)
    args = {"x": np.zeros((4, 2)), "y": np.zeros(4, int), "columns": [0, 1]}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=name):
        train_task(model, args["x"], args["y"], args["columns"], **kwargs)


def test_head_accuracy_counts_inactive_classes_as_wrong():
    model = er.MLP([np.eye(3)], [np.zeros(3)], "identity")  # f(x) = x
    x = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    assert head_accuracy(model, x, np.array([0, 1, -1]), [0, 1]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- metrics
R_EXAMPLE = np.array([
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.1],
    [0.7, 0.5, 0.95],
])


def test_metrics_on_a_hand_computed_matrix():
    assert average_accuracy(R_EXAMPLE) == pytest.approx((0.7 + 0.5 + 0.95) / 3, rel=1e-15)
    # task 0: best before the end 0.9, final 0.7 -> 0.2; task 1: best 0.8, final 0.5 -> 0.3
    assert forgetting(R_EXAMPLE) == pytest.approx(0.25, rel=1e-14)
    assert backward_transfer(R_EXAMPLE) == pytest.approx(((0.7 - 0.9) + (0.5 - 0.8)) / 2, rel=1e-14)
    assert plasticity(R_EXAMPLE) == pytest.approx((0.9 + 0.8 + 0.95) / 3, rel=1e-15)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    R = np.array([[0.5, 0.0], [0.9, 0.9]])  # T = 2: max over i in [0, 0]
    assert forgetting(R) == pytest.approx(0.5 - 0.9)
    R3 = np.array([[0.5, 0, 0], [0.9, 0.8, 0], [0.6, 0.8, 0.7]])
    assert forgetting(R3) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)


def test_fisher_weighted_drift():
    theta, anchor = np.array([1.0, 0.0, 3.0, 0.0]), np.zeros(4)
    fisher = np.array([4.0, 1.0, 0.0, 0.0])
    drift = fisher_weighted_drift(theta, anchor, fisher, top_fraction=0.25)
    assert drift["weighted"] == 4.0 and drift["euclidean"] == 10.0
    assert drift["rms_important"] == 1.0 and drift["rms_other"] == pytest.approx(np.sqrt(9 / 3))


@pytest.mark.parametrize("R", [np.ones((2, 3)), np.full((2, 2), 1.5), np.zeros((0, 0))])
def test_bad_accuracy_matrix(R):
    with pytest.raises(ValueError, match="R"):
        average_accuracy(R)
