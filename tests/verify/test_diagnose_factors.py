"""Issue 28 item 3: scale factors by search (ewc_ref/verify/factors.py), each of the issue's factors found.

Every THEIRS is written from per-example gradients (ewc_ref.per_sample_gradients: the gradient of
ewc_ref's per-example NLL; for the unit Gaussian it is r = f - y, for torch's MSELoss it is 2 r) and
the independent NumPy Fishers of tests/support/problems.py, never from ewc_ref.verify.
"""

import pytest
from support.problems import batched_diag, exact_diag, grads, make_problem

from ewc_ref.curvature.dense_hessian import hessian_diag
from ewc_ref.verify.diagnosis import diagnose
from ewc_ref.verify.factors import search_factors
from ewc_ref.verify.scale import match_scale

C = 3


def gaussian():
    return make_problem("gaussian", sizes=(8, 16, C), n=480)


def bernoulli():
    return make_problem("bernoulli", sizes=(8, 16, C), n=480)


CASES = {
    # torch MSELoss(reduction='sum') per example: the gradient 2 r_n J_n, squared and averaged over N: 4 x empirical
    "mse sum per example": (gaussian, lambda m, l, x, y: (2 * grads(m, l, x, y)) ** 2, "mean", "empirical", None, "4",
                            "MSELoss(reduction='sum')"),
    # BackPACK DiagGGNExact of MSELoss(sum): sum_n J^T (2 I) J = 2 N x exact (mean)
    "backpack ggn of mse sum": (gaussian, lambda m, l, x, y: 2 * len(x) * exact_diag(m, l, x), None, "exact", None,
                                "2*N", "BackPACK DiagGGNExact"),
    # BackPACK DiagHessian of a summed Gaussian loss (MSELoss(sum)): 2 N x the Hessian (mean)
    "backpack diaghessian of summed gaussian": (gaussian, lambda m, l, x, y: 2 * len(x) * hessian_diag(m, l, x, y), None,
                                                "hessian", None, "2*N", "DiagHessian"),
    # per-example MSELoss(mean) over the C outputs: (2 r / C)^2 per example, averaged: 4/C^2 x empirical
    "per-example mse mean over C": (gaussian, lambda m, l, x, y: (2 * grads(m, l, x, y) / C) ** 2, "mean", "empirical",
                                    None, "4/C^2", "MSELoss(reduction='mean') over the C outputs"),
    # BCEWithLogitsLoss(mean) per batch of B = 32: the batch mean gradient / C, squared, averaged over K: 1/C^2 x batched
    "bce mean per batch": (bernoulli, lambda m, l, x, y: batched_diag(grads(m, l, x, y), 32) / C**2, None, "batched", 32,
                           "1/C^2", "BCEWithLogitsLoss(reduction='mean')"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_factor_of_the_issue_is_found_and_named(name):
    """Before issue 28 each of these was 'no simple factor of N, C, B or 2'."""
    problem, build, reduce, estimator, batch_size, factor, convention = CASES[name]
    model, lik, x, y = problem()
    theirs = build(model, lik, x, y)
    if reduce == "mean":
        theirs = theirs.mean(axis=0)
    result = diagnose(model, lik, x, y, theirs, hessian=estimator == "hessian")
    assert (result.estimator, result.batch_size) == (estimator, batch_size), result.report()
    assert result.scale_factor == factor, result.scale_words
    assert convention in result.scale_words, result.scale_words


def test_search_is_simplest_first_and_exponents_are_read_back():
    """The expression of every searched factor evaluates to its value (N = 480, C = 3, B = 32, K = 15, S = 4);
    complexities never decrease; x 1 is first."""
    factors = search_factors(480, 32, 3, "gaussian", 1.0, None, 4)
    assert factors[0].expression == "1" and factors[0].complexity == 0
    assert all(a.complexity <= b.complexity for a, b in zip(factors, factors[1:], strict=False))
    env = {"N": 480, "C": 3, "B": 32, "K": 15, "S": 4}
    for f in factors:
        value = eval(f.expression.replace("^", "**"), {}, dict(env))  # noqa: S307 - our own expressions
        assert value == pytest.approx(f.value, rel=1e-12), f.expression
    assert len({f.expression for f in factors}) == len(factors)


def test_equal_values_take_the_named_convention():
    """K = B = 32 at N = 1000: 32/1000 is K/N (divided by len(dataset) instead of len(loader)), not B/N."""
    factors = search_factors(1000, 32, None, "categorical")
    factor, words = match_scale(32 / 1000, factors, rtol=1e-9)
    assert factor.expression == "K/N" and "len(dataset)" in words


def test_a_none_verdict_has_no_scale_words_beyond_the_fitted_c():
    """The issue: a 'none' named a specific bug ('x K = 78: ... summed over the K minibatches')."""
    model, lik, x, y = gaussian()
    perturbed = model.with_theta(model.theta * 1.1)
    result = diagnose(model, lik, x, y, exact_diag(perturbed, lik, x) * 7, batch_sizes=[], hessian=False)
    assert result.estimator == "none", result.report()
    assert result.scale_factor is None
    assert result.scale_words == f"x {result.scale:.12g} (the fitted c of the closest, {result.closest.label})"
