"""Check the built wheel and sdist in dist/ (run by .ci/run after `python -m build`).

* wheel: the package, its data and the licence (``License-File: LICENSE`` in METADATA, the text in
  ``*.dist-info/licenses/LICENSE``); nothing outside the package (no tests).
* sdist: the package, its data, LICENSE, README.md, pyproject.toml, and NO tests: the test suite needs
  its fixtures, helpers and the derivation pages and lives in the repository (MANIFEST.in prunes it),
  so an unpacked sdist never holds half a suite that fails when run.
* the sdist is complete: it is unpacked and a wheel is built from it (``--rebuild``, as pip installs
  an sdist); that wheel must hold the same files as the wheel built from the repository.

Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE_FILES = ("ewc_ref/__init__.py", "ewc_ref/cli.py", "ewc_ref/data/digits.npz")
OUTSIDE_PACKAGE = ("tests/", "derivations/", "benchmarks/", "examples/", "docs/", "tools/", ".ci/")


def _is_test_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("test_") and base.endswith(".py") or base == "conftest.py"


def wheel_problems(wheel: Path) -> list[str]:
    """What is wrong with a wheel: missing package files or licence, files outside the package."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        text = archive.read(metadata).decode() if metadata else ""
    problems += [f"wheel lacks {required}" for required in PACKAGE_FILES if required not in names]
    stray = [n for n in names if n.startswith(OUTSIDE_PACKAGE) or _is_test_file(n)]
    if stray:
        problems.append(f"wheel holds files outside the package: {stray[:5]}")
    for line in ("License-Expression: MIT", "License-File: LICENSE"):
        if line not in text:
            problems.append(f"wheel METADATA lacks '{line}'")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("wheel lacks the licence text (*.dist-info/licenses/LICENSE)")
    return problems


def sdist_problems(sdist: Path) -> list[str]:
    """What is wrong with an sdist: missing package files, LICENSE, metadata, or any test file."""
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    top = members[0].split("/", 1)[0] if members else ""
    inside = {m.split("/", 1)[1] for m in members if "/" in m}
    problems = [f"sdist lacks {required}" for required in
                (*PACKAGE_FILES, "LICENSE", "README.md", "pyproject.toml", "PKG-INFO") if required not in inside]
    tests = [m for m in inside if m.startswith(("tests/", "derivations/")) or _is_test_file(m)]
    if tests:
        problems.append(f"sdist holds {len(tests)} test files (it ships no tests): {sorted(tests)[:5]}")
    if not top:
        problems.append("sdist is empty")
    return problems


def rebuild_problems(sdist: Path, wheel: Path) -> list[str]:
    """Build a wheel from the unpacked sdist; it must hold the same files as ``wheel``."""
    with tempfile.TemporaryDirectory() as work:
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        (source,) = Path(work).iterdir()
        built = subprocess.run([sys.executable, "-m", "build", "--wheel", "-o", f"{work}/out", str(source)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            return [f"building a wheel from the unpacked sdist failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}"]
        (rebuilt,) = Path(work, "out").glob("*.whl")
        with zipfile.ZipFile(rebuilt) as a, zipfile.ZipFile(wheel) as b:
            ours, theirs = set(a.namelist()), set(b.namelist())
    if ours != theirs:
        return [f"the wheel built from the sdist differs from the repository's: "
                f"missing {sorted(theirs - ours)[:5]}, extra {sorted(ours - theirs)[:5]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", nargs="?", default="dist", type=Path)
    parser.add_argument("--no-rebuild", action="store_true", help="skip building a wheel from the sdist")
    args = parser.parse_args(argv)
    wheels, sdists = sorted(args.dist.glob("*.whl")), sorted(args.dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        problems = [f"expected one wheel and one sdist in {args.dist}, found {len(wheels)} and {len(sdists)}"]
    else:
        problems = wheel_problems(wheels[0]) + sdist_problems(sdists[0])
        if not problems and not args.no_rebuild:
            problems = rebuild_problems(sdists[0], wheels[0])
    for p in problems:
        print(f"check_dist: {p}", file=sys.stderr)
    print(f"check_dist: {wheels[0].name if wheels else '-'} and {sdists[0].name if sdists else '-'}: "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
