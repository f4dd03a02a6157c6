"""ewc_ref.distributed: curvature over dask arrays equals er.fisher; the tasks run on a LocalCluster of
2 worker processes (the optional extra 'dask', installed by the README's test command)."""

from __future__ import annotations

import warnings

import dask.array as da  # the 'dask' extra: pip install '.[test,plot,dask]' (never skipped)
import distributed as dask_distributed
import numpy as np
import pytest

import ewc_ref as er
from ewc_ref import distributed

# Sums over the same rows in another order: round-off only (P <= 100 entries, N <= 100 rows).
RTOL = 1e-12


@pytest.fixture(scope="module")
def client():
    """2 worker processes, one thread each: the tasks cross a process boundary (pickling the model)."""
    with dask_distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40) as cluster, dask_distributed.Client(cluster) as client:
        yield client


def case(likelihood="categorical"):
    rng = np.random.default_rng(0)
    model = er.MLP.random([5, 7, 3], "tanh", rng=rng)
    x = rng.standard_normal((103, 5))
    y = {"categorical": rng.integers(0, 3, 103), "gaussian": rng.standard_normal((103, 3))}[likelihood]
    return model, er.get_likelihood(likelihood), x, y


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


ROWS = [("empirical", "diag", {}), ("exact", "full", {}), ("exact", "kfac", {}), ("pred", "block", {}),
        ("hessian", "diag", {}), ("batched", "diag", {"batch_size": 10}), ("batched", "full", {"batch_size": 7})]


@pytest.mark.parametrize(("estimator", "structure", "options"), ROWS)
def test_blocks_on_two_processes_equal_one_process(client, estimator, structure, options):
    """Uneven blocks (17 rows; 103 = 6 x 17 + 1) cut batched minibatches of 10 and 7: pieces meet in the tree."""
    model, lik, x, y = case()
    ours = distributed.fisher(model, lik, da.from_array(x, chunks=(17, 5)), da.from_array(y, chunks=23),
                              estimator, structure, split_every=3, **options)
    reference = er.fisher(model, lik, x, y, estimator, structure, **options)
    assert (ours.estimator, ours.structure, ours.n, ours.batch_size) == (reference.estimator, structure, 103, reference.batch_size)
    assert relative(ours.to_dense(), reference.to_dense()) <= RTOL


def test_a_31_mb_numpy_array_is_sent_once_not_in_the_graph(client):
    """NumPy rows with a client are scattered: no "Sending large graph" warning (warnings are errors
    here), and the result is er.fisher's; mc's per-block seeds are those of the dask-array path."""
    rng = np.random.default_rng(1)
    model = er.MLP.random([1000, 4, 3], "tanh", rng=rng)
    x, y = rng.standard_normal((3900, 1000)), rng.integers(0, 3, 3900)
    assert x.nbytes > 31e6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = distributed.fisher(model, er.Categorical(), x, y, "exact", "diag", chunk_rows=1000)
        mc = distributed.fisher(model, er.Categorical(), x[:50], y[:50], "mc", "diag", seed=3, chunk_rows=20)
    assert relative(ours.diagonal, er.fisher(model, er.Categorical(), x, y, "exact").diagonal) <= RTOL
    blocks = distributed.fisher(model, er.Categorical(), da.from_array(x[:50], chunks=(20, 1000)),
                                da.from_array(y[:50], chunks=20), "mc", "diag", seed=3)
    assert relative(mc.diagonal, blocks.diagonal) <= RTOL


def test_mc_draws_one_child_seed_per_block(client):
    """Block b's labels come from SeedSequence(seed).spawn(B)[b]: equal to one process merging the same accumulators."""
    model, lik, x, y = case("gaussian")
    ours = distributed.fisher(model, lik, x, y, "mc", "diag", samples=3, seed=11, chunk_rows=40)
    children = np.random.SeedSequence(11).spawn(3)
    merged = None
    for child, lo in zip(children, (0, 40, 80), strict=True):
        part = er.FisherAccumulator(model, lik, "mc", "diag", samples=3, rng=np.random.default_rng(child), start=lo)
        part.update(x[lo : lo + 40], y[lo : lo + 40])
        merged = part if merged is None else merged.merge(part)
    assert relative(ours.data, merged.result().data) <= RTOL
    one_block = distributed.fisher(model, lik, x, y, "mc", "diag", samples=3, seed=11)
    alone = er.fisher(model, lik, x, y, "mc", "diag", samples=3, rng=np.random.default_rng(np.random.SeedSequence(11).spawn(1)[0]))
    assert relative(one_block.data, alone.data) <= RTOL
    assert distributed.fisher(model, lik, x, y, "mc", "diag", samples=3, seed=12, chunk_rows=40).data.tolist() != ours.data.tolist()


def test_without_a_client_and_delayed():
    """No client needed (Dask's threads), and compute=False returns the graph."""
    model, lik, x, y = case()
    delayed = distributed.fisher(model, lik, x, y, "exact", "diag", chunk_rows=30, compute=False)
    assert relative(delayed.compute(scheduler="threads").data, er.fisher(model, lik, x, y, "exact", "diag").data) <= RTOL


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"estimator": "magic"}, ValueError, "estimator"),
    ({"estimator": "batched"}, ValueError, "batch_size"),
    ({"estimator": "batched", "batch_size": 104}, ValueError, "batch_size"),
    ({"split_every": 1}, ValueError, "split_every"),
    ({"chunk_rows": 0}, ValueError, "chunk_rows"),
    ({"seed": "1"}, TypeError, "seed"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    model, lik, x, y = case()
    with pytest.raises(error, match=match):
        distributed.fisher(model, lik, x, y, **kwargs)


def test_bad_rows_are_named():
    model, lik, x, y = case()
    with pytest.raises(ValueError, match="x"):
        distributed.fisher(model, lik, x[:, :4], y)
    with pytest.raises(ValueError, match="y"):
        distributed.fisher(model, lik, x, y[:-1])
    bad = y.copy()
    bad[50] = 7
    with pytest.raises(ValueError, match="y"):  # checked by the block's task
        distributed.fisher(model, lik, x, bad, chunk_rows=30)


def test_mapreduce_example_runs_on_the_cluster(client, monkeypatch):
    """examples/mapreduce_fisher.py: batched(100) over 4 blocks of 450 rows (minibatches cut by blocks)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "examples"))
    example = importlib.import_module("mapreduce_fisher")
    ours, error = example.compare(client, "batched", "diag", blocks=4, batch_size=100)
    assert ours.n == 1797 and error <= RTOL


def test_sweep_tasks_equal_the_one_process_sweep(client):
    """Every (method, lambda, seed) row computed on the workers is the row experiments.sweep computes here."""
    from ewc_ref.continual.datasets import load_digits, make_scenario
    from ewc_ref.continual.experiments import run_sequence, sweep

    settings = {"epochs": 1, "hidden": (16,)}
    rows = distributed.sweep(client, "domain", [1.0, 30.0], seeds=(0, 1), n_tasks=2, **settings)
    assert [(r["method"], r["lambda"], r["seed"]) for r in rows][:3] == [("sgd", 0.0, 0), ("sgd", 0.0, 1), ("l2", 1.0, 0)]
    assert len(rows) == 2 + 2 * 2 * 2
    for seed in (0, 1):
        scenario = make_scenario("domain", load_digits(), 2, rng=np.random.default_rng([seed, 2]))
        sgd = run_sequence(scenario, "sgd", seed=seed, **settings)["R"]
        reference = sweep(scenario, [1.0, 30.0], sgd, seed=seed, **settings)
        ours = {(r["method"], r["lambda"]): r for r in rows if r["seed"] == seed}
        assert ours[("sgd", 0.0)]["average_accuracy"] == reference["sgd"]["average_accuracy"]
        for method in ("l2", "ewc"):
            for row in reference[method]:
                mine = ours[(method, row["lambda"])]
                assert {k: mine[k] for k in row} == row


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"scenario": "permuted"}, ValueError, "scenario"),
    ({"lambdas": [-1.0]}, ValueError, "lambdas"),
    ({"methods": ("sgd",)}, ValueError, "methods"),
    ({"n_tasks": 9}, ValueError, "n_tasks"),
])
def test_sweep_arguments_are_checked_before_submitting(kwargs, error, match):
    class NoClient:
        def submit(self, *args, **kwargs):
            raise AssertionError("submitted")

        scatter = submit

    with pytest.raises(error, match=match):
        distributed.sweep(NoClient(), **{"scenario": "task", **kwargs})
    with pytest.raises(TypeError, match="client"):
        distributed.sweep(object(), "task", [1.0])
