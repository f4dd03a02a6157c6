"""Release hygiene: what a fresh clone, the wheel and the sdist must (not) contain.

* No machine paths: no tracked text file names an absolute home, temporary or work folder of a
  development machine (a reader elsewhere cannot follow such a line; scripts that need another
  environment say how to create one relative to the repository).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# An absolute POSIX path into a home, temporary or work folder, or a Windows user folder. The
# look-behind keeps relative paths ("derivations/work/x", "tcp://HOST/tmp") and URLs out.
MACHINE_PATH = re.compile(
    r"(?<![\w.~/:-])/(?:home|Users|root|tmp|var/tmp|var/folders|private/var|work|mnt|scratch)(?=/|\b)"
    r"|\b[A-Za-z]:\\(?:Users|Documents and Settings)\\"
)


def _text_files() -> list[Path]:
    """The tracked files (git ls-files), or, outside a git checkout, every non-hidden file."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        paths = [REPO / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {"__pycache__", "build", "dist"}
        paths = [p for p in REPO.rglob("*") if p.is_file()
                 and not any(part.startswith(".") and part != ".ci" or part in skip or part.endswith(".egg-info")
                             for part in p.relative_to(REPO).parts[:-1])]
    texts = []
    for path in paths:
        data = path.read_bytes() if path.is_file() else b""
        if b"\0" not in data[:8192]:
            texts.append(path)
    return texts


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``text`` naming an absolute home/temp/work path."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if MACHINE_PATH.search(line)]


@pytest.mark.parametrize("line", [
    "    " + "/work" + "/venv-libs/bin/python tests/x.py",
    "cd " + "/home" + "/alice/ewc_ref",
    "written to " + "/tmp" + "/ewc_example/model.npz",
    "`" + "/Users" + "/bob/.venv/bin/python`",
    "out = '" + "/tmp" + "'",
    "C:" + "\\Users\\carol\\ewc",
])
def test_machine_path_pattern_finds(line):
    assert machine_paths(line) == [(1, line.strip())]


@pytest.mark.parametrize("line", [
    "python3 -m venv .venv-libs && .venv-libs/bin/pip install torch",
    "ewc-ref figures -o figures/ --data-only",
    "dask worker tcp://HOST:8786",
    "see https://example.org/home/page and derivations/work/notes",
    "tests/fixtures/torch/README.md",
])
def test_machine_path_pattern_passes_relative_paths(line):
    assert machine_paths(line) == []


def test_no_machine_paths_in_tracked_text_files():
    files = _text_files()
    assert len(files) > 50, f"found only {len(files)} text files under {REPO}"
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(REPO)}:{n}: {line}" for n, line in machine_paths(text)]
    assert not offenders, "absolute machine paths (use paths relative to the repository):\n" + "\n".join(offenders)
