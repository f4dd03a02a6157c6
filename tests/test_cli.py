"""The command line: inspect, --version, and the one-line / exit-2 error contract."""

import subprocess
import sys

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import main

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "torch"


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
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    if argv:  # bare `ewc-ref` prints help to stderr instead
        assert len(err.splitlines()) == 1, err


def test_bad_model_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, **{"0.weight": np.ones((2, 2)), "__activation__": np.array("relu")})
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "__likelihood__" in err and str(path) in err


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "ewc_ref.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ewc-ref {er.__version__}"
