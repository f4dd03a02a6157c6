"""Reading a penalty from its values and gradients (ewc_ref/verify/penalty_fit.py, eqs P1-P3).

Each test names the wrong line it catches: a W off by 2 (the 1/2 of the value), an anchor off by the
sign, a quadraticity verdict claimed from two points, a non-quadratic penalty called quadratic.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ewc_ref.verify.penalty_fit import (
    FLOAT32_ROUNDOFF,
    PENALTY_TOL,
    ROUNDED_VALUE_TOL,
    fit_penalty,
    probe_points,
    sample_penalty,
)

P = 17


def _problem(seed, p=P):
    rng = np.random.default_rng(seed)
    return rng.random(p) * 3 + 0.1, rng.standard_normal(p), float(rng.standard_normal())


def _diag_quadratic(weights, anchor, constant):
    return lambda t: (0.5 * float(np.sum(weights * (t - anchor) ** 2)) + constant, weights * (t - anchor))


@pytest.mark.parametrize("m", [3, 4, 9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_diagonal_quadratic_is_recovered_exactly(seed, m):
    weights, anchor, constant = _problem(seed)
    points = anchor + 0.3 * np.random.default_rng(seed + 10).standard_normal((m, P))
    fit = fit_penalty(*sample_penalty(_diag_quadratic(weights, anchor, constant), points))
    # identities in float64: W, a and c to round-off (1e-12 relative)
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-12)
    np.testing.assert_allclose(fit.anchor, anchor, rtol=1e-12, atol=1e-12)
    assert fit.constant == pytest.approx(constant, rel=1e-12, abs=1e-12)
    assert fit.quadratic == "diagonal quadratic", fit.reason
    assert fit.grad_residual < 1e-14 and fit.value_residual < 1e-14
    assert fit.value_scale == pytest.approx(1.0, rel=1e-12)


def test_naive_twin_polyfit_per_coordinate():
    rng = np.random.default_rng(5)
    theta, grad = rng.standard_normal((6, P)), rng.standard_normal((6, P))  # any data: least squares per column
    fit = fit_penalty(theta, rng.standard_normal(6), grad)
    for i in range(P):
        slope, intercept = np.polyfit(theta[:, i], grad[:, i], 1)
        assert fit.weights[i] == pytest.approx(slope, rel=1e-10)
        assert fit.anchor[i] == pytest.approx(-intercept / slope, rel=1e-9)


def test_two_points_cannot_tell_quadraticity():
    weights, anchor, constant = _problem(3)
    points = anchor + 0.3 * np.random.default_rng(0).standard_normal((2, P))
    fit = fit_penalty(*sample_penalty(_diag_quadratic(weights, anchor, constant), points))
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-12)  # determined by two points
    assert fit.quadratic == "cannot tell" and "M >= 3" in fit.reason
    # ...and neither can a non-quadratic one whose value happens to be consistent: an abs penalty
    # at two points on the same side of the anchor in every coordinate is a linear function
    linear = lambda t: (float(np.sum(weights * (t - anchor))), weights.copy())  # noqa: E731
    fit = fit_penalty(*sample_penalty(linear, anchor + 1 + np.abs(points - anchor)))
    assert fit.quadratic == "cannot tell"


def test_two_points_refute_a_value_that_is_not_the_integral():
    weights, anchor, _ = _problem(4)
    points = anchor + 0.3 * np.random.default_rng(1).standard_normal((2, P))
    wrong = lambda t: (float(np.sum(weights * (t - anchor) ** 2)), weights * (t - anchor))  # noqa: E731  no 1/2 in the value
    fit = fit_penalty(*sample_penalty(wrong, points))
    assert fit.quadratic == "not quadratic" and "integral" in fit.reason


def test_value_twice_the_integral_is_named_with_its_factor():
    weights, anchor, _ = _problem(5)
    wrong = lambda t: (float(np.sum(weights * (t - anchor) ** 2)), weights * (t - anchor))  # noqa: E731
    fit = fit_penalty(*sample_penalty(wrong, probe_points(anchor, 0.3)))
    assert fit.quadratic == "value inconsistent"
    assert fit.value_scale == pytest.approx(2.0, rel=1e-12)


def _absolute(w, a):
    return lambda t: (float(np.sum(w * np.abs(t - a))), w * np.sign(t - a))


def _fisher_at_theta(w, a):
    return lambda t: (0.5 * float(np.sum(w * (1 + t**2) * (t - a) ** 2)), w * (1 + t**2) * (t - a))


def _full(w, a):
    matrix = np.outer(w, w) + np.diag(w)
    return lambda t: (0.5 * float((t - a) @ matrix @ (t - a)), matrix @ (t - a))


NON_DIAGONAL = {
    "absolute value": (_absolute, "not quadratic", "absolute value"),
    "Fisher recomputed at theta": (_fisher_at_theta, "not quadratic", "not affine along a line"),
    "full curvature": (_full, "quadratic, not diagonal", "off-diagonal"),
}


@pytest.mark.parametrize("name", sorted(NON_DIAGONAL))
def test_non_diagonal_penalties_are_named(name):
    make, verdict, words = NON_DIAGONAL[name]
    weights, anchor, _ = _problem(6)
    fit = fit_penalty(*sample_penalty(make(weights, anchor), probe_points(anchor + 0.05, 0.3)))
    assert fit.quadratic == verdict, fit.reason
    assert words in fit.reason
    assert fit.grad_residual > 1e-3  # far outside round-off, not at the threshold


def test_without_midpoints_off_diagonal_and_non_quadratic_are_not_told_apart():
    make = NON_DIAGONAL["full curvature"][0]
    weights, anchor, _ = _problem(7)
    points = anchor + 0.3 * np.random.default_rng(2).standard_normal((6, P))
    fit = fit_penalty(*sample_penalty(make(weights, anchor), points))
    assert fit.midpoint_triples == 0
    assert fit.quadratic == "not a diagonal quadratic" and "cannot be told" in fit.reason


def test_float32_gradients_use_the_float32_threshold():
    weights, anchor, constant = _problem(8)
    theta, value, grad = sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor, 0.3))
    fit = fit_penalty(theta.astype(np.float32), value.astype(np.float32), grad.astype(np.float32))
    assert fit.precision == "float32" and fit.tol == PENALTY_TOL["float32"]
    assert fit.quadratic == "diagonal quadratic", fit.reason
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-4)


def _float32_accumulator(weights, anchor, blocks=4, lam=0.4):
    """Avalanche's arithmetic on float64 parameters: lambda sum_i W_i (theta_i - a_i)^2 summed per block in
    float64, accumulated in a float32 scalar and multiplied by lambda there (float32(lambda)); its gradient
    2 float32(lambda) W (theta - a) stays float64 (autograd casts back through the float32 accumulator)."""
    lam32 = np.float32(lam)

    def penalty(theta):
        accumulated = np.float32(0)
        for part in np.array_split(np.arange(theta.size), blocks):
            accumulated += np.float32(np.sum(weights[part] * (theta[part] - anchor[part]) ** 2))
        return float(lam32 * accumulated), 2 * float(lam32) * weights * (theta - anchor)

    return penalty


def _rounded_value_samples(seed, off=0.0):
    """(theta, value, grad, W) of the float32 accumulator at probe points, its largest value multiplied by
    1 + `off` before the float32 rounding (a value of another function when off != 0)."""
    weights, anchor, _ = _problem(seed)
    theta, value, grad = sample_penalty(_float32_accumulator(weights, anchor), probe_points(anchor, 0.3))
    value[np.argmax(np.abs(value))] *= 1 + off
    return theta, value.astype(np.float32).astype(np.float64), grad, 2 * float(np.float32(0.4)) * weights


@pytest.mark.parametrize("seed", [1, 7, 15])
def test_a_value_rounded_to_float32_beside_float64_gradients_is_named_and_said(seed):
    """The value at its own precision. These seeds' rounding errors are above float64's threshold
    (measured 0.58-0.76 u, >= 3.5e-8 > 1e-8), so the float64 threshold alone says 'value inconsistent';
    W is still judged and recovered at float64's 1e-8."""
    theta, value, grad, weights = _rounded_value_samples(seed)
    fit = fit_penalty(theta, value, grad)
    assert (fit.precision, fit.value_precision, fit.tol) == ("float64", "float32", PENALTY_TOL["float64"])
    assert fit.tol < fit.value_residual <= 2 * FLOAT32_ROUNDOFF  # 4 float32 additions and a product
    assert fit.value_rounded and fit.quadratic == "diagonal quadratic", fit.reason
    assert "value rounded to float32" in fit.reason and "gradients float64" in fit.reason
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-12)
    assert fit.to_dict()["value_precision"] == "float32" and fit.to_dict()["value_tol"] == ROUNDED_VALUE_TOL
    assert fit_penalty(theta, value, grad, tol=fit.tol).quadratic == "diagonal quadratic"  # tol given: the same rule


@pytest.mark.parametrize("seed", [8, 29])
def test_a_float32_value_within_float64_round_off_is_not_said_to_be_rounded(seed):
    """These seeds' rounding errors happen to be below 1e-8 (measured 0.04 and 0.12 u): no float32 words."""
    fit = fit_penalty(*_rounded_value_samples(seed)[:3])
    assert fit.value_precision == "float32" and fit.value_residual <= fit.tol
    assert fit.quadratic == "diagonal quadratic" and not fit.value_rounded and "float32" not in fit.reason


def test_a_float32_value_off_by_1e_5_is_still_inconsistent():
    """Not widened to float32's 1e-4: a value 1e-5 relative off at one point, then rounded to float32."""
    theta, value, grad, _ = _rounded_value_samples(0, off=1e-5)
    fit = fit_penalty(theta, value, grad)
    # measured 4.4e-6: above the rounded value's 9.5e-7, below the 1e-4 that a widened threshold would accept
    assert fit.value_precision == "float32" and ROUNDED_VALUE_TOL < fit.value_residual < PENALTY_TOL["float32"]
    assert fit.quadratic == "value inconsistent" and not fit.value_rounded
    assert "every value is a float32 number" in fit.reason and "different functions" in fit.reason


def test_a_float64_value_is_judged_at_float64_round_off():
    """The float32 allowance needs float32 numbers: a float64 value off by 1e-7 (within 9.5e-7) is refuted,
    and a correct float64 value is reported without any float32 words (the float64 path unchanged)."""
    weights, anchor, constant = _problem(4)
    theta, value, grad = sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor, 0.3))
    fit = fit_penalty(theta, value, grad)
    assert (fit.quadratic, fit.value_precision, fit.value_tol) == ("diagonal quadratic", "float64", fit.tol)
    assert "float32" not in fit.reason
    value[np.argmax(np.abs(value))] *= 1 + 1e-7
    fit = fit_penalty(theta, value, grad)
    assert fit.tol < fit.value_residual < ROUNDED_VALUE_TOL
    assert fit.quadratic == "value inconsistent" and "float32" not in fit.reason


def test_a_float32_value_of_float32_gradients_keeps_the_float32_threshold():
    weights, anchor, constant = _problem(8)
    theta, value, grad = sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor, 0.3))
    fit = fit_penalty(theta, value.astype(np.float32), grad.astype(np.float32))
    assert (fit.value_precision, fit.value_tol) == ("float32", PENALTY_TOL["float32"]) and not fit.value_rounded


def test_constant_coordinates_are_undetermined_and_negative_weights_counted():
    weights, anchor, constant = _problem(9)
    weights[:3] *= -1  # a sign error (ERRATA E9): the penalty pushes away from the anchor there
    points = probe_points(anchor, 0.3)
    points[:, 5] = 0.25  # every point has the same theta_5
    fit = fit_penalty(*sample_penalty(_diag_quadratic(weights, anchor, constant), points))
    assert list(fit.undetermined) == [5] and np.isnan(fit.anchor[5])
    assert fit.negative == 3


@pytest.mark.parametrize("args, name", [
    ((np.zeros((1, 3)), np.zeros(1), np.zeros((1, 3))), "theta"),
    ((np.zeros((3, 3)), np.zeros(2), np.zeros((3, 3))), "value"),
    ((np.zeros((3, 3)), np.zeros(3), np.zeros((3, 4))), "grad"),
    ((np.zeros((3, 3)), np.array([0, np.nan, 0]), np.zeros((3, 3))), "value"),
])
def test_bad_input_names_the_argument(args, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        fit_penalty(*args)


@pytest.mark.parametrize("factor", [1e-300, 1e-150, 1e150, 1e300])
def test_extreme_scales_fit_as_well_as_unit_ones(factor):
    weights, anchor, constant = _problem(10)
    theta, value, grad = sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor, 0.3))
    fit = fit_penalty(theta, value * factor, grad * factor)  # squares of 1e300 overflow, of 1e-300 underflow
    assert fit.quadratic == "diagonal quadratic", fit.reason
    np.testing.assert_allclose(fit.weights, weights * factor, rtol=1e-12)
    np.testing.assert_allclose(fit.anchor, anchor, rtol=1e-12, atol=1e-12)


def test_different_gradients_at_the_same_point_are_not_a_function():
    weights, anchor, constant = _problem(11)
    theta, value, grad = sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor, 0.3))
    theta[1] = theta[0]  # the row of theta no longer matches its gradient
    fit = fit_penalty(theta, value, grad)
    assert fit.quadratic == "not quadratic" and "not a function of theta: points 0 and 1" in fit.reason


def test_points_that_never_vary_cannot_tell():
    theta = np.tile(np.arange(4.0), (3, 1))
    fit = fit_penalty(theta, np.zeros(3), np.tile(np.ones(4), (3, 1)))
    assert fit.quadratic == "cannot tell" and "same value at all M points" in fit.reason


@given(p=st.integers(1, 30), directions=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       decades=st.integers(0, 12), zeros=st.booleans())
def test_property_any_diagonal_quadratic_is_recovered(p, directions, seed, decades, zeros):
    """Covers: P from 1, M = 3..9 probe points, W spanning up to 12 decades, some W_i = 0 (no penalty there)."""
    rng = np.random.default_rng(seed)
    weights = 10.0 ** rng.uniform(-decades, 0, p)
    if zeros:
        weights[rng.random(p) < 0.3] = 0.0
    anchor, constant = rng.standard_normal(p), float(rng.standard_normal())
    fit = fit_penalty(*sample_penalty(_diag_quadratic(weights, anchor, constant), probe_points(anchor + 0.1, 0.3, directions, rng)))
    assert fit.quadratic == "diagonal quadratic", fit.reason
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-10, atol=1e-12 * weights.max(initial=1.0))
    penalised = weights > 0
    np.testing.assert_allclose(fit.anchor[penalised], anchor[penalised], rtol=1e-8, atol=1e-8)
    assert np.all(np.isnan(fit.anchor[~penalised]))


@given(p=st.integers(2, 20), seed=st.integers(0, 2**32 - 1), coupling=st.floats(0.05, 1.0))
def test_property_off_diagonal_quadratics_are_never_called_diagonal(p, seed, coupling):
    """Covers: P >= 2, an SPD matrix D + c u u^T with the off-diagonal part c in [0.05, 1]: 'quadratic, not diagonal'."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(p)
    matrix = np.diag(rng.random(p) + 0.1) + coupling * np.outer(u, u)
    anchor = rng.standard_normal(p)
    fn = lambda t: (0.5 * float((t - anchor) @ matrix @ (t - anchor)), matrix @ (t - anchor))  # noqa: E731
    fit = fit_penalty(*sample_penalty(fn, probe_points(anchor, 0.3, 3, rng)))
    assert fit.quadratic == "quadratic, not diagonal", fit.reason
