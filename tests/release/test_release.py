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

REPO = Path(__file__).resolve().parents[2]

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
    "    " + "/" + "work/venv-libs/bin/python tests/x.py",
    "cd " + "/" + "home/alice/ewc_ref",
    "written to " + "/" + "tmp/ewc_example/model.npz",
    "`" + "/" + "Users/bob/.venv/bin/python`",
    "out = '" + "/" + "tmp'",
    "C:\\" + "Users\\carol\\ewc",
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


# ---------------------------------------------------------------- release artefacts (item 4)
def _check_dist():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_dist", REPO / ".ci" / "check_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOOD_WHEEL = {
    "ewc_ref/__init__.py": "", "ewc_ref/cli.py": "", "ewc_ref/data/digits.npz": "",
    "ewc_ref-0.1.0.dist-info/METADATA": "License-Expression: MIT\nLicense-File: LICENSE\n",
    "ewc_ref-0.1.0.dist-info/licenses/LICENSE": "MIT License",
}
GOOD_SDIST = ["ewc_ref/__init__.py", "ewc_ref/cli.py", "ewc_ref/data/digits.npz", "LICENSE", "README.md",
              "pyproject.toml", "PKG-INFO"]


def _wheel(tmp_path, files):
    import zipfile

    path = tmp_path / "ewc_ref-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def _sdist(tmp_path, names):
    import io
    import tarfile

    path = tmp_path / "ewc_ref-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in names:
            info = tarfile.TarInfo(f"ewc_ref-0.1.0/{name}")
            archive.addfile(info, io.BytesIO(b""))
    return path


def test_check_dist_accepts_a_good_wheel_and_sdist(tmp_path):
    check = _check_dist()
    assert check.wheel_problems(_wheel(tmp_path, GOOD_WHEEL)) == []
    assert check.sdist_problems(_sdist(tmp_path, GOOD_SDIST)) == []


@pytest.mark.parametrize("drop, expected", [
    ("ewc_ref-0.1.0.dist-info/licenses/LICENSE", "lacks the licence text"),
    ("ewc_ref/data/digits.npz", "wheel lacks ewc_ref/data/digits.npz"),
])
def test_check_dist_finds_a_wheel_without(tmp_path, drop, expected):
    files = {k: v for k, v in GOOD_WHEEL.items() if k != drop}
    problems = _check_dist().wheel_problems(_wheel(tmp_path, files))
    assert len(problems) == 1 and expected in problems[0]


def test_check_dist_finds_a_wheel_without_license_file_metadata(tmp_path):
    files = dict(GOOD_WHEEL, **{"ewc_ref-0.1.0.dist-info/METADATA": "License-Expression: MIT\n"})
    assert _check_dist().wheel_problems(_wheel(tmp_path, files)) == ["wheel METADATA lacks 'License-File: LICENSE'"]


@pytest.mark.parametrize("extra", ["tests/test_cli.py", "tests/support/hostile.py", "derivations/01_bayes_rule.md",
                                   "ewc_ref/test_thing.py", "conftest.py"])
def test_check_dist_finds_test_files_in_the_sdist(tmp_path, extra):
    problems = _check_dist().sdist_problems(_sdist(tmp_path, [*GOOD_SDIST, extra]))
    assert len(problems) == 1 and "holds 1 test files" in problems[0] and extra in problems[0]


def test_check_dist_finds_an_sdist_without_license(tmp_path):
    names = [n for n in GOOD_SDIST if n != "LICENSE"]
    assert _check_dist().sdist_problems(_sdist(tmp_path, names)) == ["sdist lacks LICENSE"]


def test_license_is_mit_and_declared_for_wheel_and_sdist():
    import tomllib

    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "the ewc_ref authors" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    manifest = (REPO / "MANIFEST.in").read_text(encoding="utf-8").split()
    assert {"tests", "derivations"} <= {manifest[i + 1] for i, word in enumerate(manifest) if word == "prune"}
