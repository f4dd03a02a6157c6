"""er.laplace_evidence (ewc_ref/bayes/evidence.py): against a direct dense computation, against the
committed laplace-torch 0.3 numbers (tests/fixtures/libraries/, script beside them), and the
identities between KFAC with the bias joined to A and kept separate (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import ewc_ref as er
from ewc_ref.bayes.evidence import NotPositiveDefinite

FIXTURES = Path(__file__).parents[1] / "fixtures" / "libraries"
# Exact identities in float64: a log determinant of P <= 200 terms of size ~10 and a sum of
# N = 60 losses agree to ~1e-13 relative; 1e-10 leaves room for BLAS order and is far below any
# formula error (a missing N, alpha or 2 pi moves the result by >= 1e-2 relative).
RTOL = 1e-10


def small_case(likelihood: str = "categorical", seed: int = 0):
    rng = np.random.default_rng(seed)
    model = er.MLP.random([4, 6, 3], "tanh", rng=rng)
    x = rng.standard_normal((60, 4))
    lik = er.get_likelihood(likelihood)
    y = {"categorical": rng.integers(0, 3, 60), "gaussian": rng.standard_normal((60, 3)),
         "bernoulli": rng.integers(0, 2, (60, 3))}[likelihood]
    return model, lik, x, y


def dense_evidence(model, lik, x, y, alpha: float, curvature: np.ndarray) -> float:
    """log p(D|theta) + log N(theta; 0, I/alpha) + P/2 log 2 pi - 1/2 log det(N C + alpha I), with scipy's Gaussian."""
    n, p = x.shape[0], model.n_params
    sign, log_det = np.linalg.slogdet(n * curvature + alpha * np.eye(p))
    assert sign > 0
    log_prior = multivariate_normal(np.zeros(p), np.eye(p) / alpha).logpdf(model.theta)
    return -er.per_example_losses(model, lik, x, y).sum() + log_prior + 0.5 * p * np.log(2 * np.pi) - 0.5 * log_det


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
@pytest.mark.parametrize(("estimator", "structure", "kfac_bias"), [
    ("exact", "diag", None), ("exact", "full", None), ("exact", "kfac", "joined"), ("exact", "kfac", "separate"),
    ("empirical", "diag", None), ("empirical", "full", None), ("empirical", "kfac", "joined"),
    ("empirical", "kfac", "separate")])
def test_evidence_equals_dense_computation(likelihood, estimator, structure, kfac_bias):
    """diag by N c + alpha, full by Cholesky, kfac by eigenvalues of the factors: all = slogdet of the dense matrix."""
    model, lik, x, y = small_case(likelihood)
    alpha = 0.7
    ours = er.laplace_evidence(model, lik, x, y, prior_precision=alpha, estimator=estimator, structure=structure,
                               kfac_bias=kfac_bias)
    assert ours.kfac_bias == kfac_bias
    dense = er.fisher(model, lik, x, y, estimator, structure, kfac_bias=kfac_bias).to_dense()
    assert ours.log_evidence == pytest.approx(dense_evidence(model, lik, x, y, alpha, dense), rel=RTOL)
    p = model.n_params
    assert ours.log_det_precision == pytest.approx(np.linalg.slogdet(x.shape[0] * dense + alpha * np.eye(p))[1], rel=RTOL)
    assert ours.log_likelihood == pytest.approx(-er.per_example_losses(model, lik, x, y).sum(), rel=RTOL)
    assert (ours.n, ours.n_params, ours.prior_precision) == (60, p, alpha)


def test_hessian_evidence_equals_dense_hessian():
    model, lik, x, y = small_case("gaussian", seed=3)
    H = er.hessian(model, lik, x, y)
    alpha = 1.0 - 2 * min(np.linalg.eigvalsh(60 * H).min(), 0.0)  # covers the untrained net's negative curvature
    for structure, matrix in (("full", H), ("diag", np.diag(np.diagonal(H)))):
        ours = er.laplace_evidence(model, lik, x, y, prior_precision=alpha, estimator="hessian", structure=structure)
        assert ours.log_evidence == pytest.approx(dense_evidence(model, lik, x, y, alpha, matrix), rel=RTOL)


def test_indefinite_precision_is_refused_with_its_smallest_eigenvalue():
    model, lik, x, y = small_case("categorical", seed=1)
    H = er.hessian(model, lik, x, y)
    smallest = np.linalg.eigvalsh(60 * H).min()
    assert smallest < -1e-3  # an untrained net: the Hessian is indefinite
    alpha = -smallest / 2
    with pytest.raises(NotPositiveDefinite) as info:
        er.laplace_evidence(model, lik, x, y, prior_precision=alpha, estimator="hessian", structure="full")
    assert info.value.smallest_eigenvalue == pytest.approx(smallest + alpha, rel=1e-8)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200 and "smallest eigenvalue" in message


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"prior_precision": 0.0}, ValueError, "prior_precision"),
    ({"prior_precision": float("nan")}, ValueError, "prior_precision"),
    ({"prior_precision": "1"}, TypeError, "prior_precision"),
    ({"prior_precision": 1.0, "estimator": "mc"}, ValueError, "estimator"),
    ({"prior_precision": 1.0, "structure": "block"}, ValueError, "structure"),
    ({"prior_precision": 1.0, "structure": "diag", "kfac_bias": "joined"}, ValueError, "kfac_bias"),
    ({"prior_precision": 1.0, "structure": "kfac", "kfac_bias": "both"}, ValueError, "kfac_bias"),
    ({"prior_precision": 1.0, "structure": "kfac", "estimator": "hessian"}, ValueError, "estimator"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    model, lik, x, y = small_case()
    with pytest.raises(error, match=match):
        er.laplace_evidence(model, lik, x, y, **kwargs)


# ------------------------------------------------------------------------------ laplace-torch 0.3
@pytest.fixture(scope="module")
def laplace_torch():
    model, lik = er.load_model(FIXTURES / "categorical_model.npz")
    x, y = er.load_data(FIXTURES / "categorical_data.npz", model, lik)
    return model, lik, x, y, np.load(FIXTURES / "categorical__laplace.npz")


def check_against(ours, ref, key):
    """laplace-torch's log_marginal_likelihood, log_likelihood and log_det_posterior_precision; RTOL relative."""
    assert ours.log_evidence == pytest.approx(float(ref[f"{key}.log_marginal_likelihood"]), rel=RTOL)
    assert ours.log_likelihood == pytest.approx(float(ref[f"{key}.log_likelihood"]), rel=RTOL)
    assert ours.log_det_precision == pytest.approx(float(ref[f"{key}.log_det_posterior_precision"]), rel=RTOL)


@pytest.mark.parametrize("alpha", ["1", "0.1"])
def test_diag_matches_laplace_torch(laplace_torch, alpha):
    model, lik, x, y, ref = laplace_torch
    ours = er.laplace_evidence(model, lik, x, y, prior_precision=float(alpha), estimator="exact", structure="diag")
    check_against(ours, ref, f"diag.ggn.alpha{alpha}")


# The full GGN and Hessian numbers (seconds each at P = 2410) are checked in test_library_fixtures.py
# through the same er.fisher(..., structure='full') and log det; here the full path = dense slogdet above.
@pytest.mark.parametrize("alpha", ["1", "0.1"])
def test_kron_separate_matches_laplace_torch(laplace_torch, alpha):
    """laplace-torch's 'kron' keeps separate bias blocks: kfac_bias='separate' is its number."""
    model, lik, x, y, ref = laplace_torch
    ours = er.laplace_evidence(model, lik, x, y, prior_precision=float(alpha), structure="kfac", kfac_bias="separate")
    check_against(ours, ref, f"kron.ggn.alpha{alpha}")


# ------------------------------------------------------------------------------ joined vs separate
@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
def test_joined_evidence_is_at_least_separate(likelihood):
    """Both precisions have the same diagonal blocks (weight N G (x) A_in + alpha, bias N G + alpha); joined adds
    the W-b cross terms. Fischer's inequality, det [[P, B], [B^T, Q]] <= det P det Q, gives
    log det joined <= log det separate, so log_evidence joined >= separate; the other parts are identical."""
    model, lik, x, y = small_case(likelihood, seed=4)
    joined, separate = (er.laplace_evidence(model, lik, x, y, prior_precision=0.3, structure="kfac", kfac_bias=bias)
                        for bias in ("joined", "separate"))
    assert (joined.log_likelihood, joined.log_prior) == (separate.log_likelihood, separate.log_prior)
    assert joined.log_det_precision < separate.log_det_precision - 1e-6
    assert joined.log_evidence > separate.log_evidence


def test_joined_equals_separate_when_every_layer_input_has_mean_zero():
    """The cross terms are G (x) mean(a): zero for a one-layer net on centred inputs, and then the conventions agree."""
    rng = np.random.default_rng(5)
    model = er.MLP.random([4, 3], "identity", rng=rng)
    x = rng.standard_normal((50, 4))
    x -= x.mean(axis=0)
    y = rng.integers(0, 3, 50)
    joined, separate = (er.laplace_evidence(model, er.Categorical(), x, y, prior_precision=2.0, structure="kfac",
                                            kfac_bias=bias) for bias in ("joined", "separate"))
    assert joined.log_evidence == pytest.approx(separate.log_evidence, rel=RTOL)
    x[:, 0] += 1.0  # a nonzero mean in one input: the cross terms appear and the evidences part
    shifted = [er.laplace_evidence(model, er.Categorical(), x, y, prior_precision=2.0, structure="kfac", kfac_bias=bias)
               for bias in ("joined", "separate")]
    assert shifted[0].log_evidence > shifted[1].log_evidence + 1e-6


def test_cli_kron_separate_is_laplace_torchs_number(capsys):
    from ewc_ref.cli import main

    argv = ["laplace", str(FIXTURES / "categorical_model.npz"), str(FIXTURES / "categorical_data.npz"),
            "--prior-precision", "0.1", "--structure", "kfac", "--kfac-bias", "separate", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    ref = np.load(FIXTURES / "categorical__laplace.npz")
    assert report["log_evidence"] == pytest.approx(float(ref["kron.ggn.alpha0.1.log_marginal_likelihood"]), rel=RTOL)
    assert (report["kfac_bias"], report["prior_precision"], report["n"], report["n_params"]) == ("separate", 0.1, 1000, 2410)


def test_cli_fisher_kfac_bias(tmp_path, capsys):
    from ewc_ref.cli import main

    model, data = str(FIXTURES / "categorical_weak_model.npz"), str(FIXTURES / "categorical_data.npz")
    out = tmp_path / "k.npz"
    assert main(["fisher", model, data, "--estimator", "exact", "--structure", "kfac", "--kfac-bias", "separate",
                 "-o", str(out), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["kfac_bias"] == "separate"
    assert {"kfac.0.bias_G", "kfac.2.bias_G"} <= set(np.load(out).files)
    assert main(["fisher", model, data, "--estimator", "exact", "--kfac-bias", "separate", "-o", str(out)]) == 2
    assert "--kfac-bias" in capsys.readouterr().err
