"""ewc_ref.testing: the assertions pass on the right curvature and fail with a useful diff.

Tolerances: deterministic identities between float64 computations hold to ~1e-15 relative, far
inside the default rtol = 1e-7 of assert_is_estimator; the failing cases are off by >= 1e-3.
"""

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.curvature.naive import naive_fisher
from ewc_ref.testing import assert_curvature_close, assert_is_estimator, check_gradients


def problem(n=60, seed=0, likelihood="categorical"):
    rng = np.random.default_rng(seed)
    model = er.MLP.random([4, 6, 3], "tanh", rng=rng)
    lik = er.get_likelihood(likelihood)
    x = rng.standard_normal((n, 4))
    f = model.predict(x)
    y = rng.integers(0, 3, n) if likelihood == "categorical" else f + rng.standard_normal(f.shape)
    return model, lik, x, y


def test_check_gradients_is_reexported():
    model, lik, x, y = problem(n=5)
    assert check_gradients is er.check_gradients
    assert check_gradients(model, lik, x, y) < 1e-7  # central differences, h = 1e-5: truncation ~1e-10


@pytest.mark.parametrize("form", ["curvature", "dict", "flat"])
def test_assert_curvature_close_passes_on_equal_input(form):
    model, lik, x, y = problem()
    F = er.fisher(model, lik, x, y, estimator="exact")
    other = {"curvature": F, "dict": F.arrays, "flat": F.flat}[form]
    assert_curvature_close(other, F)
    assert_curvature_close(F, other * (1 + 1e-9) if form == "flat" else other)


def test_failure_names_the_parameter_and_worst_entries():
    model, lik, x, y = problem()
    F = er.fisher(model, lik, x, y, estimator="exact")
    broken = {k: v.copy() for k, v in F.arrays.items()}
    broken["2.weight"][1, 4] *= 1.5
    broken["0.bias"][2] += 1e-3
    with pytest.raises(AssertionError) as info:
        assert_curvature_close(broken, F, rtol=1e-6)
    message = str(info.value)
    assert "2 of 51 entries differ" in message
    assert "2.weight[1, 4]" in message and "0.bias[2]" in message
    assert message.index("2.weight[1, 4]") < message.index("0.bias[2]")  # worst first
    assert "mismatches per parameter: 0.bias: 1 of 6; 2.weight: 1 of 18" in message


def test_failure_of_a_scaled_curvature_hints_at_the_scale():
    model, lik, x, y = problem()
    F = er.fisher(model, lik, x, y, estimator="empirical")
    with pytest.raises(AssertionError, match=r"actual = 60 x desired"):
        assert_curvature_close(F.flat * 60, F)


def test_full_matrices_name_a_pair_of_parameters():
    model, lik, x, y = problem()
    F = er.fisher(model, lik, x, y, estimator="exact", structure="full")
    broken = F.to_dense().copy()
    broken[0, 30] += 1.0
    with pytest.raises(AssertionError, match=r"\(0\.weight\[0, 0\], 2\.weight\[0, 0\]\)"):
        assert_curvature_close(broken, F)
    with pytest.raises(AssertionError, match="differ in shape"):
        assert_curvature_close(F.flat, F)


def _independent_reference(estimator, model, lik, x, y, kwargs):
    """THEIRS computed without ewc_ref.fisher: naive per-example loops, or for the Hessian central
    differences of the mean-loss gradient (truncation ~ h^2 |f'''| ~ 1e-9 relative at h = 1e-4)."""
    if estimator != "hessian":
        return naive_fisher(model, lik, x, y, estimator, **kwargs)
    h, theta = 1e-4, model.theta
    columns = []
    for j in range(model.n_params):
        step = np.zeros_like(theta)
        step[j] = h
        plus = er.loss_and_grad(model.with_theta(theta + step), lik, x, y)[1]
        minus = er.loss_and_grad(model.with_theta(theta - step), lik, x, y)[1]
        columns.append((plus - minus) / (2 * h))
    hessian = np.array(columns)
    return (hessian + hessian.T) / 2


@pytest.mark.parametrize("estimator,kwargs", [("empirical", {}), ("exact", {}), ("pred", {}),
                                              ("batched", {"batch_size": 7}), ("hessian", {})])
def test_assert_is_estimator_deterministic(estimator, kwargs):
    """THEIRS from an independent computation passes, at scale 1 and 3 and as a diagonal; the same
    THEIRS is refused as another estimator and at a wrong scale (so the assertion can fail)."""
    model, lik, x, y = problem()
    theirs = _independent_reference(estimator, model, lik, x, y, kwargs)
    # Finite differences: truncation ~1e-9 of max |H| (measured max |diff| 2.2e-9), not round-off.
    tol = {"rtol": 1e-6, "atol": 1e-8 * np.abs(theirs).max()} if estimator == "hessian" else {}
    assert_is_estimator(theirs, model, lik, x, y, estimator=estimator, **tol, **kwargs)
    assert_is_estimator(np.diagonal(theirs) * 3, model, lik, x, y, estimator=estimator, scale=3,
                        **{k: 3 * v if k == "atol" else v for k, v in tol.items()}, **kwargs)
    with pytest.raises(AssertionError, match=r"THEIRS != 2 x F_"):
        assert_is_estimator(theirs, model, lik, x, y, estimator=estimator, scale=2, **tol, **kwargs)
    other = "empirical" if estimator != "empirical" else "exact"
    with pytest.raises(AssertionError, match=rf"THEIRS != 1 x F_{other}"):
        assert_is_estimator(theirs, model, lik, x, y, estimator=other, **tol)
    if estimator == "empirical":
        G = er.per_sample_gradients(model, lik, x, y)
        assert_is_estimator((G**2).sum(0), model, lik, x, y, estimator="empirical", scale=len(x))
        with pytest.raises(AssertionError, match=r"THEIRS != 1 x F_exact"):
            assert_is_estimator((G**2).mean(0), model, lik, x, y, estimator="exact")


def test_assert_is_estimator_mc():
    model, lik, x, y = problem(n=300)
    theirs = er.fisher(model, lik, x, y, estimator="mc", samples=4, rng=1)
    assert_is_estimator(theirs, model, lik, x, y, estimator="mc", samples=4)
    with pytest.raises(AssertionError, match="samples per example, expected S = 40"):
        assert_is_estimator(theirs, model, lik, x, y, estimator="mc", samples=40)
    with pytest.raises(AssertionError, match="scale"):
        assert_is_estimator(theirs.flat * 2, model, lik, x, y, estimator="mc")
    exact = er.fisher(model, lik, x, y, estimator="exact")
    with pytest.raises(AssertionError, match="S -> infinity"):
        assert_is_estimator(exact, model, lik, x, y, estimator="mc")
    wrong = er.fisher(model.with_theta(model.theta * 1.1), lik, x, y, estimator="exact")
    with pytest.raises(AssertionError, match="not an mc estimate"):
        assert_is_estimator(wrong, model, lik, x, y, estimator="mc")


def test_bad_arguments():
    with pytest.raises(ValueError, match="rtol"):
        assert_curvature_close(np.ones(3), np.ones(3), rtol=-1)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_curvature_close(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(AssertionError, match="missing parameters"):
        assert_curvature_close({"0.weight": np.ones(2)}, {"0.weight": np.ones(2), "0.bias": np.ones(1)})
