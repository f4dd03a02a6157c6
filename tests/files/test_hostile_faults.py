"""Faults (issue 25, item 7): interrupted figures, late and repeated Ctrl-C, a demo larger than memory.

(The temporary-file classes -- SIGKILL in the write window, two concurrent writers in one folder,
the staging folder of `figures` -- are in tests/files/test_io.py beside atomic_output and atomic_folder.)
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

import ewc_ref as er
import ewc_ref.figures
from ewc_ref.cli import main
from ewc_ref.curvature import budget


# ----------------------------------------------------------------------------- figures
def test_an_interrupted_figures_run_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    """The second of two figures fails (as a Ctrl-C would): the first one is not moved in either."""
    out = tmp_path / "figs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    make = ewc_ref.figures.make_figure

    def second_fails(name, *args, **kwargs):
        if name == "estimators":
            raise KeyboardInterrupt
        return make(name, *args, **kwargs)

    monkeypatch.setattr(ewc_ref.figures, "make_figure", second_fails)
    monkeypatch.setattr("ewc_ref.commands.figures.make_figure", second_fails, raising=False)
    code = main(["figures", "--data-only", "--only", "laplace", "--only", "estimators", "-o", str(out), "--quiet"])
    assert code == 130
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]  # no staging folder left
    assert main(["figures", "--data-only", "--only", "laplace", "-o", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["laplace.npz", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- Ctrl-C
_LATE = """
import os, signal, sys, time
import ewc_ref.cli as cli
code = cli.main()  # as the console script does: argv from sys.argv
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the command finished, while Python winds down
time.sleep(5)
sys.exit(code)
"""


def test_a_ctrl_c_after_the_command_finished_exits_130(tmp_path):
    er.save_model(tmp_path / "m.npz", er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical())
    done = subprocess.run([sys.executable, "-c", _LATE, "inspect", str(tmp_path / "m.npz"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert '"n_params": 26' in done.stdout  # what the command printed was flushed


def test_a_burst_of_ctrl_c_exits_130_with_one_line(tmp_path):
    """Several SIGINTs at once: the second must not raise inside the handling of the first."""
    er.save_model(tmp_path / "m.npz", er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical())
    x = np.random.default_rng(0).uniform(-1, 1, (50_000, 3))
    er.save_data(tmp_path / "big.npz", x, np.zeros(50_000, int))
    process = subprocess.Popen([sys.executable, "-m", "ewc_ref.cli", "fisher", str(tmp_path / "m.npz"),
                                str(tmp_path / "big.npz"), "--estimator", "mc", "--samples", "2000", "-o",
                                str(tmp_path / "out.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "fisher mc" not in seen:
        seen += process.stderr.read(1)
    for _ in range(20):
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "ewc-ref fisher: interrupted"
    assert not (tmp_path / "out.npz").exists()


# ----------------------------------------------------------------------------- demo's size
def test_demo_refuses_a_network_larger_than_the_budget_up_front(capsys):
    code = main(["demo", "--hidden", "1000000000"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("ewc-ref demo: error: --hidden: a 64-1000000000-10 network has P = 75000000010 parameters")


# P by hand: 64-100-10 is 65 x 100 + 101 x 10; 64-30-20-10 is 65 x 30 + 31 x 20 + 21 x 10.
@pytest.mark.parametrize(("hidden", "n_params", "tasks", "batch"), [([100], 7510, 5, 32), ([30, 20], 2780, 2, 7)])
def test_demo_size_is_parameters_times_copies_plus_a_batch(hidden, n_params, tasks, batch, monkeypatch):
    """The bound is exactly 8 x (P x (6 + 2 T) + 3 x B x sum of widths): at it the demo starts, one byte
    under it the demo is refused (a factor 2 in P, T or B would move the edge)."""
    from ewc_ref.commands import demo

    need = 8 * (n_params * (6 + 2 * tasks) + 3 * batch * (64 + sum(hidden) + 10))
    args = type("Args", (), {"hidden": hidden, "tasks": tasks, "batch_size": batch})()
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", need)
    demo._check_network_size(args, n_inputs=64)
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", need - 1)
    with pytest.raises(ValueError, match=f"--hidden: .* P = {n_params} parameters"):
        demo._check_network_size(args, n_inputs=64)


def test_running_out_of_memory_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """A MemoryError anywhere in a command (numpy's 'Unable to allocate ...') is an error line, not a traceback."""
    import ewc_ref.commands.inspect as inspect_command

    er.save_model(tmp_path / "m.npz", er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical())

    def exhausted(args):
        np.empty(2**45)  # 256 TiB: numpy raises _ArrayMemoryError, a MemoryError

    monkeypatch.setattr(inspect_command, "run", exhausted)
    code = main(["inspect", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ewc-ref inspect: error: out of memory: Unable to allocate"), err
