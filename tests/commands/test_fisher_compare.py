"""`ewc-ref fisher` and `ewc-ref compare` (docs/file-format.md "Command line")."""

import json

import numpy as np
import pytest
from support.torch_problems import TORCH_FIXTURES as FIXTURES  # the committed torch problems

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.commands.fisher import ESTIMATOR_FLAGS
from ewc_ref.curvature.estimators import ESTIMATORS
from ewc_ref.verify.gradcheck import relative_error

CASES = [
    ("empirical", "diag", "empirical_diag", []), ("empirical", "full", "empirical_full", []),
    ("exact", "diag", "exact_diag", []), ("exact", "full", "exact_full", []), ("ggn", "full", "exact_full", []),
    ("batched", "diag", "batched_diag_b8", ["--batch-size", "8"]), ("pred", "diag", "pred_diag", []),
]


def _paths(name):
    return str(FIXTURES / f"{name}_model.npz"), str(FIXTURES / f"{name}_data.npz")


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
@pytest.mark.parametrize(("estimator", "structure", "key", "extra"), CASES, ids=[c[2] + "-" + c[0] for c in CASES])
def test_fisher_cli_matches_pytorch_libraries(tmp_path, capsys, name, estimator, structure, key, extra):
    model_path, data_path = _paths(name)
    out = tmp_path / "F.npz"
    assert main(["fisher", model_path, data_path, "--estimator", estimator, "--structure", structure, "-o", str(out), "--quiet", *extra]) == 0
    assert capsys.readouterr().err == ""  # --quiet
    written = np.load(out, allow_pickle=False)
    assert str(written["__estimator__"]) == estimator and str(written["__structure__"]) == structure
    model, _ = er.load_model(model_path)
    reference = np.load(FIXTURES / f"{name}_reference.npz")[key]
    if structure == "full":
        flat = written["full"]
    else:
        flat = np.concatenate([written[k].ravel() for k in model.param_names])
    assert relative_error(flat, reference) <= 1e-10
    # compare: against the torch reference written in the same layout
    ref_path = tmp_path / "R.npz"
    if structure == "full":
        np.savez(ref_path, full=reference)
    else:
        np.savez(ref_path, **model.unflatten(reference))
    assert main(["compare", str(out), str(ref_path)]) == 0
    assert "\nmatch (rtol = 1e-10" in capsys.readouterr().out


def test_compare_reports_a_mismatch_with_exit_1(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **{"0.weight": np.ones((2, 3)), "0.bias": np.ones(2)})
    np.savez(b, **{"0.weight": np.ones((2, 3)), "0.bias": np.array([1.0, 2.0])})
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "0.bias[1]: 1 vs 2" in out and "MISMATCH" in out and out.strip().splitlines()[-1].startswith("mismatch")
    assert main(["compare", str(a), str(b), "--atol", "1.5"]) == 0


@pytest.mark.parametrize(
    ("b_arrays", "message"),
    [
        ({"0.weight": np.ones((2, 3))}, "keys differ"),
        ({"0.weight": np.ones((3, 2)), "0.bias": np.ones(2)}, "key '0.weight': shape"),
        ({"0.weight": np.full((2, 3), np.nan), "0.bias": np.ones(2)}, "non-finite"),
    ],
)
def test_compare_bad_input_exits_2(tmp_path, capsys, b_arrays, message):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **{"0.weight": np.ones((2, 3)), "0.bias": np.ones(2)})
    np.savez(b, **b_arrays)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--estimator", "batched"], "--batch-size: required by --estimator batched"),
        (["--estimator", "batched", "--batch-size", "1000"], "--batch-size: expected an integer <= 48, got 1000"),
        (["--estimator", "batched", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--estimator", "mc", "--samples", "0"], "--samples: expected an integer >= 1, got 0"),
        (["--estimator", "mc", "--samples", "two"], "--samples: expected an integer, got 'two'"),
        (["--estimator", "mc", "--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
        (["--estimator", "exact", "--chunk-size", "0"], "--chunk-size: expected an integer >= 1, got 0"),
        (["--estimator", "hessian", "--structure", "kfac"], "--structure: 'kfac' is defined for per-example"),
        (["--estimator", "exact", "--kfac-bias", "separate"], "--kfac-bias: only used by --structure kfac, not by --structure diag"),
        (["--estimator", "exact", "--structure", "full", "--kfac-bias", "joined"], "--kfac-bias: only used by --structure kfac"),
        (["--estimator", "exact", "--structure", "kfac", "--kfac-bias", "both"], "--kfac-bias: invalid choice"),
        (["--estimator", "nope"], "--estimator: invalid choice"),
        (["--estimator", "exact", "--structure", "lowrank"], "--structure: invalid choice"),
        (["--estimator", "exact", "-o", "MISSING/F.npz"], "-o/--output: folder"),
        (["--estimator", "exact", "-o", "."], "-o/--output: . is a folder"),
    ],
)
def test_fisher_bad_options_exit_2_without_output(tmp_path, capsys, extra, message):
    model_path, data_path = _paths("categorical")
    out = tmp_path / "F.npz"
    extra = [str(tmp_path / "missing" / "F.npz") if a == "MISSING/F.npz" else a for a in extra]
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["fisher", model_path, data_path, "-o", str(out), "--quiet", *extra]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ewc-ref fisher: error: {message}"), err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


@pytest.mark.parametrize("flag", list(ESTIMATOR_FLAGS))
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fisher_refuses_a_flag_its_estimator_does_not_read(tmp_path, capsys, flag, estimator):
    """The table ESTIMATOR_FLAGS, row by row: a flag is refused by every estimator not listed."""
    model_path, data_path = _paths("categorical")
    argv = ["fisher", model_path, data_path, "--estimator", estimator, flag, "4", "-o", str(tmp_path / "F.npz"),
            "--quiet"]
    if estimator == "batched" and flag != "--batch-size":
        argv += ["--batch-size", "8"]
    code = main(argv)
    err = capsys.readouterr().err
    if estimator in ESTIMATOR_FLAGS[flag][1]:
        assert code == 0 and err == ""
    else:
        assert code == 2 and err == f"ewc-ref fisher: error: {flag}: only used by --estimator " \
            f"{' or '.join(ESTIMATOR_FLAGS[flag][1])}, not by --estimator {estimator}\n"
        assert list(tmp_path.iterdir()) == []


def test_fisher_json_summary_describes_the_file_written(tmp_path, capsys):
    model_path, data_path = _paths("categorical")
    out = tmp_path / "F.npz"
    argv = ["fisher", model_path, data_path, "--estimator", "mc", "--samples", "3", "--seed", "5", "-o", str(out)]
    assert main([*argv, "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert captured.err == ""
    written = np.load(out)
    assert summary == {"output": str(out), "estimator": "mc", "structure": "diag", "n": int(written["__n__"]),
                       "n_params": 130, "samples": 3, "batch_size": None, "seed": 5, "kfac_bias": None}
    assert summary["n"] == 48 and int(written["__samples__"]) == 3
    # without --json the summary is one line on stderr and stdout stays empty
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {out}: mc diag, P = 130, N = 48" in captured.err


@pytest.mark.parametrize("kfac_bias", [None, "joined", "separate"])
def test_fisher_kfac_bias_writes_the_library_s_file(tmp_path, capsys, kfac_bias):
    """--kfac-bias reaches the file (default joined) and the file is er.fisher(..., kfac_bias=...)'s."""
    model_path, data_path = _paths("categorical")
    out = tmp_path / "F.npz"
    flag = [] if kfac_bias is None else ["--kfac-bias", kfac_bias]
    assert main(["fisher", model_path, data_path, "--estimator", "exact", "--structure", "kfac", *flag,
                 "-o", str(out), "--json", "--quiet"]) == 0
    expected_bias = kfac_bias or "joined"
    assert json.loads(capsys.readouterr().out)["kfac_bias"] == expected_bias
    model, lik = er.load_model(model_path)
    x, y = er.load_data(data_path)
    loaded = er.Curvature.load(out, model)
    assert loaded.kfac_bias == expected_bias
    direct = er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias=expected_bias)
    assert relative_error(loaded.to_dense(), direct.to_dense()) <= 1e-12


def test_fisher_data_that_does_not_fit_the_model_exits_2(tmp_path, capsys):
    model_path, _ = _paths("categorical")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((4, 5)), y=np.array([0, 1, 2, 7]))
    assert main(["fisher", model_path, str(data), "--estimator", "exact", "-o", str(tmp_path / "F.npz")]) == 2
    err = capsys.readouterr().err
    assert "key 'y'" in err and "0..3" in err
    assert not (tmp_path / "F.npz").exists()


def test_fisher_full_too_large_exits_2(tmp_path, capsys, monkeypatch):
    from ewc_ref.curvature import budget

    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 10_000)
    model_path, data_path = _paths("categorical")
    assert main(["fisher", model_path, data_path, "--estimator", "exact", "--structure", "full", "-o", str(tmp_path / "F.npz")]) == 2
    assert "use structure='diag', 'block' or 'kfac'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fisher_mc_is_reproducible_with_a_seed(tmp_path):
    model_path, data_path = _paths("categorical")
    paths = []
    for i, seed in enumerate(["3", "3", "4"]):
        paths.append(tmp_path / f"F{i}.npz")
        main(["fisher", model_path, data_path, "--estimator", "mc", "--samples", "2", "--seed", seed, "-o", str(paths[-1]), "--quiet"])
    a, b, c = (np.load(p)["0.weight"] for p in paths)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_progress_is_reported_on_stderr(tmp_path, capsys):
    model_path, data_path = _paths("categorical")
    main(["fisher", model_path, data_path, "--estimator", "exact", "-o", str(tmp_path / "F.npz")])
    err = capsys.readouterr().err
    assert "fisher exact/diag: 48/48 (100%)" in err


def test_compare_json_has_the_per_key_errors_and_the_verdict(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **{"0.weight": np.ones((2, 3)), "0.bias": np.ones(2)})
    np.savez(b, **{"0.weight": np.ones((2, 3)), "0.bias": np.array([1.0, 2.0])})
    assert main(["compare", str(a), str(b), "--json"]) == 1  # the exit status is the verdict
    result = json.loads(capsys.readouterr().out)
    assert result["match"] is False and result["rtol"] == 1e-10 and result["atol"] == pytest.approx(2e-12)
    assert result["keys"]["0.weight"] == {"match": True, "max_abs_error": 0.0, "max_rel_error": 0.0,
                                          "worst_index": [0, 0], "a": 1.0, "b": 1.0}
    bias = result["keys"]["0.bias"]
    assert bias["match"] is False and bias["worst_index"] == [1] and (bias["a"], bias["b"]) == (1.0, 2.0)
    assert bias["max_abs_error"] == 1.0 and bias["max_rel_error"] == 0.5
    assert main(["compare", str(a), str(b), "--json", "--atol", "1.5", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["match"] is True


@pytest.mark.parametrize(("flag", "value"), [("--rtol", "-1"), ("--atol", "nan"), ("--rtol", "x")])
def test_compare_tolerances_are_checked_by_flag(tmp_path, capsys, flag, value):
    assert main(["compare", "a.npz", "b.npz", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ewc-ref compare: error: {flag}: expected a finite number >= 0")
