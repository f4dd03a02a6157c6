"""The command line: inspect, --version, and the one-line / exit-2 error contract."""

import json
import subprocess
import sys

import numpy as np
import pytest
from support.torch_problems import TORCH_FIXTURES as FIXTURES  # the committed torch problems

import ewc_ref as er
from ewc_ref.cli import COMMANDS, build_parser, main
from ewc_ref.curvature.estimators import describe
from ewc_ref.curvature.structures import describe as describe_structures


def test_inspect_on_a_pytorch_export(capsys):
    code = main(["inspect", str(FIXTURES / "categorical_model.npz"), str(FIXTURES / "categorical_data.npz")])
    out = capsys.readouterr().out
    assert code == 0
    assert "5 -> 8 -> 6 -> 4" in out and "P = 130" in out and "accuracy" in out
    reference = np.load(FIXTURES / "categorical_reference.npz")
    assert f"{float(reference['mean_loss']):.10g}" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "missing.npz"],
        ["inspect"],
        ["frobnicate"],
        [],
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2  # usage errors too: main returns the status, it does not raise
    err = capsys.readouterr().err.strip()
    if argv:  # bare `ewc-ref` prints help to stderr instead
        assert len(err.splitlines()) == 1, err


def test_bad_model_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, **{"0.weight": np.ones((2, 2)), "__activation__": np.array("relu")})
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "__likelihood__" in err and str(path) in err


def test_help_and_version_return_0(capsys):
    assert main(["--help"]) == 0 and "fisher" in capsys.readouterr().out
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"ewc-ref {er.__version__}"


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "ewc_ref.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ewc-ref {er.__version__}"


def test_inspect_json_matches_the_text(capsys):
    model, data = str(FIXTURES / "categorical_model.npz"), str(FIXTURES / "categorical_data.npz")
    assert main(["inspect", model, data, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    reference = np.load(FIXTURES / "categorical_reference.npz")
    assert facts["layers"] == [5, 8, 6, 4] and facts["n_params"] == 130 and facts["n"] == 48
    assert facts["likelihood"] == "categorical" and facts["sigma"] is None and facts["activation"] == "tanh"
    assert facts["parameters"]["0.weight"] == [8, 5] and list(facts["parameters"])[-1] == "4.bias"
    assert abs(facts["mean_loss"] - float(reference["mean_loss"])) <= 1e-12 * float(reference["mean_loss"])
    assert main(["inspect", model, data, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"{facts['mean_loss']:.10g}" in text and f"accuracy     {facts['accuracy']:.4f}" in text


def test_inspect_json_of_a_gaussian_model_without_data(capsys):
    assert main(["inspect", str(FIXTURES / "gaussian_model.npz"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["likelihood"] == "gaussian" and facts["sigma"] == 0.7
    assert facts["data"] is None and facts["mean_loss"] is None and facts["accuracy"] is None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_quiet_and_reporting_commands_have_json(command, capsys):
    assert main([command, "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--quiet" in help_text
    assert "--json" in help_text  # every command reports something
    if command in ("fisher", "figures"):  # the commands that write files
        assert "-o OUT" in help_text.replace("-o DIR", "-o OUT") and "--output" in help_text


def _modules_loaded_by(argv):
    """The modules in sys.modules after a fresh interpreter ran ``ewc-ref ARGV`` (help output dropped)."""
    code = ("import contextlib, io, sys\nfrom ewc_ref.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
            "print(' '.join(sys.modules))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_cli_imports_only_the_command_it_runs(command):
    loaded = [m for m in _modules_loaded_by([command, "--help"]) if m.startswith("ewc_ref.commands.")]
    assert sorted(loaded) == sorted([COMMANDS[command][0], "ewc_ref.commands._args"])


def test_inspect_help_loads_neither_curvature_nor_diagnosis():
    loaded = _modules_loaded_by(["inspect", "--help"])
    heavy = [m for m in loaded if m.startswith(("ewc_ref.curvature", "ewc_ref.figures", "ewc_ref.continual"))
             or (m.startswith("ewc_ref.") and "diagnos" in m)]
    assert heavy == [] and "scipy.stats" not in loaded
    assert "ewc_ref.curvature" in _modules_loaded_by(["fisher", "--help"])  # the probe sees imports


def test_help_keeps_the_tables_of_the_docstrings(capsys):
    assert main(["fisher", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one table row per estimator, each on its own line: the rows' definitions (ewc_ref/curvature/estimators.py)
    assert "  empirical  F = 1/N sum_n g_n g_n^T, with g_n at the observed label y_n" in lines
    assert "  hessian    H = 1/N sum_n d^2 l_n / d theta^2" in lines
    assert all(line in lines for line in describe().splitlines())
    assert all(line in lines for line in describe_structures().splitlines())  # ewc_ref/curvature/structures.py


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["demo", "--epochs", "0"], "ewc-ref demo: error: --epochs: expected an integer >= 1, got 0"),
        (["demo", "--seed", "-3"], "ewc-ref demo: error: --seed: expected an integer >= 0, got -3"),
        (["demo", "--momentum", "1"], "ewc-ref demo: error: --momentum: expected a number in [0, 1), got 1"),
        (["demo", "--gamma", "0"], "ewc-ref demo: error: --gamma: expected a number in (0, 1], got 0"),
        (["demo", "--lr", "inf"], "ewc-ref demo: error: --lr: expected a finite number > 0, got inf"),
        (["demo", "--sweep-lambda", "1,-2"], "ewc-ref demo: error: --sweep-lambda: expected a finite number >= 0, got -2"),
        (["diagnose", "m", "d", "t", "--seed", "-1"], "ewc-ref diagnose: error: --seed: expected an integer >= 0, got -1"),
        (["diagnose", "m", "d", "t", "--batch-sizes", "0"],
         "ewc-ref diagnose: error: --batch-sizes: expected an integer >= 1, got 0"),
        (["diagnose", "m", "d", "t", "--tol", "1"], "ewc-ref diagnose: error: --tol: expected a number in (0, 1), got 1"),
    ],
)
def test_flag_errors_name_the_flag_in_one_line(argv, line, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == line + "\n"


ROOT = FIXTURES.parents[2]


def test_the_contract_lives_in_the_repository():
    """No file cites the old out-of-repository contract; README links docs/file-format.md."""
    tracked = [ROOT / "README.md", *ROOT.glob("ewc_ref/**/*.py"), *ROOT.glob("docs/*"), *ROOT.glob("derivations/*.md")]
    offenders = [str(p.relative_to(ROOT)) for p in tracked if p.is_file() and p.name != "file-format.md"
                 and ("EXCHANGE" in p.read_text() or "../shared" in p.read_text())]
    assert offenders == []
    assert "](docs/file-format.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_is_documented_in_the_contract(command):
    """docs/file-format.md has a section per command naming each of its flags."""
    text = (ROOT / "docs" / "file-format.md").read_text()
    section = text.split(f"\n### {command}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    subparser = build_parser([command])._subparsers._group_actions[0].choices[command]
    flags = [s for action in subparser._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert flags and [flag for flag in flags if flag not in section] == []


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_report_commands_write_their_report_to_output(tmp_path, capsys, json_flag):
    """-o FILE gets exactly what stdout would have shown; stdout stays empty."""
    model, data = str(FIXTURES / "categorical_model.npz"), str(FIXTURES / "categorical_data.npz")
    assert main(["inspect", model, data, *json_flag]) == 0
    shown = capsys.readouterr().out
    target = tmp_path / "report"
    assert main(["inspect", model, data, *json_flag, "-o", str(target)]) == 0
    assert capsys.readouterr().out == "" and target.read_text() == shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left behind


def test_compare_output_keeps_the_exit_status_and_bad_input_writes_nothing(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.ones(3))
    np.savez(b, w=np.array([1.0, 1.0, 2.0]))
    assert main(["compare", str(a), str(b), "--json", "-o", str(tmp_path / "r.json")]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["keys"]["w"]["worst_index"] == [2]
    np.savez(b, v=np.ones(3))
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "bad.txt")]) == 2
    assert "keys differ" in capsys.readouterr().err and not (tmp_path / "bad.txt").exists()
