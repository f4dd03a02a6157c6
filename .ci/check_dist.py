"""Check the built wheel and sdist in dist/: the wheel holds the package and its data, no tests.

Run by .ci/run after `python -m build`; exits 1 with one line per problem.
"""

import sys
import tarfile
import zipfile
from pathlib import Path

dist = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
problems = []
if len(wheels) != 1 or len(sdists) != 1:
    problems.append(f"expected one wheel and one sdist in {dist}, found {len(wheels)} and {len(sdists)}")
else:
    names = zipfile.ZipFile(wheels[0]).namelist()
    for required in ("ewc_ref/__init__.py", "ewc_ref/cli.py", "ewc_ref/data/digits.npz"):
        if required not in names:
            problems.append(f"wheel lacks {required}")
    stray = [n for n in names if n.startswith(("tests/", "derivations/", "benchmarks/", "examples/"))]
    if stray:
        problems.append(f"wheel holds files outside the package: {stray[:5]}")
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheels[0]).read(metadata).decode()
    if "License-Expression: MIT" not in text:
        problems.append("wheel METADATA lacks 'License-Expression: MIT'")
    members = tarfile.open(sdists[0]).getnames()
    if not any(m.endswith("ewc_ref/data/digits.npz") for m in members):
        problems.append("sdist lacks ewc_ref/data/digits.npz")
for p in problems:
    print(f"check_dist: {p}", file=sys.stderr)
print(f"check_dist: {wheels[0].name if wheels else '-'} and {sdists[0].name if sdists else '-'}: "
      f"{'ok' if not problems else f'{len(problems)} problems'}")
sys.exit(1 if problems else 0)
