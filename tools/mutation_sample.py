"""Mutation kill of a sample: ten one-line wrong changes, each run against the test files that cover it.

Each mutant replaces one exact line fragment (it must occur exactly once in its file) in a scratch
copy of the repository (the files git would commit, as .ci/run copies them), runs
``python -m pytest -x -q`` on that mutant's test files there, and records KILLED (the tests fail),
SURVIVED (they pass) or ERROR (pytest could not run them: exit code other than 0 or 1). The
repository itself is never modified. Prints a Markdown table.

    PYTHONPATH=. python tools/mutation_sample.py                  # all ten, the tests as laid out now
    PYTHONPATH=. python tools/mutation_sample.py --only 3 5      # some of them
    python tools/mutation_sample.py --layout before --repo DIR   # a checkout from before tests/ mirrored
                                                                 # the package (main at 5d578e6)
    python tools/mutation_sample.py --baseline                   # also run each set unmutated (must pass)

Measured 2026-12-05 (issue 27, item 1): the same mutants killed and the same surviving before and
after the tests were moved (the table is in the closing note of the issue).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The test files holding the tests of one old file, before and after the move.
CURVATURE_BEFORE = ["tests/test_curvature.py"]
CURVATURE_AFTER = ["tests/curvature/test_naive_twins.py", "tests/curvature/test_estimator_identities.py",
                   "tests/curvature/test_curvature_files_and_refusals.py", "tests/curvature/test_torch_fixtures.py"]
DIAGNOSE_BEFORE = ["tests/test_diagnose.py"]
DIAGNOSE_AFTER = ["tests/verify/test_diagnose.py", "tests/verify/test_diagnose_statistics.py",
                  "tests/verify/test_diagnose_cli.py"]

#: (file, exact fragment, replacement, what is wrong, tests before the move, tests after it)
MUTANTS = [
    ("ewc_ref/curvature/estimators.py", "for s in range(samples)]), 1.0 / samples",
     "for s in range(samples)]), 1.0", "mc: the 1/S weight dropped (x S)", CURVATURE_BEFORE, CURVATURE_AFTER),
    ("ewc_ref/curvature/estimators.py", "return lik.grad(f, lik.most_probable(f))[None], 1.0",
     "return lik.grad(f, lik.most_probable(f))[None], 2.0", "pred: weight 2 (x 2)", CURVATURE_BEFORE, CURVATURE_AFTER),
    ("ewc_ref/verify/scale.py", "c = float(t @ f) / ff", "c = float(t @ f) / tt",
     "fit_scale: <T, F> / <T, T> instead of / <F, F>", DIAGNOSE_BEFORE, DIAGNOSE_AFTER),
    ("ewc_ref/verify/scale.py", "if not math.isfinite(scale) or scale <= 0:",
     "if not math.isfinite(scale) or scale < 0:", "match_scale: a zero scale let through (boundary)",
     DIAGNOSE_BEFORE, DIAGNOSE_AFTER),
    ("ewc_ref/model/likelihoods.py", "return (f - y) / self.sigma**2", "return (f - y) / self.sigma",
     "gaussian score: / sigma instead of / sigma^2", ["tests/test_likelihoods.py"], ["tests/model/test_likelihoods.py"]),
    ("ewc_ref/model/likelihoods.py", "return expit(f) * expit(-f)  # p (1 - p)", "return expit(f) * expit(f)  # p (1 - p)",
     "bernoulli Lambda: p^2 instead of p (1 - p) (sign)", ["tests/test_likelihoods.py"], ["tests/model/test_likelihoods.py"]),
    ("ewc_ref/io.py", "len(y.shape) not in (1, 2)", "len(y.shape) not in (1,)",
     "load_data: 2-d labels refused (off by one dimension)", ["tests/test_io.py"], ["tests/files/test_io.py"]),
    ("ewc_ref/bayes/laplace.py", "return self.log_joint + 0.5 * self.d * LOG_2PI - 0.5 * self.log_det_precision",
     "return self.log_joint + 0.5 * self.d * LOG_2PI + 0.5 * self.log_det_precision",
     "Laplace log evidence: + 1/2 log det instead of - (sign)", ["tests/test_laplace.py", "tests/test_evidence.py"],
     ["tests/bayes/test_laplace.py", "tests/bayes/test_evidence.py"]),
    ("ewc_ref/bayes/laplace.py", "r @ solve[:, d] - d + logdet_q", "r @ solve[:, d] - d + 1 + logdet_q",
     "Gaussian KL: - d + 1 (off by one)", ["tests/test_laplace.py", "tests/test_grid.py"],
     ["tests/bayes/test_laplace.py", "tests/bayes/test_grid.py", "tests/bayes/test_grid_error_estimate.py"]),
    ("ewc_ref/continual/penalty.py", "return 0.5 * lam * float(d @ Fd), lam * Fd", "return lam * float(d @ Fd), lam * Fd",
     "EWC penalty value: lambda instead of lambda/2 (x 2)", ["tests/test_ewc.py"], ["tests/continual/test_penalty.py"]),
]


def scratch_copy(repo: Path, into: Path) -> None:
    """The tracked and untracked-but-not-ignored files of `repo`, copied into `into` (as .ci/run does)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        source = repo / os.fsdecode(name)
        if source.is_file():
            target = into / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(copy: Path, tests: list[str]) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(copy), "OPENBLAS_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=copy, env=env, capture_output=True, text=True)
    return done.returncode, time.monotonic() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--layout", choices=["after", "before"], default="after",
                        help="which test paths to run: tests/ mirroring the package (after) or the flat tests/ (before)")
    parser.add_argument("--only", type=int, nargs="*", help="mutant numbers (1-based)")
    parser.add_argument("--baseline", action="store_true", help="first run each test set on the unmutated copy")
    args = parser.parse_args(argv)
    chosen = args.only or range(1, len(MUTANTS) + 1)
    print(f"| # | mutant ({args.layout}) | file | tests | result | s |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ewc_ref_mutants_") as work:
        copy = Path(work)
        scratch_copy(args.repo.resolve(), copy)
        for number in chosen:
            path, fragment, replacement, what, before, after = MUTANTS[number - 1]
            tests = after if args.layout == "after" else before
            target = copy / path
            original = target.read_text()
            if original.count(fragment) != 1:
                print(f"| {number} | {what} | {path} | | ERROR: the fragment occurs {original.count(fragment)} times | |")
                continue
            if args.baseline:
                code, _ = run_tests(copy, tests)
                if code != 0:
                    print(f"| {number} | {what} | {path} | {' '.join(tests)} | ERROR: fails unmutated (exit {code}) | |")
                    continue
            target.write_text(original.replace(fragment, replacement))
            try:
                code, seconds = run_tests(copy, tests)
            finally:
                target.write_text(original)
            result = {0: "SURVIVED", 1: "KILLED"}.get(code, f"ERROR (exit {code})")
            print(f"| {number} | {what} | {path} | {' '.join(Path(t).name for t in tests)} | {result} | {seconds:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
