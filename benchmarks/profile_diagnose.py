"""Where the time of ``diagnose`` goes, in-process, against one exact diagonal Fisher (issue 28, item 8).

The problem of bench_diagnose.py (784-256-256-10 ReLU, categorical, random rows, THEIRS a shuffled
loader's Fisher with B = 48, so every stage runs). After one warm-up call of each, --rounds
alternating timed calls of the exact diagonal Fisher and of diagnose (medians and their ratio),
then one diagnose under cProfile, broken down by stage: the one pass (its forward, backward,
mc covariance and kernels; "GEMMs" is the time spent in diag_pass itself: the s^T a^2 and mean
gradient GEMMs and NumPy's elementwise steps), the ordered screens, the shuffled simulations, the
mc test and the verdict. Threads follow OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS (default 1 here)::

    OPENBLAS_NUM_THREADS=2 python benchmarks/profile_diagnose.py --n 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before numpy is imported

import cProfile  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from bench_diagnose import problem  # noqa: E402

import ewc_ref as er  # noqa: E402
from ewc_ref.curvature.batched import batched_fisher_gemm  # noqa: E402
from ewc_ref.verify.diagnosis import diagnose  # noqa: E402

#: (label, file suffix, function name, cumulative or own time) of the breakdown, in call order.
STAGES = [
    ("one pass", "verify/one_pass.py", "diag_pass", "cum"),
    ("  forward", "model/mlp.py", "forward", "cum"),
    ("  backward deltas (K = C vectors)", "curvature/kernels.py", "backward_deltas", "cum"),
    ("  GEMMs s^T a^2, mean gradient, elementwise (own time)", "verify/one_pass.py", "diag_pass", "own"),
    ("  mc covariance syrk", "curvature/kernels.py", "gram", "cum"),
    ("  label squares (numba)", "curvature/label_kernels.py", "label_squares", "cum"),
    ("  mc entries gather (numba)", "curvature/label_kernels.py", "gather_entries", "cum"),
    ("  bootstrap draws (numba)", "curvature/label_kernels.py", "gathered_squares", "cum"),
    ("  label gradients", "verify/one_pass.py", "__init__", "cum"),
    ("ordered screens (observed and predicted labels)", "verify/loader.py", "minibatch_matrices", "cum"),
    ("  prefix sums", "curvature/label_kernels.py", "prefix_sums", "cum"),
    ("  every B, three variants, fits", "curvature/label_kernels.py", "ordered_fits", "cum"),
    ("mc test", "verify/diagnosis.py", "_mc_candidate", "cum"),
    ("shuffled test", "verify/shuffled.py", "judge_shuffled", "cum"),
    ("  simulated loaders", "verify/shuffled.py", "simulate", "cum"),
    ("    partitions streamed (numba)", "curvature/label_kernels.py", "partition_squares", "cum"),
    ("verdict (causes, scale words)", "verify/diagnosis.py", "_verdict", "cum"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, lik, x, y = problem(args.n)
    order = np.random.default_rng(1).permutation(args.n)
    theirs = batched_fisher_gemm(model, lik, x[order], y[order], 48)
    er.fisher(model, lik, x, y, estimator="exact", structure="diag")
    diagnose(model, lik, x, y, theirs)  # warm-up: numba kernels loaded
    times = {"exact": [], "diagnose": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        er.fisher(model, lik, x, y, estimator="exact", structure="diag")
        times["exact"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diagnose(model, lik, x, y, theirs)
        times["diagnose"].append(time.perf_counter() - t0)
    exact, diag = (statistics.median(times[k]) for k in ("exact", "diagnose"))
    print(f"784-256-256-10, N = {args.n}, OPENBLAS_NUM_THREADS = {os.environ['OPENBLAS_NUM_THREADS']}, "
          f"NUMBA_NUM_THREADS = {os.environ['NUMBA_NUM_THREADS']}, load average {os.getloadavg()}")
    print(f"exact diag Fisher median {exact:.2f} s ({', '.join(f'{v:.2f}' for v in times['exact'])}); "
          f"diagnose median {diag:.2f} s ({', '.join(f'{v:.2f}' for v in times['diagnose'])}); ratio {diag / exact:.2f}")
    profile = cProfile.Profile()
    profile.enable()
    diagnose(model, lik, x, y, theirs)
    profile.disable()
    stats = pstats.Stats(profile).stats  # {(file, line, name): (calls, primitive, own, cumulative, callers)}
    total = max(entry[3] for entry in stats.values())
    print(f"\n| stage (cProfile, one call: {total:.2f} s) | s | share |\n|---|---|---|")
    for label, suffix, name, kind in STAGES:
        value = sum(entry[3 if kind == "cum" else 2] for (path, _, fn), entry in stats.items()
                    if fn == name and path.replace(os.sep, "/").endswith(suffix))
        print(f"| {label} | {value:.2f} | {value / total:.0%} |")


if __name__ == "__main__":
    main()
