"""A Fisher matrix by map-reduce on a Dask cluster: ewc_ref.distributed.fisher.

ewc_ref.FisherAccumulator keeps SUMS, so the rows of a data set can be cut into blocks, each
block reduced by its own task, and the partial sums merged in a tree:

    map     block b with rows [lo_b, hi_b):
                acc_b = FisherAccumulator(model, lik, estimator, structure, start=lo_b, ...)
                acc_b.update(x_b, y_b)
    reduce  acc = merge(acc_0, acc_1, ...) ... (a tree, `split_every` at a time)
            F = acc.result()              (divides by N, or by the number of minibatches)

``ewc_ref.distributed.fisher`` builds that graph from the row blocks of two dask arrays; this
script runs it on a LocalCluster of worker processes (or on a running scheduler, --scheduler
tcp://host:8786) and compares it with the one-process ``er.fisher``. Needs the 'dask' extra::

    pip install '.[dask]'
    python examples/mapreduce_fisher.py --workers 2 --blocks 5 --estimator exact --structure diag
    python examples/mapreduce_fisher.py --scheduler tcp://10.0.0.5:8786 --blocks 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import ewc_ref as er
from ewc_ref import distributed
from ewc_ref.verify.gradcheck import relative_error

DIGITS = Path(er.__file__).parent / "data" / "digits.npz"


def compare(client, estimator: str = "exact", structure: str = "diag", blocks: int = 5,
            batch_size: int | None = None) -> tuple[er.Curvature, float]:
    """(distributed Fisher of a 64-32-10 tanh MLP on the digits, relative difference to er.fisher).

    The dask arrays are built on the client side; their blocks travel to the workers of `client`.
    """
    import dask.array as da

    data = np.load(DIGITS)
    x, y = data["x"] / 16.0, data["y"].astype(np.intp)
    model, lik = er.MLP.random([64, 32, 10], "tanh", rng=0), er.Categorical()
    rows = -(-x.shape[0] // blocks)
    x_blocks, y_blocks = da.from_array(x, chunks=(rows, x.shape[1])), da.from_array(y, chunks=rows)
    ours = distributed.fisher(model, lik, x_blocks, y_blocks, estimator, structure, batch_size=batch_size)
    one_process = er.fisher(model, lik, x, y, estimator, structure, batch_size=batch_size)
    return ours, relative_error(ours.diagonal, one_process.diagonal)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Fisher of a 64-32-10 MLP on the digits by map-reduce on Dask")
    parser.add_argument("--scheduler", default=None, help="address of a running dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    parser.add_argument("--blocks", type=int, default=5, help="row blocks = map tasks")
    parser.add_argument("--estimator", default="exact", choices=["empirical", "exact", "pred", "ggn", "batched", "hessian"])
    parser.add_argument("--structure", default="diag", choices=["diag", "full", "block", "kfac"])
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    batch_size = args.batch_size or (100 if args.estimator == "batched" else None)
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None))
    with client:
        ours, error = compare(client, args.estimator, args.structure, args.blocks, batch_size)
        workers = len(client.scheduler_info()["workers"])
    print(f"{args.estimator}/{args.structure}: {args.blocks} blocks on {workers} workers, N = {ours.n}; "
          f"relative difference to one-process er.fisher(): {error:.1e}")
    return 0 if error <= 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
