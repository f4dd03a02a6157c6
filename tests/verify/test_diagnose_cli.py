"""``ewc-ref diagnose`` and er.diagnose's input checks on the catalogue's problems.

The command's JSON and text on THEIRS files built from the catalogue (tests/support/diagnose_catalogue.py),
and bad THEIRS (keys, shapes, values, data that does not fit): exit 2 with the key named.
"""

import json
import math

import numpy as np
import pytest
from support.diagnose_catalogue import CATALOGUE, PROBLEMS
from support.problems import (
    N,
    batched_diag,
    grads,
)

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.verify.diagnosis import diagnose


# --------------------------------------------------------------------------- API input checks
def test_api_rejects_bad_theirs():
    model, lik, x, y = PROBLEMS["categorical"]
    with pytest.raises(ValueError, match="all entries are zero"):
        diagnose(model, lik, x, y, np.zeros(model.n_params))
    with pytest.raises(ValueError, match="non-finite"):
        diagnose(model, lik, x, y, np.full(model.n_params, np.nan))
    with pytest.raises(ValueError, match="theirs: expected"):
        diagnose(model, lik, x, y, np.ones(model.n_params + 1))
    with pytest.raises(ValueError, match="batch_sizes"):
        diagnose(model, lik, x, y, np.ones(model.n_params), batch_sizes=[N + 1])
    with pytest.raises(ValueError, match="y: categorical labels"):
        diagnose(model, lik, x, np.full(N, 9), np.ones(model.n_params))


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def files(tmp_path):
    model, lik, x, y = PROBLEMS["categorical"]
    er.save_model(tmp_path / "model.npz", model, lik)
    er.save_data(tmp_path / "data.npz", x, y)
    return tmp_path, model, lik, x, y


def save_diag(path, model, flat):
    np.savez(path, **model.unflatten(flat))


@pytest.mark.parametrize("which", ["batched B=32", "x N (sum, not mean)", "mc S=10", "wrong parameters (exact)"])
def test_cli_json(files, which, capsys):
    tmp, model, lik, x, y = files
    _, _, build, expected = next(c for c in CATALOGUE if c[0] == which)
    save_diag(tmp / "theirs.npz", model, build(model, lik, x, y))
    code = main(["diagnose", str(tmp / "model.npz"), str(tmp / "data.npz"), str(tmp / "theirs.npz"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    obj = json.loads(out)
    assert set(obj) >= {"estimator", "scale", "batch_size", "samples", "rel_error", "candidates"}
    assert obj["estimator"] == expected[0]
    if expected[0] != "none":
        assert obj["batch_size"] == expected[2]
        if expected[0] != "mc":
            assert obj["scale"] == pytest.approx(expected[1], rel=1e-9)
        else:
            assert expected[3] / 2 <= obj["mc_test"]["implied_samples"] <= 2 * expected[3]
    assert all({"estimator", "scale", "rel_error"} <= set(c) for c in obj["candidates"])


def test_cli_text_full_file(files, capsys):
    tmp, model, lik, x, y = files
    G = grads(model, lik, x, y)
    np.savez(tmp / "full.npz", full=G.T @ G)  # sum instead of mean
    code = main(["diagnose", str(tmp / "model.npz"), str(tmp / "data.npz"), str(tmp / "full.npz"), "--quiet",
                 "--batch-sizes", "8", "32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "verdict     empirical" in out and "the 1/N average is missing" in out
    assert "runner-up" in out and "margin" in out and "correct EWC Fisher" in out and "480 F + prior precision" in out


def _bad(files, arrays, capsys, *extra):
    tmp = files[0]
    np.savez(tmp / "bad.npz", **arrays)
    code = main(["diagnose", str(tmp / "model.npz"), str(tmp / "data.npz"), str(tmp / "bad.npz"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err


def test_cli_bad_keys_and_shapes_are_listed(files, capsys):
    _, model, *_ = files
    arrays = {k: np.ones(v.shape) for k, v in model.unflatten(np.ones(model.n_params)).items()}
    arrays["0.weight"] = np.ones((3, 3))
    arrays["2.weight"] = np.ones((1, 1))
    del arrays["2.bias"]
    arrays["9.weight"] = np.ones(2)
    err = _bad(files, arrays, capsys)
    assert "bad.npz" in err and "missing keys ['2.bias']" in err and "unknown keys ['9.weight']" in err
    assert "0.weight (3, 3) (expected (10, 5))" in err and "2.weight (1, 1) (expected (4, 10))" in err


def test_cli_bad_values(files, capsys):
    _, model, *_ = files
    zeros = model.unflatten(np.zeros(model.n_params))
    assert "all entries are zero" in _bad(files, zeros, capsys)
    nan = dict(zeros)
    nan["0.bias"] = np.full(10, np.nan)
    assert "'0.bias'" in _bad(files, nan, capsys)
    assert "'full'" in _bad(files, {"full": np.ones((3, 3))}, capsys)
    assert "--batch-sizes" in _bad(files, model.unflatten(np.ones(model.n_params)), capsys, "--batch-sizes", "0")


def test_cli_data_that_does_not_fit(files, capsys):
    tmp, model, lik, x, y = files
    er.save_data(tmp / "wide.npz", np.ones((4, 7)), np.zeros(4, dtype=int))
    save_diag(tmp / "theirs.npz", model, np.ones(model.n_params))
    code = main(["diagnose", str(tmp / "model.npz"), str(tmp / "wide.npz"), str(tmp / "theirs.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "wide.npz" in err and "features" in err and err.count("\n") == 1


def test_margins_are_reported(files):
    """The catalogue's margins (runner-up error / winner error), for the record in the docs."""
    _, model, lik, x, y = files
    result = diagnose(model, lik, x, y, batched_diag(grads(model, lik, x, y), 32))
    assert result.runner_up is not None and math.isfinite(result.margin) and result.margin > 1e10
