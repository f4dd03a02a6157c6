"""When does Dask pay? ewc_ref.distributed.fisher on a LocalCluster vs er.fisher in one process.

    python benchmarks/bench_dask.py [--rows 10000] [--workers 2]

Exact diagonal Fisher of a 784-256-256-10 tanh MLP on N random rows (float64), best of 3 runs each:
one process (er.fisher), and `workers` worker processes of one thread each with the rows as NumPy
(scattered to the workers once per call, ewc_ref.distributed) in blocks of N / (2 workers), and with
the rows already on the workers (a persisted dask array made there). The cluster's start-up is
reported apart. Prints one line per configuration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ewc_ref as er
from ewc_ref import distributed


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import distributed as dd

    rng = np.random.default_rng(0)
    model = er.MLP.random([784, 256, 256, 10], "tanh", rng=rng)
    lik = er.Categorical()
    x, y = rng.standard_normal((args.rows, 784)), rng.integers(0, 10, args.rows)
    one = best_of(lambda: er.fisher(model, lik, x, y, "exact", "diag"))
    print(f"one process: {one:.2f} s (N = {args.rows}, x {x.nbytes / 1e6:.0f} MB)")
    start = time.perf_counter()
    with dd.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40) as cluster, dd.Client(cluster):
        print(f"cluster start: {time.perf_counter() - start:.2f} s ({args.workers} workers x 1 thread)")
        rows = -(-args.rows // (2 * args.workers))
        many = best_of(lambda: distributed.fisher(model, lik, x, y, "exact", "diag", chunk_rows=rows))
        print(f"dask, {args.workers} workers, NumPy rows: {many:.2f} s ({2 * args.workers} blocks of {rows} rows, "
              "scattered per call)")
        import dask.array as da

        state = da.random.RandomState(0)
        x_d = state.standard_normal((args.rows, 784), chunks=(rows, 784)).persist()  # made on the workers
        y_d = state.randint(0, 10, args.rows, chunks=rows).persist()
        resident = best_of(lambda: distributed.fisher(model, lik, x_d, y_d, "exact", "diag"))
        print(f"dask, {args.workers} workers, rows already on the workers: {resident:.2f} s")


if __name__ == "__main__":
    main()
