"""A Fisher matrix by map-reduce: the thin adapter a Dask or Ray job would be.

ewc_ref.FisherAccumulator keeps SUMS, so the rows of a data set can be cut into partitions,
each partition reduced on its own worker, and the partial sums merged:

    map     for partition i with rows [lo_i, hi_i):
                acc_i = FisherAccumulator(model, lik, estimator, structure, start=lo_i, ...)
                acc_i.update(x_chunk, y_chunk) for the partition's chunks, in row order
    reduce  acc = acc_0.merge(acc_1).merge(acc_2) ...   (any order)
            F = acc.result()                          (divides by N, or by the number of minibatches)

`start` is the global index of the partition's first row: the ``batched`` estimator needs it
to know which minibatch each row belongs to (a minibatch cut by a partition boundary is
completed when its pieces are merged). For ``mc`` give every partition its own generator,
e.g. ``np.random.SeedSequence(seed).spawn(n_partitions)``: the result then depends on the
partitioning (it is a different, equally valid, Monte Carlo draw), but not on chunk sizes
or on the merge order. The merged result equals the one-shot ``fisher(...)`` to round-off
(tests/test_streaming.py checks 1e-12 relative on Hypothesis-drawn partitions).

This file uses only the standard library (multiprocessing) to stay dependency-free. With Dask
or Ray, replace ``pool.map`` by ``client.map``/``ray.remote`` on the same `reduce_partition`
function and ``functools.reduce(merge, ...)`` on the gathered accumulators. An MLP holds its
activation functions, which do not pickle, so the model travels as its state_dict and
activation name (rebuilt by MLP.from_state_dict on the worker), and an accumulator travels
back without its model (re-attached before merging): sums, counts and NumPy arrays only.

Run::

    python examples/mapreduce_fisher.py --workers 2 --partitions 5 --estimator exact --structure diag
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
from pathlib import Path

import numpy as np

import ewc_ref as er
from ewc_ref.curvature.accumulator import FisherAccumulator
from ewc_ref.verify.gradcheck import relative_error

DIGITS = Path(er.__file__).parent / "data" / "digits.npz"


def partition_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [lo, hi) covering range(n), as equal as possible."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def reduce_partition(task) -> FisherAccumulator:
    """The map step: one accumulator over rows [lo, hi), fed in chunks (runs on a worker)."""
    (state, activation), lik, x, y, lo, hi, options, chunk_size, seed = task
    model = er.MLP.from_state_dict(state, activation)
    rng = None if seed is None else np.random.default_rng(seed)
    acc = FisherAccumulator(model, lik, start=lo, rng=rng, **options)
    for begin in range(lo, hi, chunk_size):
        end = min(begin + chunk_size, hi)
        acc.update(x[begin - lo : end - lo], y[begin - lo : end - lo])
    acc.model = None  # travels back as sums and counts; the caller re-attaches its model
    return acc


def merge(a: FisherAccumulator, b: FisherAccumulator) -> FisherAccumulator:
    """The reduce step (associative and commutative up to round-off)."""
    return a.merge(b)


def mapreduce_fisher(model, lik, x, y, estimator="empirical", structure="diag", samples=None, batch_size=None,
                     partitions=4, workers=2, chunk_size=256, seed=0):
    """fisher(model, lik, x, y, ...) computed by `partitions` accumulators on `workers` processes.

    Validates up front, so bad input fails before any worker starts (each accumulator checks its
    chunks again: FisherAccumulator.update is a public edge); each worker receives only its rows.
    """
    from ewc_ref.model.loss import check_model_data

    x, y = check_model_data(model, lik, x, y)
    options = {"estimator": estimator, "structure": structure, "samples": samples, "batch_size": batch_size}
    bounds = partition_bounds(x.shape[0], partitions)
    seeds = ([int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(bounds))]
             if estimator == "mc" else [None] * len(bounds))
    portable = (model.state_dict(), model.activation.name)
    tasks = [(portable, lik, x[lo:hi], y[lo:hi], lo, hi, options, chunk_size, s) for (lo, hi), s in zip(bounds, seeds, strict=True)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        accumulators = pool.map(reduce_partition, tasks)
    for acc in accumulators:
        acc.model = model
    return functools.reduce(merge, accumulators).result()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Fisher of a 64-32-10 MLP on digits by map-reduce")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=5)
    parser.add_argument("--estimator", default="exact", choices=["empirical", "exact", "pred", "ggn", "batched"])
    parser.add_argument("--structure", default="diag", choices=["diag", "full", "block", "kfac"])
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    data = np.load(DIGITS)
    x, y = data["x"] / 16.0, data["y"].astype(np.intp)
    model, lik = er.MLP.random([64, 32, 10], "tanh", rng=0), er.Categorical()
    batch_size = args.batch_size or (100 if args.estimator == "batched" else None)
    distributed = mapreduce_fisher(model, lik, x, y, args.estimator, args.structure, batch_size=batch_size,
                                   partitions=args.partitions, workers=args.workers)
    one_shot = er.fisher(model, lik, x, y, args.estimator, args.structure, batch_size=batch_size)
    error = relative_error(distributed.diagonal, one_shot.diagonal)
    print(f"{args.estimator}/{args.structure}: {args.partitions} partitions on {args.workers} workers, "
          f"N = {distributed.n}; relative difference to one-shot fisher(): {error:.1e}")
    return 0 if error <= 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
