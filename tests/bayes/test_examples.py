"""The examples write where they say: into the folder given with -o (default: a new temporary
folder), printed before anything is written, and never into the current folder.

The example's heavy tables are replaced by small versions of the same functions (the numbers are
tested in tests/bayes/test_laplace.py and tests/bayes/test_posterior.py); what is tested here is where files go.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from ewc_ref.bayes import examples as bayes_examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def laplace_example(monkeypatch):
    spec = importlib.util.spec_from_file_location("laplace_vs_posterior", EXAMPLES / "laplace_vs_posterior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "figure_data", lambda: bayes_examples.figure_data(n_points=41))
    monkeypatch.setattr(module, "bernstein_von_mises_table",
                        lambda: bayes_examples.bernstein_von_mises_table(seeds=range(1), ns=(10,), n_points=41))
    monkeypatch.setattr(module, "sequential_table",
                        lambda: bayes_examples.sequential_table(n_a_values=(30,), n_points=41))
    return module


def _run(module, argv, capsys, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    assert module.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("output folder: ")
    folder = Path(out[0].removeprefix("output folder: "))
    wrote = [Path(line.removeprefix("wrote ")) for line in out if line.startswith("wrote ")]
    return folder, wrote


def test_laplace_example_writes_into_the_folder_it_names(laplace_example, capsys, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    target = tmp_path / "out" / "new"
    folder, wrote = _run(laplace_example, ["-o", str(target)], capsys, tmp_path / "cwd", monkeypatch)
    assert folder == target
    assert {p.name for p in wrote} >= {"laplace.npz"} and all(p.parent == target and p.is_file() for p in wrote)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in wrote)
    assert list((tmp_path / "cwd").iterdir()) == []


def test_laplace_example_defaults_to_a_new_temporary_folder(laplace_example, capsys, tmp_path, monkeypatch):
    folder, wrote = _run(laplace_example, [], capsys, tmp_path, monkeypatch)
    try:
        assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("ewc_ref_laplace_")
        assert wrote and all(p.parent == folder for p in wrote)
        assert list(tmp_path.iterdir()) == []
    finally:
        for path in wrote:
            path.unlink()
        folder.rmdir()
