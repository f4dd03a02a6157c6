"""The EWC penalty and its multi-task variants (ewc_ref.continual.penalty).

Tolerances: the penalty is a quadratic, so central differences have no truncation error (the
third derivative is zero) and only round-off ~ eps |Omega| / h remains; with h = 1e-3 and values
O(1..1e3) that is ~1e-10 relative, and we allow 1e-7. Algebraic identities (a sum of quadratics
rewritten as one) hold to round-off: 1e-10 relative.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.continual.penalty import Penalty, merge_quadratics, penalty, penalty_and_grad
from ewc_ref.verify.gradcheck import numerical_jacobian, relative_error


@st.composite
def quadratic_problems(draw, n_tasks=1):
    p = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=p)
    anchors = [rng.normal(size=p) for _ in range(n_tasks)]
    # Fisher diagonals: non-negative, some exactly zero (dead units, other heads).
    fishers = [rng.exponential(size=p) * (rng.random(p) < 0.8) for _ in range(n_tasks)]
    lam = draw(st.sampled_from([0.0, 0.5, 3.0, 100.0]))
    return theta, anchors, fishers, lam


def _naive_penalty(theta, anchor, fisher, lam):
    """lambda/2 sum_i F_i (theta_i - theta*_i)^2 as a plain loop: the formula of docs/file-format.md."""
    total = 0.0
    for i in range(theta.size):
        total += fisher[i] * (theta[i] - anchor[i]) ** 2
    return 0.5 * lam * total


@given(quadratic_problems())
def test_penalty_value_is_the_formula_and_gradient_matches_finite_differences(problem):
    theta, (anchor,), (fisher,), lam = problem
    value, grad = penalty_and_grad(theta, anchor, fisher, lam)
    assert value == pytest.approx(_naive_penalty(theta, anchor, fisher, lam), rel=1e-12, abs=1e-300)
    assert value >= 0.0  # we minimise: the penalty is added with a plus sign and is >= 0
    numeric = numerical_jacobian(lambda t: np.array(penalty(t, anchor, fisher, lam)), theta, h=1e-3)
    assert relative_error(grad, numeric) < 1e-7
    np.testing.assert_allclose(grad, lam * fisher * (theta - anchor), rtol=1e-14, atol=0)


def test_gradient_step_reduces_the_penalty_towards_the_anchor():
    # The sign: a step against the gradient moves theta towards theta* (minimisation).
    theta, anchor, fisher = np.array([1.0, -2.0]), np.zeros(2), np.array([1.0, 0.5])
    _, grad = penalty_and_grad(theta, anchor, fisher, 1.0)
    assert np.all(np.abs(theta - 0.1 * grad) < np.abs(theta))


@given(quadratic_problems())
def test_dense_and_matvec_curvatures_equal_the_diagonal_one(problem):
    theta, (anchor,), (fisher,), lam = problem

    class Operator:
        def matvec(self, v):
            return fisher * v

    reference = penalty_and_grad(theta, anchor, fisher, lam)
    for curvature in (np.diag(fisher), Operator()):
        value, grad = penalty_and_grad(theta, anchor, curvature, lam)
        assert value == pytest.approx(reference[0], rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(grad, reference[1], rtol=1e-12, atol=1e-300)


def test_full_fisher_penalty_gradient_by_finite_differences():
    # A non-diagonal curvature from ewc_ref.fisher: d^T F d with F full and K-FAC.
    rng = np.random.default_rng(0)
    model = er.MLP.random([3, 4, 3], "tanh", rng=rng)
    x, y = rng.normal(size=(7, 3)), rng.integers(0, 3, size=7)
    theta, anchor = rng.normal(size=model.n_params), rng.normal(size=model.n_params)
    for structure in ("full", "kfac"):
        F = er.fisher(model, er.Categorical(), x, y, estimator="exact", structure=structure)
        value, grad = penalty_and_grad(theta, anchor, F, 2.5)
        dense = F.to_dense()
        d = theta - anchor
        assert value == pytest.approx(0.5 * 2.5 * d @ dense @ d, rel=1e-10)
        numeric = numerical_jacobian(lambda t: np.array(penalty(t, anchor, F, 2.5)), theta, h=1e-3)
        assert relative_error(grad, numeric) < 1e-7


@given(quadratic_problems(n_tasks=3))
def test_sum_of_separate_penalties_is_one_quadratic_up_to_a_constant(problem):
    """Exactly what is equal: for every theta,
    sum_t lambda/2 (theta - theta*_t)^T F_t (theta - theta*_t)
      = lambda/2 (theta - m)^T Fsum (theta - m) + lambda c,
    with Fsum = sum_t F_t, m the F-weighted mean of the anchors and c from merge_quadratics;
    the gradients are equal and the values differ by the theta-independent lambda c."""
    theta, anchors, fishers, lam = problem
    separate = Penalty(lam, "separate")
    for anchor, fisher in zip(anchors, fishers, strict=True):
        separate.consolidate(anchor, fisher)
    fisher_sum, mean, constant = merge_quadratics(anchors, fishers)
    merged = Penalty(lam, "accumulated")
    merged.consolidate(mean, fisher_sum)
    for point in (theta, -2 * theta, np.zeros_like(theta)):
        v_sep, g_sep = separate.value_and_grad(point)
        v_acc, g_acc = merged.value_and_grad(point)
        np.testing.assert_allclose(g_sep, g_acc, rtol=1e-10, atol=1e-10 * (1 + np.abs(g_sep).max()))
        assert v_sep == pytest.approx(v_acc + lam * constant, rel=1e-10, abs=1e-10 * (1 + abs(v_sep)))


@given(quadratic_problems(n_tasks=3))
def test_accumulated_equals_separate_when_the_anchors_coincide(problem):
    theta, anchors, fishers, lam = problem
    separate, accumulated = Penalty(lam, "separate"), Penalty(lam, "accumulated")
    for fisher in fishers:
        separate.consolidate(anchors[0], fisher)
        accumulated.consolidate(anchors[0], fisher)
    v_sep, g_sep = separate.value_and_grad(theta)
    v_acc, g_acc = accumulated.value_and_grad(theta)
    assert v_sep == pytest.approx(v_acc, rel=1e-10, abs=1e-300)
    np.testing.assert_allclose(g_sep, g_acc, rtol=1e-10, atol=1e-12)


@given(quadratic_problems(n_tasks=3))
def test_accumulated_is_summed_fisher_with_the_latest_anchor(problem):
    theta, anchors, fishers, lam = problem
    accumulated = Penalty(lam, "accumulated")
    for anchor, fisher in zip(anchors, fishers, strict=True):
        accumulated.consolidate(anchor, fisher)
    expected = penalty_and_grad(theta, anchors[-1], fishers[0] + fishers[1] + fishers[2], lam)
    value, grad = accumulated.value_and_grad(theta)
    assert value == pytest.approx(expected[0], rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-300)


@given(quadratic_problems(n_tasks=3))
def test_online_with_gamma_one_is_accumulated_bit_for_bit(problem):
    theta, anchors, fishers, lam = problem
    online, accumulated = Penalty(lam, "online", gamma=1.0), Penalty(lam, "accumulated")
    for anchor, fisher in zip(anchors, fishers, strict=True):
        online.consolidate(anchor, fisher)
        accumulated.consolidate(anchor, fisher)
    v_on, g_on = online.value_and_grad(theta)
    v_acc, g_acc = accumulated.value_and_grad(theta)
    assert v_on == v_acc
    assert np.array_equal(g_on, g_acc)


@given(quadratic_problems(n_tasks=3), st.sampled_from([0.3, 0.9]))
@example((np.array([1.0, -2.0]), [np.zeros(2), np.ones(2), np.full(2, 0.5)],
          [np.array([1.0, 2.0]), np.array([3.0, 0.0]), np.array([0.5, 4.0])], 3.0), 0.3)
@pytest.mark.parametrize("kind", ["separate", "accumulated", "l2"])
def test_gamma_is_ignored_unless_online(kind, problem, gamma):
    """Contract (Penalty docstring): gamma is the decay of 'online' and ignored by every other
    kind, so 'accumulated' stays the plain sum of the Fishers (Huszar) whatever gamma is given.
    Bit-for-bit: the same operations must run. Fails if 'accumulated' decays old Fishers."""
    theta, anchors, fishers, lam = problem
    decayed, plain = Penalty(lam, kind, gamma=gamma), Penalty(lam, kind, gamma=1.0)
    for anchor, fisher in zip(anchors, fishers, strict=True):
        decayed.consolidate(anchor, fisher)
        plain.consolidate(anchor, fisher)
    v_dec, g_dec = decayed.value_and_grad(theta)
    v_plain, g_plain = plain.value_and_grad(theta)
    assert v_dec == v_plain
    assert np.array_equal(g_dec, g_plain)
    assert np.array_equal(decayed.curvature_diagonal(), plain.curvature_diagonal())


@given(quadratic_problems(n_tasks=3), st.sampled_from([0.3, 0.9]))
def test_online_decays_old_fishers_geometrically(problem, gamma):
    # F_online = gamma^2 F_0 + gamma F_1 + F_2, anchor = theta*_2 (Schwarz et al.)
    theta, anchors, fishers, lam = problem
    online = Penalty(lam, "online", gamma=gamma)
    for anchor, fisher in zip(anchors, fishers, strict=True):
        online.consolidate(anchor, fisher)
    expected = penalty_and_grad(theta, anchors[-1], gamma**2 * fishers[0] + gamma * fishers[1] + fishers[2], lam)
    value, grad = online.value_and_grad(theta)
    assert value == pytest.approx(expected[0], rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-300)


def test_online_with_matvec_curvatures_matches_dense_sum():
    rng = np.random.default_rng(1)
    matrices = [(lambda a: a @ a.T)(rng.normal(size=(5, 5))) for _ in range(3)]

    class Operator:
        def __init__(self, matrix):
            self.matrix = matrix

        def matvec(self, v):
            return self.matrix @ v

    online = Penalty(2.0, "online", gamma=0.5)
    anchors = [rng.normal(size=5) for _ in range(3)]
    for anchor, matrix in zip(anchors, matrices, strict=True):
        online.consolidate(anchor, Operator(matrix))
    theta = rng.normal(size=5)
    dense = 0.25 * matrices[0] + 0.5 * matrices[1] + matrices[2]
    d = theta - anchors[-1]
    value, grad = online.value_and_grad(theta)
    assert value == pytest.approx(d @ dense @ d, rel=1e-12)  # lambda/2 = 1
    np.testing.assert_allclose(grad, 2.0 * dense @ d, rtol=1e-12)


@given(quadratic_problems(n_tasks=2))
def test_l2_is_separate_with_unit_fisher(problem):
    theta, anchors, _, lam = problem
    l2, separate = Penalty(lam, "l2"), Penalty(lam, "separate")
    for anchor in anchors:
        l2.consolidate(anchor)  # the curvature is ignored: F = 1
        separate.consolidate(anchor, np.ones_like(anchor))
    assert l2.value_and_grad(theta)[0] == separate.value_and_grad(theta)[0]
    assert np.array_equal(l2.value_and_grad(theta)[1], separate.value_and_grad(theta)[1])


def test_no_penalty_before_the_first_task():
    value, grad = Penalty(5.0).value_and_grad(np.ones(3))
    assert value == 0.0 and np.array_equal(grad, np.zeros(3))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: Penalty(-1.0), "lam"),
        (lambda: Penalty(float("nan")), "lam"),
        (lambda: penalty_and_grad(np.ones(2), np.ones(2), np.ones(2), -0.1), "lam"),
        (lambda: Penalty(1.0, "online", gamma=0.0), "gamma"),
        (lambda: Penalty(1.0, "online", gamma=1.5), "gamma"),
        (lambda: Penalty(1.0, "online", gamma=-0.2), "gamma"),
        (lambda: Penalty(1.0, "kirkpatrick"), "kind"),
        (lambda: penalty_and_grad(np.ones(3), np.ones(2), np.ones(3), 1.0), "anchor"),
        (lambda: penalty_and_grad(np.ones(3), np.ones(3), np.ones(4), 1.0), "curvature"),
        (lambda: penalty_and_grad(np.ones(3), np.ones(3), np.ones((3, 2)), 1.0), "curvature"),
        (lambda: penalty_and_grad(np.ones(3), np.ones(3), [1.0, np.inf, 1.0], 1.0), "curvature"),
        (lambda: _consolidated(3).consolidate(np.ones(4), np.ones(4)), "theta_star"),
        (lambda: _consolidated(3).value_and_grad(np.ones(2)), "theta"),
        (lambda: merge_quadratics([np.ones(2)], [-np.ones(2)]), "curvatures[0]"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_matvec_of_the_wrong_size_is_rejected():
    class Wrong:
        def matvec(self, v):
            return np.ones(v.size + 1)

    with pytest.raises(ValueError, match="curvature"):
        penalty_and_grad(np.ones(3), np.zeros(3), Wrong(), 1.0)


def _consolidated(p):
    omega = Penalty(1.0)
    omega.consolidate(np.zeros(p), np.ones(p))
    return omega
