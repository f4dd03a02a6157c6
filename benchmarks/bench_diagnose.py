"""Benchmark ``diagnose`` against one exact diagonal Fisher on the same model and data (issue 14, goal 8).

784-256-256-10 ReLU MLP, categorical, N = 10,000 random rows, float64, 2 threads. THEIRS is the
Fisher of a SHUFFLED loader with B = 48 (minibatch-mean gradients of a seeded permutation of the
rows, squared and averaged), so no deterministic candidate fits and diagnose runs every stage:
the deterministic candidates, the screen of every B = 2..N and its closest confirmation, the mc
test and the shuffled test (the worst case; a THEIRS that fits deterministically skips the last two). The two are timed side by side in one process,
alternating, for --rounds rounds; the ratio of medians is the figure of the goal (<= 5).
--memory also reports the tracemalloc peak of diagnose at N/4 and N (after the timed rounds: imports and
compiled kernels loaded). It is flat in N: the per-example gradients held on the screen's M entries, three
(N, M) float64 arrays and one float32 at most, are bounded by budget.SCREEN_BYTES (M = 256 up to N = 10,533,
53 at 50,000; diagnosis.screen_size), the ranking of every B is streamed in blocks, and nothing of size N x P
is held (BENCHMARKS.md: 117 MiB at N = 10,000 and 12,500, 109 MiB at 50,000; before the budget 333 MiB at
50,000).

Run (the OpenBLAS variables unset, as the goal's measurement asks)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_diagnose.py --rounds 3 --memory
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_diagnose.py --n 50000 --rounds 3

(issue 28 asks the ratio at N = 10,000 and N = 50,000; BENCHMARKS.md.)
"""

from __future__ import annotations

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "2")  # before numpy is imported

import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

import ewc_ref as er  # noqa: E402
from ewc_ref.curvature.batched import batched_fisher_gemm  # noqa: E402
from ewc_ref.verify.diagnosis import diagnose  # noqa: E402


def problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = er.MLP.random([784, 256, 256, 10], "relu", rng=rng)
    lik = er.get_likelihood("categorical")
    x = rng.standard_normal((n, 784))
    y = rng.integers(0, 10, n)
    return model, lik, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also the tracemalloc peak of diagnose at N/4 and N")
    args = parser.parse_args()
    model, lik, x, y = problem(args.n)
    order = np.random.default_rng(1).permutation(args.n)
    theirs = batched_fisher_gemm(model, lik, x[order], y[order], 48)
    times = {"exact diag Fisher": [], "diagnose": []}
    verdict = None
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        er.fisher(model, lik, x, y, estimator="exact", structure="diag")
        times["exact diag Fisher"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        verdict = diagnose(model, lik, x, y, theirs)
        times["diagnose"].append(time.perf_counter() - t0)
    print(f"784-256-256-10, N = {args.n}, P = {model.n_params}, float64; load average {os.getloadavg()}")
    for name, values in times.items():
        print(f"{name:<20} median {statistics.median(values):7.2f} s   rounds {', '.join(f'{v:.2f}' for v in values)}")
    ratio = statistics.median(times["diagnose"]) / statistics.median(times["exact diag Fisher"])
    print(f"ratio diagnose / exact diag Fisher: {ratio:.2f} (goal <= 5)")
    print(f"verdict: {verdict.estimator}, B = {verdict.batch_size}, scale {verdict.scale:.12g}, "
          f"relative error {verdict.rel_error:.3g}; shuffled test: {verdict.shuffled and verdict.shuffled.reason}")
    if args.memory:
        for n in (args.n // 4, args.n):
            m, lk, xx, yy = problem(n)
            order = np.random.default_rng(1).permutation(n)
            t = batched_fisher_gemm(m, lk, xx[order], yy[order], 48)
            tracemalloc.start()
            diagnose(m, lk, xx, yy, t)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"tracemalloc peak of diagnose at N = {n}: {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
