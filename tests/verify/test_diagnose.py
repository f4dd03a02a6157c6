"""The diagnosis catalogue: buggy and variant Fisher computations, each diagnosed correctly.

Every THEIRS below is written in plain NumPy from per-sample gradients
(ewc_ref.per_sample_gradients), the network Jacobian (model.jacobian) and the likelihood
formulas, independently of ewc_ref.curvature and of the code under test. Each case states
what ``diagnose`` must answer: the estimator, the scale (exactly, to 1e-9 relative: round-off
of a float64 fit is ~1e-15), the batch size, and for mc the implied S within the CLT spread.

The observed labels are the network's most probable class, 30% of them replaced at random:
not samples from the model, so empirical, pred and mc differ in distribution. (When observed
labels are distributed like the model's predictions, an empirical Fisher IS a one-sample mc
estimate, and no test can tell them apart; with N = 96 and a calibrated model the catalogue's
label bugs were statistically indistinguishable from mc S = 1, so N = 480 here.)

Tolerances. Deterministic fits must be within the float64 round-off threshold (1e-8, see
ewc_ref.verify.scale.ROUNDOFF_TOL). mc: the implied S of an S-sample estimate is M / chi2_M; with
M >= 60 whitened directions its relative sd is sqrt(2/M) <= 0.18, so S_hat within a factor 2
of S is a > 3.8-sigma band (fixed seeds). The mc tests themselves have significance 1e-6.
"""

import json

import numpy as np
import pytest
from scipy.special import softmax
from support.diagnose_catalogue import CATALOGUE, PROBLEMS, check_expected
from support.problems import (
    N,
    batched_diag,
    exact_diag,
    grads,
    make_problem,
    sample_labels,
)

import ewc_ref as er
from ewc_ref.curvature.budget import HESSIAN_LIMIT
from ewc_ref.curvature.dense_hessian import hessian_diag
from ewc_ref.verify.diagnosis import diagnose
from ewc_ref.verify.scale import ROUNDOFF_TOL, fit_scale


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_catalogue(case):
    name, likelihood, build, expected = case
    model, lik, x, y = PROBLEMS[likelihood]
    theirs = build(model, lik, x, y)
    result = diagnose(model, lik, x, y, theirs)
    check_expected(result, expected)
    # The report and the JSON object are consistent with the verdict.
    text = result.report()
    assert ("verdict     none" in text) == (expected[0] == "none")
    obj = json.loads(json.dumps(result.to_dict()))
    assert obj["estimator"] == result.estimator and len(obj["candidates"]) == len(result.candidates)


def test_scale_words_name_the_bug():
    model, lik, x, y = PROBLEMS["categorical"]
    G = grads(model, lik, x, y)
    words = {
        "x N = 480: the 1/N average is missing": (G**2).sum(0),
        "x 1/N = 0.00208333 (N = 480): each per-example gradient of the MEAN loss squared": (G**2).mean(0) / N,
        "x N/(N-1) = 480/479": (G**2).sum(0) / (N - 1),
        "x B^2 = 1024 (B^2 = 32^2): the gradient of the minibatch SUM": batched_diag(G, 32, "sum"),
    }
    for phrase, theirs in words.items():
        assert phrase in diagnose(model, lik, x, y, theirs).scale_words


def test_n_over_n_minus_1_is_not_rounded_to_1():
    model, lik, x, y = PROBLEMS["categorical"]
    result = diagnose(model, lik, x, y, (grads(model, lik, x, y) ** 2).sum(0) / (N - 1))
    assert result.scale != 1.0 and abs(result.scale - N / (N - 1)) <= 1e-12 * N
    assert "N/(N-1)" in result.report()


def test_full_structure():
    model, lik, x, y = make_problem("categorical", n=160)
    n = len(x)
    G = grads(model, lik, x, y)
    fast = {"batch_sizes": [8, 16, 32], "hessian": False}
    assert diagnose(model, lik, x, y, G.T @ G / n, **fast).estimator == "empirical"
    rows = np.array([G[s:s + 8].mean(0) for s in range(0, n, 8)])
    result = diagnose(model, lik, x, y, rows.T @ rows / len(rows) * n, **fast)
    assert (result.estimator, result.batch_size) == ("batched", 8) and result.scale == pytest.approx(n, rel=1e-9)
    # A full mc estimate, tested on its diagonal and a sample of off-diagonal entries.
    rng = np.random.default_rng(3)
    Gs = [grads(model, lik, x, sample_labels(model, lik, x, rng)) for _ in range(4)]
    mc_full = sum(g.T @ g for g in Gs) / (4 * n)
    result = diagnose(model, lik, x, y, mc_full, **fast)
    assert result.estimator == "mc" and 2 <= result.mc.implied_samples <= 8
    J = model.jacobian(x)
    p = softmax(model.predict(x), axis=1)
    Lam = np.einsum("nc,cd->ncd", p, np.eye(4)) - p[:, :, None] * p[:, None, :]
    exact_wrong_offdiag = np.einsum("ncp,ncd,ndq->pq", J, Lam, J, optimize=True) / n
    exact_wrong_offdiag[0, 1:] *= 1.01
    exact_wrong_offdiag[1:, 0] *= 1.01
    assert diagnose(model, lik, x, y, exact_wrong_offdiag, **fast).estimator == "none"


def test_a_hessian_diagonal_is_diagnosed_as_hessian():
    """Contract (module docstring): ``hessian`` is a candidate for small problems (P N <=
    HESSIAN_LIMIT), so THEIRS = diag(H) of a net with a hidden layer, where H = GGN + the residual
    term sum_c dl/df_c d^2 f_c / dtheta^2 != GGN, is named ``hessian`` with its scale (here x N: a
    Hessian of the summed loss). Without the candidate no Fisher fits and the verdict is 'none'."""
    model, lik, x, y = PROBLEMS["categorical"]  # 5-10-4 tanh, N = 480
    assert model.n_params * len(x) <= HESSIAN_LIMIT  # the default includes the candidate
    theirs = len(x) * hessian_diag(model, lik, x, y)
    exact = exact_diag(model, lik, x)
    assert fit_scale(theirs, exact)[1] > 1e3 * ROUNDOFF_TOL["float64"]  # H is not the GGN here
    result = diagnose(model, lik, x, y, theirs, batch_sizes=[8, 32])
    check_expected(result, ("hessian", float(len(x)), None, None))
    assert "the 1/N average is missing" in result.scale_words


def test_float32_theirs_is_recognised():
    model, lik, x, y = PROBLEMS["categorical"]
    model32 = model.with_theta(model.theta.astype(np.float32))
    G32 = er.per_sample_gradients(model32, lik, x.astype(np.float32), y)
    theirs = (G32 * G32).mean(0, dtype=np.float32).astype(np.float64)  # a float32 computation, exported .double()
    # Their weights are the float32 ones (what a float32 network exports).
    model_as_exported = model.with_theta(model32.theta.astype(np.float64))
    result = diagnose(model_as_exported, lik, x.astype(np.float32).astype(np.float64), y, theirs)
    assert result.precision == "float32" and result.tol == ROUNDOFF_TOL["float32"]
    assert result.estimator == "empirical" and 1e-9 < result.rel_error < 1e-5
