"""Streaming: any partition of the rows into chunks and accumulators gives the one-shot result.

FisherAccumulator keeps SUMS, so splitting the N rows into accumulators (each fed its rows in
chunks, with ``start`` = its first global row) and merging them in any order changes only the
floating-point summation order. Tolerance: 1e-12 normwise relative error (observed ~1e-16;
a sum of m terms in another order differs by at most ~m u |terms|, m <= 30 here, and the
second moments are sums of non-negative diagonals, so no cancellation inflates it).

``mc`` draws labels from the accumulator's generator example by example: one accumulator fed
in row order is chunk-invariant; merged accumulators with one generator per partition equal
the count-weighted mean of the per-partition one-shot estimates with those same generators.

Memory: the accumulator's tracemalloc peak must not grow with the number of chunks (the
benchmark, benchmarks/BENCHMARKS.md, measures the same through fisher() for N = 1,000 vs 10,000).
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.memory import traced_peak

import ewc_ref as er
from ewc_ref.curvature.accumulator import FisherAccumulator
from ewc_ref.curvature.estimators import ESTIMATORS, OUTER_PRODUCT_ESTIMATORS
from ewc_ref.curvature.structures import STRUCTURES
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-12
# Every estimator x structure the code accepts, by explicit parametrize (pytest names the case);
# mc and batched have their own tests below (per-generator draws; minibatches across cuts).
ACCEPTED = [(e, s) for e in ESTIMATORS for s in STRUCTURES if s != "kfac" or e in OUTER_PRODUCT_ESTIMATORS]
DETERMINISTIC = [(e, s) for e, s in ACCEPTED if e not in ("mc", "batched")]
BATCHED = [s for e, s in ACCEPTED if e == "batched"]
MC = [s for e, s in ACCEPTED if e == "mc"]
# Few examples per parametrized case; the thorough profile draws proportionally more.
PER_CASE = settings(max_examples=max(8, settings.default.max_examples // 4))


def assert_same(a, b, rtol=RTOL):
    if isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y, rtol)
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative_error(a, b) <= rtol


@st.composite
def partitions(draw, n, max_parts=4):
    """Cut points splitting range(n) into 1..max_parts consecutive partitions, each cut into
    chunks of a drawn size, and a merge order."""
    cuts = sorted(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=max_parts - 1, unique=True))) if n > 1 else []
    bounds = [0, *cuts, n]
    parts = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    chunks = [draw(st.integers(1, max(1, hi - lo))) for lo, hi in parts]
    order = draw(st.permutations(range(len(parts))))
    return parts, chunks, order


def streamed(model, lik, x, y, estimator, structure, parts, chunks, order, rngs=None, **kw):
    """One accumulator per partition (start = its first row), chunked updates, merged in `order`."""
    accumulators = []
    for i, ((lo, hi), chunk) in enumerate(zip(parts, chunks, strict=True)):
        acc = FisherAccumulator(model, lik, estimator, structure, start=lo, rng=None if rngs is None else rngs[i], **kw)
        for begin in range(lo, hi, chunk):
            acc.update(x[begin : min(begin + chunk, hi)], y[begin : min(begin + chunk, hi)])
        accumulators.append(acc)
    merged = accumulators[order[0]]
    for i in order[1:]:
        merged.merge(accumulators[i])
    return merged.result()


def test_every_accepted_estimator_and_structure_is_streamed_here():
    assert {(e, s) for e, s in DETERMINISTIC} | {("batched", s) for s in BATCHED} | {("mc", s) for s in MC} == set(ACCEPTED)
    assert ("hessian", "full") in DETERMINISTIC and ("hessian", "block") in DETERMINISTIC


@pytest.mark.parametrize(("estimator", "structure"), DETERMINISTIC)
@PER_CASE
@given(case=models_and_data(n=st.integers(1, 14), max_width=6), data=st.data())
def test_merged_partitions_equal_the_one_shot_result(estimator, structure, case, data):
    model, lik, x, y = case
    n = x.shape[0]
    parts, chunks, order = data.draw(partitions(n))
    one_shot = er.fisher(model, lik, x, y, estimator, structure, chunk_size=n)
    merged = streamed(model, lik, x, y, estimator, structure, parts, chunks, order)
    assert merged.n == one_shot.n == n
    assert_same(merged.data, one_shot.data)


@pytest.mark.parametrize("structure", BATCHED)
@PER_CASE
@given(case=models_and_data(n=st.integers(1, 14), max_width=6), data=st.data())
def test_batched_minibatches_split_across_chunks_and_accumulators(structure, case, data):
    model, lik, x, y = case
    n = x.shape[0]
    batch_size = data.draw(st.integers(1, n), label="batch_size")
    parts, chunks, order = data.draw(partitions(n))
    one_shot = er.fisher(model, lik, x, y, "batched", structure, batch_size=batch_size, chunk_size=n)
    merged = streamed(model, lik, x, y, "batched", structure, parts, chunks, order, batch_size=batch_size)
    assert merged.batch_size == batch_size
    assert_same(merged.data, one_shot.data)


@pytest.mark.parametrize("structure", MC)
@PER_CASE
@given(case=models_and_data(n=st.integers(1, 14), max_width=6), samples=st.integers(1, 3), chunk=st.integers(1, 14),
       seed=st.integers(0, 2**32 - 1))
def test_mc_with_one_accumulator_is_chunk_invariant(structure, case, samples, chunk, seed):
    model, lik, x, y = case
    one_shot = er.fisher(model, lik, x, y, "mc", structure, samples=samples, rng=seed, chunk_size=x.shape[0])
    chunked = er.fisher(model, lik, x, y, "mc", structure, samples=samples, rng=seed, chunk_size=chunk)
    assert_same(chunked.data, one_shot.data)


@pytest.mark.parametrize("structure", MC)
@PER_CASE
@given(case=models_and_data(n=st.integers(1, 14), max_width=6), samples=st.integers(1, 3), data=st.data())
def test_mc_merge_with_one_generator_per_partition(structure, case, samples, data):
    model, lik, x, y = case
    n = x.shape[0]
    parts, chunks, order = data.draw(partitions(n))
    seeds = [data.draw(st.integers(0, 2**32 - 1)) for _ in parts]
    merged = streamed(model, lik, x, y, "mc", structure, parts, chunks, order,
                      rngs=[np.random.default_rng(s) for s in seeds], samples=samples)
    # The same draws, partition by partition, in one chunk each: F = sum_i n_i F_i / N.
    pieces = [er.fisher(model, lik, x[lo:hi], y[lo:hi], "mc", structure, samples=samples, rng=s, chunk_size=hi - lo)
              for (lo, hi), s in zip(parts, seeds, strict=True)]
    weights = [(hi - lo) / n for lo, hi in parts]

    def weighted(items):
        first = items[0]
        if isinstance(first, list):
            return [weighted([item[j] for item in items]) for j in range(len(first))]
        if isinstance(first, tuple):
            # kfac: factors are separately means over N, so each factor is the weighted mean
            return tuple(weighted([item[j] for item in items]) for j in range(len(first)))
        return sum(w * item for w, item in zip(weights, items, strict=True))

    assert_same(merged.data, weighted([p.data for p in pieces]))


def test_accumulators_refuse_to_merge_different_estimators():
    model = er.MLP.random([3, 2], rng=0)
    a = FisherAccumulator(model, er.Categorical(), "empirical", "diag")
    b = FisherAccumulator(model, er.Categorical(), "exact", "diag")
    with pytest.raises(ValueError, match="other"):
        a.merge(b)


# --------------------------------------------------------------------------- memory
def accumulator_peak(model, lik, x, y, estimator, structure, chunk):
    acc = FisherAccumulator(model, lik, estimator, structure)
    acc.update(x[:chunk], y[:chunk])  # warm-up: first-call allocations are not streaming memory
    acc = FisherAccumulator(model, lik, estimator, structure)
    with traced_peak() as traced:
        for begin in range(0, x.shape[0], chunk):
            acc.update(x[begin : begin + chunk], y[begin : begin + chunk])
        result = acc.result()
    return traced.peak, result


@pytest.mark.parametrize("estimator, structure", [("empirical", "diag"), ("exact", "diag"), ("empirical", "full"),
                                                  ("exact", "kfac")])
def test_streaming_peak_memory_does_not_grow_with_the_number_of_rows(estimator, structure):
    """Peak for 40 chunks within 10% (+ 64 KiB of interpreter noise) of the peak for 4 chunks.

    A structural bound, not a timing: an implementation that kept anything per row (a list of
    per-example gradients, a concatenation of chunks) would grow 10x here.
    """
    model = er.MLP.random([12, 16, 5], rng=0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4000, 12)), rng.integers(0, 5, 4000)
    small, _ = accumulator_peak(model, er.Categorical(), x[:400], y[:400], estimator, structure, 100)
    large, _ = accumulator_peak(model, er.Categorical(), x, y, estimator, structure, 100)
    assert large <= 1.1 * small + 64 * 1024, (small, large)


# --------------------------------------------------------------------------- the public edge
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "batched"}, "^batch_size: required for estimator='batched'"),
        ({"estimator": "mc", "samples": 0}, "^samples: expected an integer >= 1"),
        ({"estimator": "exact", "samples": 2}, "^samples: only used by estimator='mc'"),
        ({"estimator": "exact", "batch_size": 2}, "^batch_size: only used by estimator='batched'"),
        ({"estimator": "hessian", "structure": "kfac"}, "^structure: 'kfac' is defined for per-example outer products"),
        ({"estimator": "fisher"}, "^estimator: expected one of"),
        ({"start": -1}, "^start: expected an integer >= 0"),
    ],
)
def test_accumulator_validates_its_arguments(kwargs, message):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    with pytest.raises(ValueError, match=message):
        FisherAccumulator(model, er.Categorical(), **kwargs)


def test_accumulator_validates_every_chunk_and_its_partner():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    acc = FisherAccumulator(model, er.Categorical(), "empirical", "diag")
    acc.update(np.ones((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="^y_chunk: categorical labels must lie in 0..1"):
        acc.update(np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="^x_chunk: expected 3 features per row"):
        acc.update(np.ones((2, 4)), np.array([0, 1]))
    with pytest.raises(TypeError, match="^model: expected an ewc_ref.MLP"):
        FisherAccumulator("model.npz", er.Categorical())
    with pytest.raises(TypeError, match="^other: expected a FisherAccumulator"):
        acc.merge(acc.total)
    assert acc.count == 2  # the refused chunks added nothing


@pytest.mark.parametrize("structure", ["full", "block"])
def test_full_result_is_handed_over_in_place_and_taken_back_on_the_next_update(structure):
    """result() divides the P x P sums in place and gives them to the Curvature (no second matrix);
    updating afterwards must neither change that Curvature nor lose the sums."""
    rng = np.random.default_rng(3)
    model, lik = er.MLP.random([6, 5, 3], rng=0), er.Categorical()
    x, y = rng.standard_normal((50, 6)), rng.integers(0, 3, 50)
    acc = FisherAccumulator(model, lik, "empirical", structure)
    acc.update(x[:20], y[:20])
    first = acc.result()
    first_dense = first.to_dense().copy()
    acc.update(x[20:], y[20:])
    second = acc.result()
    np.testing.assert_array_equal(first.to_dense(), first_dense)
    one_shot = er.fisher(model, lik, x, y, "empirical", structure)
    np.testing.assert_allclose(second.to_dense(), one_shot.to_dense(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(first_dense, er.fisher(model, lik, x[:20], y[:20], "empirical", structure).to_dense(),
                               rtol=1e-12, atol=1e-15)
    assert np.array_equal(second.to_dense(), second.to_dense().T)



@given(st.integers(1, 10**6), st.integers(1, 10**5))
def test_balanced_chunks_are_as_few_as_the_budget_allows_and_nearly_equal(n, rows):
    from ewc_ref.curvature.estimate import balanced_chunk_size

    chunk = balanced_chunk_size(n, rows)
    chunks = -(-n // rows)  # the fewest chunks of at most `rows` rows
    assert 1 <= chunk <= rows
    assert -(-n // chunk) == chunks  # no extra chunk
    tail = n - (chunks - 1) * chunk
    assert chunk - chunks < tail <= chunk  # the last chunk is short by fewer rows than there are chunks
