"""The diagnosis catalogue as data: buggy and variant Fisher computations and what diagnose must answer.

Shared by tests/verify/test_diagnose.py (each case diagnosed), test_diagnose_cli.py (the command line
on a few of them) and test_diagnose_statistics.py. Every THEIRS is written in plain NumPy from
per-sample gradients, the network Jacobian and the likelihood formulas (support.problems),
independently of ewc_ref.curvature and of the code under test. A case is (name, likelihood, THEIRS
builder (model, lik, x, y) -> (P,), expected (estimator, scale, batch_size, S) or ("none",)).
"""

import numpy as np
import pytest

from ewc_ref.verify.scale import ROUNDOFF_TOL
from support.problems import (
    N,
    batched_diag,
    exact_diag,
    grads,
    make_problem,
    mc_diag,
    perturbed,
    pred_labels,
    wrong_loss_diag,
)


# --------------------------------------------------------------------------- the catalogue
def catalogue():
    """name, likelihood, THEIRS builder, expected (estimator, scale(n), batch_size, S)."""
    def emp(m, l, x, y):
        return (grads(m, l, x, y) ** 2).mean(0)

    def mixed(m, l, x, y):
        labels = np.where(np.arange(len(x)) < len(x) // 2, y, pred_labels(m, l, x))
        return (grads(m, l, x, labels) ** 2).mean(0)

    def clipped(m, l, x, y):
        F = (grads(m, l, x, y) ** 2).mean(0)
        return np.minimum(F, np.quantile(F, 0.8))

    return [
        ("empirical", "categorical", emp, ("empirical", 1.0, None, None)),
        ("exact", "categorical", lambda m, l, x, y: exact_diag(m, l, x), ("exact", 1.0, None, None)),
        ("pred", "categorical", lambda m, l, x, y: (grads(m, l, x, pred_labels(m, l, x)) ** 2).mean(0), ("pred", 1.0, None, None)),
        ("mc S=1", "categorical", lambda m, l, x, y: mc_diag(m, l, x, 1, 5), ("mc", 1.0, None, 1)),
        ("mc S=10", "categorical", lambda m, l, x, y: mc_diag(m, l, x, 10, 6), ("mc", 1.0, None, 10)),
        ("batched B=1", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 1), ("empirical", 1.0, None, None)),
        ("batched B=8", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 8), ("batched", 1.0, 8, None)),
        ("batched B=32", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 32), ("batched", 1.0, 32, None)),
        ("batched B=N", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), len(x)), ("batched", 1.0, N, None)),
        ("batched B=100 (partial last batch)", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 100),
         ("batched", 1.0, 100, None)),
        ("x N (sum, not mean)", "categorical", lambda m, l, x, y: (grads(m, l, x, y) ** 2).sum(0), ("empirical", N, None, None)),
        ("/ N (divided twice)", "categorical", lambda m, l, x, y: (grads(m, l, x, y) ** 2).mean(0) / len(x),
         ("empirical", 1 / N, None, None)),
        ("N/(N-1)", "categorical", lambda m, l, x, y: (grads(m, l, x, y) ** 2).sum(0) / (len(x) - 1),
         ("empirical", N / (N - 1), None, None)),
        ("exact x N", "categorical", lambda m, l, x, y: exact_diag(m, l, x) * len(x), ("exact", N, None, None)),
        ("minibatch SUM squared, B=32", "categorical", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 32, "sum"),
         ("batched", 32.0**2, 32, None)),
        ("summed-loss gradient squared", "categorical", lambda m, l, x, y: grads(m, l, x, y).sum(0) ** 2,
         ("batched", float(N) ** 2, N, None)),
        ("wrong parameters (empirical)", "categorical", lambda m, l, x, y: emp(perturbed(m), l, x, y), ("none",)),
        ("wrong parameters (exact)", "categorical", lambda m, l, x, y: exact_diag(perturbed(m), l, x), ("none",)),
        ("wrong loss (Brier)", "categorical", lambda m, l, x, y: wrong_loss_diag(m, x, y), ("none",)),
        ("clipped at the 80% quantile", "categorical", clipped, ("none",)),
        ("mixed labels (half observed, half predicted)", "categorical", mixed, ("none",)),
        ("labels of the previous example (misaligned)", "categorical",
         lambda m, l, x, y: (grads(m, l, x, np.roll(y, 1)) ** 2).mean(0), ("none",)),
        ("gaussian exact", "gaussian", lambda m, l, x, y: exact_diag(m, l, x), ("exact", 1.0, None, None)),
        ("gaussian mc S=1", "gaussian", lambda m, l, x, y: mc_diag(m, l, x, 1, 7), ("mc", 1.0, None, 1)),
        ("gaussian batched B=8", "gaussian", lambda m, l, x, y: batched_diag(grads(m, l, x, y), 8), ("batched", 1.0, 8, None)),
        ("gaussian wrong parameters (exact)", "gaussian", lambda m, l, x, y: exact_diag(perturbed(m), l, x), ("none",)),
        ("bernoulli empirical x N", "bernoulli", lambda m, l, x, y: (grads(m, l, x, y) ** 2).sum(0), ("empirical", N, None, None)),
        ("bernoulli mc S=10", "bernoulli", lambda m, l, x, y: mc_diag(m, l, x, 10, 8), ("mc", 1.0, None, 10)),
        ("bernoulli wrong parameters (exact)", "bernoulli", lambda m, l, x, y: exact_diag(perturbed(m), l, x), ("none",)),
    ]


CATALOGUE = catalogue()
# Gaussian and Bernoulli on a wider net: the shape test's power against a Fisher at parameters
# 3% away grows with P; on a 5-10-4 net (P = 104) such a Fisher passed as mc with S ~ 2-6.
PROBLEMS = {"categorical": make_problem("categorical"), "gaussian": make_problem("gaussian", sizes=(8, 16, 3)),
            "bernoulli": make_problem("bernoulli", sizes=(8, 16, 3))}


def check_expected(result, expected):
    if expected[0] == "none":
        assert result.estimator == "none", (result.estimator, result.rel_error, result.mc and result.mc.reason)
        assert all(not c.fits for c in result.candidates)
        return
    estimator, scale, batch_size, samples = expected
    assert result.estimator == estimator, (result.estimator, [(c.label, c.rel_error) for c in result.candidates[:4]])
    assert result.batch_size == batch_size
    if estimator == "mc":
        # CLT: the scale is 1 within a few Monte Carlo standard errors; S_hat within a factor 2.
        assert abs(result.scale - scale) <= 5 * result.mc.scale_se
        assert samples / 2 <= result.mc.implied_samples <= 2 * samples, result.mc.implied_samples
        assert result.samples == max(1, round(result.mc.implied_samples))
    else:
        assert result.rel_error <= ROUNDOFF_TOL["float64"]
        assert result.scale == pytest.approx(scale, rel=1e-9)
        assert result.margin > 1e3  # the runner-up is far worse (margins are in the module's report)
