"""``ewc-ref diagnose-penalty``: the verdict as text and JSON, -o, and one-line errors naming the flag or key."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.verify.penalty_fit import probe_points, sample_penalty

LIK = er.Categorical()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tasks and an Avalanche-style separate penalty (lambda sum F d^2, batched B = 8), lambda = 0.5."""
    folder = tmp_path_factory.mktemp("penalty")
    rng = np.random.default_rng(0)
    models = [er.MLP.random([4, 5, 3], "tanh", rng=t) for t in range(2)]
    paths = {}
    fishers = []
    for t, m in enumerate(models):
        x, y = rng.standard_normal((24, 4)), rng.integers(0, 3, 24)
        paths[f"m{t + 1}"], paths[f"d{t + 1}"] = folder / f"m{t + 1}.npz", folder / f"d{t + 1}.npz"
        er.save_model(paths[f"m{t + 1}"], m, LIK)
        er.save_data(paths[f"d{t + 1}"], x, y)
        fishers.append(er.fisher(m, LIK, x, y, estimator="batched", batch_size=8).diagonal)

    def avalanche(theta):
        value = 0.5 * sum(float(np.sum(f * (theta - m.theta) ** 2)) for f, m in zip(fishers, models, strict=True))
        grad = 0.5 * sum(2 * f * (theta - m.theta) for f, m in zip(fishers, models, strict=True))
        return value, grad

    theta, value, grad = sample_penalty(avalanche, probe_points(models[-1].theta, 0.1))
    paths["theirs"] = folder / "theirs.npz"
    np.savez(paths["theirs"], theta=theta, value=value, grad=grad)
    return {k: str(v) for k, v in paths.items()}


def _argv(files, *extra):
    return ["diagnose-penalty", files["m1"], files["m2"], "--data", files["d1"], files["d2"], files["theirs"], *extra]


def test_text_verdict_names_separate_and_the_factor_2(files, capsys):
    assert main(_argv(files, "--lambda", "0.5", "--quiet")) == 0
    out = capsys.readouterr().out
    assert "verdict     separate" in out and "batched, B = 8" in out
    assert "lambda_paper = 2 x yours" in out


def test_json_and_output_file(files, tmp_path, capsys):
    out_path = tmp_path / "verdict.json"
    assert main(_argv(files, "--lambda", "0.5", "--json", "-o", str(out_path))) == 0
    assert capsys.readouterr().out == ""
    result = json.loads(out_path.read_text())
    assert result["combination"] == "separate" and result["factor_expression"] == "2"
    assert result["curvature"]["estimator"] == "batched" and result["curvature"]["batch_size"] == 8
    assert result["anchor"]["kind"] == "weighted mean"
    assert result["penalty_fit"]["quadratic"] == "diagonal quadratic"


def test_theirs_may_come_before_data(files, capsys):
    argv = ["diagnose-penalty", files["m1"], files["m2"], files["theirs"], "--data", files["d1"], files["d2"], "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["combination"] == "separate"


def _bad_penalty(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("missing key", "missing ['grad']"),
    ("unknown key", "unknown ['lam']"),
    ("wrong P", "P = 5 columns"),
    ("one row", "M = 1 row"),
    ("nan", "key 'grad' contains 1 non-finite"),
])
def test_bad_penalty_files_are_one_line_naming_the_key(files, tmp_path, capsys, case, expected):
    theta, value, grad = (np.load(files["theirs"])[k] for k in ("theta", "value", "grad"))
    arrays = {"theta": theta, "value": value, "grad": grad}
    if case == "missing key":
        del arrays["grad"]
    elif case == "unknown key":
        arrays["lam"] = np.array(1.0)
    elif case == "wrong P":
        arrays = {"theta": theta[:, :5], "value": value, "grad": grad[:, :5]}
    elif case == "one row":
        arrays = {"theta": theta[:1], "value": value[:1], "grad": grad[:1]}
    else:
        grad = grad.copy()
        grad[0, 0] = np.nan
        arrays["grad"] = grad
    path = _bad_penalty(tmp_path, **arrays)
    argv = ["diagnose-penalty", files["m1"], files["m2"], "--data", files["d1"], files["d2"], path, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ewc-ref diagnose-penalty: error: ") and expected in err, err


@pytest.mark.parametrize("extra, flag", [
    (["--lambda", "0"], "--lambda"), (["--gamma", "1.5"], "--gamma"), (["--batch-sizes", "1"], "--batch-sizes"),
    (["--batch-sizes", "99"], "--batch-sizes"), (["--tol", "2"], "--tol"),
])
def test_bad_flags_are_one_line_naming_the_flag(files, capsys, extra, flag):
    assert main(_argv(files, *extra, "--quiet")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {flag}:" in err, err


def test_one_data_per_model(files, capsys):
    argv = ["diagnose-penalty", files["m1"], files["m2"], "--data", files["d1"], files["theirs"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data: expected one DATA per MODEL" in err


@pytest.mark.parametrize("factor", [1e-300, 1e300])
def test_extreme_penalty_scales_keep_the_name_and_scale_lambda(files, tmp_path, capsys, factor):
    arrays = dict(np.load(files["theirs"]))
    path = _bad_penalty(tmp_path, theta=arrays["theta"], value=arrays["value"] * factor, grad=arrays["grad"] * factor)
    argv = ["diagnose-penalty", files["m1"], files["m2"], "--data", files["d1"], files["d2"], path, "--json", "--quiet"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)  # strictly valid JSON
    assert result["combination"] == "separate"
    assert result["lambda_paper"] == pytest.approx(factor, rel=1e-10)
