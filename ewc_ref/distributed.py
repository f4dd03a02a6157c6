"""Scale-out on Dask: any curvature over dask arrays, and the demo's lambda x seed sweep as tasks.

Needs the optional extra: ``pip install 'ewc_ref[dask]'`` (dask[array,distributed]).

Curvature (``fisher``): the rows of x and y are the blocks of a dask array. Every block becomes
one task that feeds a ``FisherAccumulator`` (the running SUMS of ewc_ref.curvature.accumulator)
and the accumulators are tree-reduced with ``merge``, ``split_every`` at a time::

    block b, rows [lo_b, hi_b)   acc_b = FisherAccumulator(model, lik, ..., start=lo_b).update(x_b, y_b)
    reduce (a tree)              acc = acc_0.merge(acc_1) ... ;  F = acc.result()

The sums are those of one process, so every estimator and structure is the one ``er.fisher``
computes, to floating-point summation order (tests/curvature/test_distributed.py: 1e-12 relative):

* batched(B): minibatches are runs of B rows in GLOBAL row order (``start`` = lo_b); a minibatch
  cut by a block boundary is completed when the two pieces meet in the reduction, and the last
  partial minibatch counts as one batch, exactly as in one process.
* mc(S): block b draws its labels from ``numpy.random.default_rng(SeedSequence(seed).spawn(B)[b])``
  (B = number of blocks). The estimator is the same mc(S); the draws are another Monte Carlo
  sample than ``er.fisher(..., rng=seed)``'s single stream, but they depend only on (seed,
  blocking), never on the workers, the scheduling or the merge order.

Where the work runs is Dask's choice: with no ``dask.distributed.Client`` the threads of this
process; with a client (``Client()`` for a local cluster of processes, ``Client("tcp://host:8786")``
for a real one, see README "Scale-out") on its workers. An MLP pickles as its state_dict and
activation name (``MLP.__reduce__``), so the model travels to workers as a few arrays.

NumPy x and y with a Client are scattered to the workers once per call (``_fisher_scattered``), so the
graph holds futures, not the data. Dask pays when the rows do not fit in one process or already live
on the workers; on one 2-core machine one process is as fast or faster (benchmarks/bench_dask.py).

The sweep (``sweep``): every (method, lambda, seed) run of
``ewc_ref.continual.experiments.run_sequence`` is one task submitted to a client.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_choice, check_positive_int, finite_or_refused
from .curvature.accumulator import FisherAccumulator, check_estimator_options
from .curvature.result import Curvature
from .model.likelihoods import Likelihood
from .model.mlp import MLP


def _import_dask():
    try:
        import dask
        import dask.array as da
    except ImportError as error:  # the optional extra
        raise ImportError("ewc_ref.distributed needs Dask: pip install 'ewc_ref[dask]'") from error
    return dask, da


def _block_sums(model: MLP, lik: Likelihood, x_block, y_block, start: int, estimator: str, structure: str,
                samples, batch_size, seed) -> FisherAccumulator:
    """The map step (one task): an accumulator over one block of rows, rows [start, start + len(x_block))."""
    rng = None if seed is None else np.random.default_rng(seed)
    accumulator = FisherAccumulator(model, lik, estimator, structure, samples, batch_size, rng, start=start)
    return accumulator.update(np.asarray(x_block), np.asarray(y_block))


def _merge(*accumulators: FisherAccumulator) -> FisherAccumulator:
    """One node of the reduction tree: the first accumulator with the others' sums added."""
    first = accumulators[0]
    for other in accumulators[1:]:
        first.merge(other)
    return first


def _as_row_blocks(da, array, name: str, chunk_rows):
    """`array` as a dask array blocked along rows only (every other axis one block)."""
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        array = da.from_array(array, chunks=(chunk_rows or max(1, array.shape[0]),) + array.shape[1:])
    if array.ndim not in (1, 2):
        raise ValueError(f"{name}: expected a 1-d or 2-d array, got shape {array.shape}")
    if array.ndim == 2 and len(array.chunks[1]) > 1:
        array = array.rechunk({1: -1})
    if any(np.isnan(c) for c in array.chunks[0]):
        raise ValueError(f"{name}: unknown block sizes (NaN chunks); call .compute_chunk_sizes() first")
    return array


@finite_or_refused
def fisher(model: MLP, lik: Likelihood, x, y, estimator: str = "empirical", structure: str = "diag",
           samples: int | None = None, batch_size: int | None = None, seed: int | None = None,
           chunk_rows: int | None = None, split_every: int = 4, compute: bool = True):
    """``er.fisher`` over the row blocks of dask arrays, one task per block, tree-reduced.

    Parameters
    ----------
    model, lik : the network and its likelihood
    x : (N, d_in) dask or NumPy array; y : (N,) or (N, C) labels, blocked like x (rechunked to
        x's row blocks when they differ)
    estimator, structure, samples, batch_size : as ``er.fisher``
    seed : int seed of the 'mc' labels (module docstring: one child SeedSequence per block)
    chunk_rows : rows per block when x is a NumPy array (default: one block); with a dask.distributed
        Client (and compute=True) those blocks are scattered to the workers once, never put in the graph
    split_every : accumulators merged per node of the reduction tree (>= 2)
    compute : False returns the dask Delayed of the Curvature instead of computing it

    Returns
    -------
    Curvature (or its Delayed), equal to ``er.fisher`` up to summation order (mc: module docstring)

    Raises
    ------
    ImportError without Dask; ValueError / TypeError naming the argument (as ``er.fisher``, and
    every block's rows are checked by its task).
    """
    dask, da = _import_dask()
    estimator, structure, samples, batch_size = check_estimator_options(estimator, structure, samples, batch_size)
    FisherAccumulator(model, lik, estimator, structure, samples, batch_size)  # model, lik, budget: checked here, once
    if chunk_rows is not None:
        check_positive_int(chunk_rows, "chunk_rows")
    split_every = check_positive_int(split_every, "split_every")
    if split_every < 2:
        raise ValueError(f"split_every: expected an integer >= 2, got {split_every}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise TypeError(f"seed: expected an integer or None, got {type(seed).__name__}")
    # NumPy rows computed now on a cluster: send the blocks once, not inside the graph (_fisher_scattered).
    # A graph returned (compute=False) holds the data itself, so any scheduler can run it.
    client = _active_client() if compute else None
    scatter = client is not None and not isinstance(x, da.Array) and not isinstance(y, da.Array)
    if scatter:
        x, y = np.asarray(x), np.asarray(y)
    else:
        x, y = _as_row_blocks(da, x, "x", chunk_rows), _as_row_blocks(da, y, "y", chunk_rows)
    if x.ndim != 2 or x.shape[1] != model.n_inputs:
        raise ValueError(f"x: expected shape (N, {model.n_inputs}) to match the model, got {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected {x.shape[0]} rows like x (a 1-d or 2-d array), got shape {y.shape}")
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size", upper=x.shape[0])
    if scatter:
        return _fisher_scattered(dask, client, model, lik, x, y, estimator, structure, samples, batch_size, seed,
                                 chunk_rows, split_every, compute)
    if y.chunks[0] != x.chunks[0]:
        y = y.rechunk({0: x.chunks[0]})
    starts = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).astype(int)
    return _reduce(dask, model, lik, x.to_delayed().ravel(), y.to_delayed().ravel(), starts, estimator, structure,
                   samples, batch_size, seed, split_every, compute)


def _reduce(dask, model, lik, x_blocks, y_blocks, starts, estimator, structure, samples, batch_size, seed,
            split_every, compute):
    """The map (one _block_sums task per block) and the merge tree; x_blocks are Delayed or Futures."""
    n_blocks = len(starts)
    seeds = [None] * n_blocks
    if "rng" in _estimator_options(estimator):
        seeds = np.random.SeedSequence(seed).spawn(n_blocks)
    block_sums = dask.delayed(_block_sums, pure=True)
    level = [block_sums(model, lik, xb, yb, int(start), estimator, structure, samples, batch_size, s)
             for xb, yb, start, s in zip(x_blocks, y_blocks, starts, seeds, strict=True)]
    merge = dask.delayed(_merge, pure=True)
    while len(level) > 1:
        level = [merge(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    result = dask.delayed(FisherAccumulator.result, pure=True)(level[0])
    return result.compute() if compute else result


def _active_client():
    """The dask.distributed Client computations go to, or None (then this process's threads run them)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client: the threaded scheduler shares memory, nothing is sent
        return None


def _fisher_scattered(dask, client, model, lik, x, y, estimator, structure, samples, batch_size, seed, chunk_rows,
                      split_every, compute):
    """NumPy x, y with a Client: the row blocks go to the workers once (client.scatter), and the graph
    holds their futures, not the data (a 31 MB x in the graph makes distributed warn "Sending large
    graph" and re-sends it with every graph). The model, a few arrays, is broadcast once likewise."""
    rows = chunk_rows or max(1, x.shape[0])
    starts = np.arange(0, x.shape[0], rows)
    # hash=False: fresh keys per call. With content-hashed keys two calls on equal blocks share a key,
    # and the first call releasing its futures cancels the second's tasks ("lost dependencies").
    x_blocks = client.scatter([x[lo:lo + rows] for lo in starts], hash=False)
    y_blocks = client.scatter([y[lo:lo + rows] for lo in starts], hash=False)
    shared_model = client.scatter(model, broadcast=True, hash=False)
    return _reduce(dask, shared_model, lik, x_blocks, y_blocks, starts, estimator, structure, samples, batch_size,
                   seed, split_every, compute)


# ----------------------------------------------------------------------------- the sweep
SUMMARY_KEYS = ("average_accuracy", "forgetting", "backward_transfer", "plasticity")


def _sweep_task(name: str, data, n_tasks: int, method: str, lam: float, seed: int, settings: dict) -> dict:
    """One run (a task on a worker): the scenario of `seed` rebuilt as ``run_scenario`` builds it, one method."""
    from .continual.datasets import make_scenario
    from .continual.experiments import run_sequence
    from .continual.metrics import summarize
    from .continual.training import TrainingDiverged

    scenario = make_scenario(name, data, n_tasks, rng=np.random.default_rng([seed, 2]))
    row = {"scenario": name, "method": method, "lambda": float(lam), "seed": int(seed)}
    try:
        R = run_sequence(scenario, method, lam=lam, seed=seed, **settings)["R"]
    except TrainingDiverged:
        return {**row, "diverged": True, **dict.fromkeys(SUMMARY_KEYS)}
    return {**row, "diverged": False, **summarize(R)}


def sweep(client, scenario: str = "domain", lambdas=None, seeds=(0,), *, methods=("l2", "ewc"),
          n_tasks: int = 5, data=None, **settings) -> list[dict]:
    """The demo's lambda x seed sweep, one task per (method, lambda, seed), on a dask.distributed Client.

    Parameters
    ----------
    client : dask.distributed.Client (``Client()`` local processes, ``Client("tcp://host:8786")`` a cluster)
    scenario : 'task', 'domain' or 'class'
    lambdas : the lambda grid (default ``experiments.SWEEP_GRID``, the demo's)
    seeds : experiment seeds (``experiments`` module docstring: a run is bit-identical per seed)
    methods : any of 'l2', 'ewc'; 'sgd' (lambda 0) is added once per seed
    n_tasks : number of tasks; data : (x_train, y_train, x_test, y_test), default the shipped digits
    **settings : ``run_sequence`` keyword arguments (epochs, hidden, lr, estimator, ...)

    Returns
    -------
    list of rows {scenario, method, lambda, seed, diverged, average_accuracy, forgetting,
    backward_transfer, plasticity}, in submission order (sgd first per seed); each row equals the one
    ``experiments.sweep`` computes in one process for the same seed.

    Raises
    ------
    ValueError / TypeError naming the argument, before any task is submitted.
    """
    from .continual.datasets import SCENARIOS, check_n_tasks, load_digits
    from .continual.experiments import METHODS, SWEEP_GRID

    check_choice(scenario, "scenario", SCENARIOS)
    try:
        check_n_tasks(scenario, n_tasks)
    except (TypeError, ValueError) as error:  # it names the demo's flag 'tasks'; here the argument is n_tasks
        raise type(error)(f"n_tasks{str(error).removeprefix('tasks')}") from None
    lambdas = [float(lam) for lam in (SWEEP_GRID if lambdas is None else lambdas)]
    if not lambdas or any(not np.isfinite(lam) or lam < 0 for lam in lambdas):
        raise ValueError(f"lambdas: expected finite numbers >= 0, got {lambdas}")
    seeds = [int(seed) for seed in seeds]
    for method in methods:
        check_choice(method, "methods", [m for m in METHODS if m != "sgd"])
    if not hasattr(client, "submit") or not hasattr(client, "scatter"):
        raise TypeError(f"client: expected a dask.distributed.Client, got {type(client).__name__}")
    shared = client.scatter(load_digits() if data is None else data, broadcast=True)
    runs = [(seed, "sgd", 0.0) for seed in seeds]
    runs += [(seed, method, lam) for seed in seeds for method in methods for lam in lambdas]
    futures = [client.submit(_sweep_task, scenario, shared, n_tasks, method, lam, seed, settings, pure=False)
               for seed, method, lam in runs]
    return client.gather(futures)


def _estimator_options(estimator: str):
    from .curvature.estimators import ESTIMATOR_TABLE

    return ESTIMATOR_TABLE[estimator].options


__all__ = ["Curvature", "fisher", "sweep"]
