"""The one output guard of the command line (issue 25, item 1): every command x every spelling of -o.

Each case names an -o that would destroy something (an input under another spelling or through a
link, a device, a FIFO, a folder) or that the file system cannot take (a 300-byte name). Every one
must exit 2 with one line on stderr naming -o, and leave the inputs byte for byte as they were.
The table is commands x spellings, so a command added to COMMANDS is covered without a new test.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import COMMANDS, main

# argv of each command with MODEL, DATA, THEIRS for the inputs; -o goes at the end.
COMMAND_ARGV = {
    "inspect": ["inspect", "MODEL", "DATA"],
    "fisher": ["fisher", "MODEL", "DATA", "--estimator", "exact", "--structure", "diag"],
    "laplace": ["laplace", "MODEL", "DATA", "--prior-precision", "1"],
    "compare": ["compare", "THEIRS", "THEIRS2"],
    "diagnose": ["diagnose", "MODEL", "DATA", "THEIRS"],
    "diagnose-penalty": ["diagnose-penalty", "MODEL", "--data", "DATA", "THEIRS"],
    "demo": ["demo", "--epochs", "1"],
    "figures": ["figures", "--data-only", "--only", "laplace"],
}


def test_the_table_covers_every_command():
    assert set(COMMAND_ARGV) == set(COMMANDS)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """model, data and two curvature files in tmp_path/in; the current folder is tmp_path/in/sub."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    model = er.MLP.random([3, 4, 2], "relu", rng=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.integers(0, 2, 12)
    er.save_model(folder / "model.npz", model, er.Categorical())
    er.save_data(folder / "data.npz", x, y)
    fisher = er.fisher(model, er.Categorical(), x, y, estimator="exact", structure="diag")
    fisher.save(folder / "theirs.npz")
    fisher.save(folder / "theirs2.npz")
    monkeypatch.chdir(folder / "sub")
    return folder


def _input_for(argv):
    """The first input file the command reads (the one the spellings aim at), or None."""
    for word in argv:
        if word in ("MODEL", "DATA", "THEIRS"):
            return word
    return None


NAMES = {"MODEL": "model.npz", "DATA": "data.npz", "THEIRS": "theirs.npz", "THEIRS2": "theirs2.npz"}


def _spell(kind, target, folder):
    """-o spelled `kind` for the input file `target` (a name in `folder`); None if not applicable."""
    if kind == "relative":
        return f"../{target}"
    if kind == "dot":
        return f"./../{target}"
    if kind == "dotdot":
        return f"../../in/{target}"
    if kind == "double slash":
        return f"..//{target}"
    if kind == "absolute":
        return str(folder / target)
    if kind == "symlink":
        (folder / "link.npz").symlink_to(folder / target)
        return "../link.npz"
    if kind == "hard link":
        os.link(folder / target, folder / "hard.npz")
        return "../hard.npz"
    raise AssertionError(kind)


INPUT_SPELLINGS = ["relative", "dot", "dotdot", "double slash", "absolute", "symlink", "hard link"]
FILE_COMMANDS = [name for name, argv in COMMAND_ARGV.items() if _input_for(argv)]


def _snapshot(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and not path.is_symlink()}


def _argv(command, folder, output):
    return [str(folder / NAMES[word]) if word in NAMES else word for word in COMMAND_ARGV[command]] + ["-o", output, "--quiet"]


@pytest.mark.parametrize("spelling", INPUT_SPELLINGS)
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_an_input_under_any_spelling_is_refused(command, spelling, work, capsys):
    target = NAMES[_input_for(COMMAND_ARGV[command])]
    output = _spell(spelling, target, work)
    before = _snapshot(work)
    code = main(_argv(command, work, output))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "-o" in err and "same file as the input" in err, err
    assert _snapshot(work) == before
    if spelling == "symlink":
        assert (work / "link.npz").is_symlink()


def _device(folder):
    path = folder / "device"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a copy of /dev/full
    except PermissionError:
        pytest.fail("mknod needs root here; CI runs as root")
    return path


def _fifo(folder):
    path = folder / "fifo"
    os.mkfifo(path)
    return path


def _socket(folder):
    import socket

    path = folder / "socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()
    return path


SPECIAL = {"device": _device, "fifo": _fifo, "socket": _socket}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("command", sorted(COMMAND_ARGV))
def test_a_non_regular_file_is_refused_and_kept(command, kind, work, capsys):
    path = SPECIAL[kind](work)
    mode = os.lstat(path).st_mode
    code = main(_argv(command, work, str(path)))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "-o" in err, err
    assert os.lstat(path).st_mode == mode  # still the device / FIFO / socket, not a regular file


@pytest.mark.parametrize("command", sorted(COMMAND_ARGV))
def test_an_existing_folder_is_refused_where_a_file_is_written(command, work, capsys):
    (work / "folder").mkdir()
    code = main(_argv(command, work, str(work / "folder")))
    err = capsys.readouterr().err
    if command == "figures":  # -o names a folder: an existing one is where the figures go
        assert code == 0, err
        assert any((work / "folder").iterdir())
    else:
        assert code == 2 and err.count("\n") == 1 and "-o" in err and "folder" in err, err


@pytest.mark.parametrize("command", sorted(COMMAND_ARGV))
def test_a_name_too_long_is_a_one_line_error_naming_the_flag(command, work, capsys):
    code = main(_argv(command, work, str(work / ("x" * 300 + ".npz"))))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "-o" in err and "too long" in err, err

