"""Issue 28 [M] 8: the memory of ``diagnose`` is flat in N -- a budget on the screen's per-example gradients.

diagnosis.screen_size picks M = min(SCREEN_ENTRIES, P, max(16, budget.SCREEN_BYTES // (28 N))) diagonal
entries; loader.screen_best ranks every B = 2..N in blocks. Each THEIRS here is a plain loop over a
loader's batches of per-example gradients (``support.problems.loader_fisher``).
"""


import numpy as np
import pytest
from support.memory import traced_peak
from support.problems import loader_fisher, make_problem

import ewc_ref as er
from ewc_ref.curvature import budget, label_kernels
from ewc_ref.verify import loader
from ewc_ref.verify.diagnosis import (
    MIN_SCREEN_ENTRIES,
    SCREEN_ENTRIES,
    SCREEN_ROW_BYTES,
    diagnose,
    screen_size,
)

PROBLEM = make_problem("categorical", n=960)  # P = 104
GRADS = er.per_sample_gradients(*PROBLEM)
SETTING = "ewc_ref.curvature.budget.SCREEN_BYTES"


# ------------------------------------------------------------------ the budget's arithmetic
def test_screen_size_is_the_budget_over_28_bytes_per_row_and_entry(monkeypatch):
    assert SCREEN_ROW_BYTES == 28  # three (N, M) float64 arrays and one float32 (diagnosis.SCREEN_ROW_BYTES)
    monkeypatch.setattr(budget, "SCREEN_BYTES", 28 * 100 * 1000)
    assert screen_size(1000, 10**6) == {"entries": 100, "wanted": SCREEN_ENTRIES, "bound_by": SETTING,
                                        "memory_grows": False}
    assert screen_size(2000, 10**6)["entries"] == 50  # doubling N halves M: M is not blind to N
    assert screen_size(1999, 10**6)["entries"] == 50 and screen_size(2001, 10**6)["entries"] == 49  # floor division
    assert screen_size(100, 10**6) == {"entries": SCREEN_ENTRIES, "wanted": SCREEN_ENTRIES, "bound_by": None,
                                       "memory_grows": False}  # within the budget: unchanged
    assert screen_size(1000, 60) == {"entries": 60, "wanted": 60, "bound_by": None, "memory_grows": False}
    # the floor: at most 16 entries would fit, 16 are screened and the memory grows past the budget
    assert screen_size(10**5, 10**6) == {"entries": MIN_SCREEN_ENTRIES, "wanted": SCREEN_ENTRIES, "bound_by": SETTING,
                                         "memory_grows": True}
    assert screen_size(10**5, 10) == {"entries": 10, "wanted": 10, "bound_by": None, "memory_grows": True}


def test_the_default_budget_keeps_every_entry_up_to_ten_thousand_rows():
    """The docs' tables (N = 1,797) and bench_diagnose at N = 10^4 regenerate identical: M = 256 there."""
    assert screen_size(10_000, 269_322)["entries"] == SCREEN_ENTRIES
    assert screen_size(11_000, 269_322)["entries"] < SCREEN_ENTRIES
    assert screen_size(50_000, 269_322)["entries"] == budget.SCREEN_BYTES // (28 * 50_000) == 53


# ------------------------------------------------------------------ the streamed ranking of every B
@pytest.mark.parametrize("block", [1, 7, 4096])
@pytest.mark.parametrize("ordered", [False, True])
def test_screen_best_is_the_best_of_screen_arrays(block, ordered, monkeypatch):
    """Blocks of one B, a few B, all B; rows in file order or permuted: the same best (B, variant), same order."""
    monkeypatch.setattr(loader, "SCREEN_BLOCK", block)
    rng = np.random.default_rng(3)
    g = rng.standard_normal((1500, 6))
    rows = rng.permutation(1500)[:1400] if ordered else None
    t = loader.screen_arrays(g[:50], np.ones(6), [5])[2][0] * (g[:50] ** 2).mean(axis=0)  # any positive THEIRS
    want = loader.screen_arrays(g if rows is None else g[rows], t, range(2, 1401 if ordered else 1501))
    for rank in [(0, 1, 2), (0, 2, 1)]:
        best = np.lexsort((np.asarray(rank)[want[1]], want[0], want[3]))[:5]
        got = loader.screen_best(g, t, range(2, 1401 if ordered else 1501), 5, rows, variant_rank=rank)
        np.testing.assert_array_equal(got[0], want[0][best])  # B
        np.testing.assert_array_equal(got[1], want[1][best])  # variant
        # c and error: the NumPy twin of ordered_fits groups the B it is given into GEMVs, so a block's
        # grouping moves them by an ulp (the numba kernel fits one B at a time: identical)
        np.testing.assert_allclose(got[2], want[2][best], rtol=1e-13)
        np.testing.assert_allclose(got[3], want[3][best], rtol=1e-13)


def test_prefix_in_order_is_the_prefix_of_the_gathered_rows_bit_for_bit():
    """Chunks of 1024 rows carried over: identical to one sequential sum of g[rows] (2500 rows: 3 chunks)."""
    rng = np.random.default_rng(4)
    g = rng.standard_normal((2600, 5)) * 1e3
    rows = rng.permutation(2600)[:2500]
    np.testing.assert_array_equal(loader.prefix_in_order(g, rows), label_kernels.prefix_sums(g[rows]))
    np.testing.assert_array_equal(loader.prefix_in_order(g), label_kernels.prefix_sums(g))


# ------------------------------------------------------------------ verdicts with a bound budget
def _bind(monkeypatch, entries: int, n: int) -> None:
    """A budget that fits exactly `entries` entries of n rows."""
    monkeypatch.setattr(budget, "SCREEN_BYTES", SCREEN_ROW_BYTES * entries * n)


def _says_bound(result, entries: int) -> None:
    obj = result.to_dict()
    assert obj["screen"] == {"entries": entries, "wanted": 104, "bound_by": SETTING, "memory_grows": False}
    assert f"screen      {entries} of 104 diagonal entries" in result.report() and SETTING in result.report()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shuffled_loader_is_still_shuffled_with_b_in_its_band_on_fewer_entries(seed, monkeypatch):
    """N = 960, B = 32 shuffled (as test_diagnose_loader's combinations), screened on 24 of the 104 entries: the
    shuffled test accepts with 32 in its band. Seed 1 is 'shuffled'; seed 0 'cannot tell', a loader at labels
    sampled from the model scoring within the margin (-5.3 against -7.6: this untrained net's observed labels are
    like its samples, and 24 entries tell them apart less than 104)."""
    model, lik, x, y = PROBLEM
    _bind(monkeypatch, 24, len(x))
    order = np.random.default_rng(seed).permutation(len(x))
    theirs, _ = loader_fisher(GRADS, 32, order=order)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    sh = result.shuffled
    assert sh.accepted and sh.batch_size_interval[0] <= 32 <= sh.batch_size_interval[1], sh.reason
    assert result.estimator == ("cannot tell", "shuffled")[seed], result.report()
    if seed == 0:
        assert set(result.statistical_scores) == {"shuffled", "sampled"}
    else:
        assert result.scale_factor == "1"
    assert sh.entries <= 24
    assert result.mc.entries <= 24  # the mc test on the screen's entries too
    _says_bound(result, 24)


@pytest.mark.parametrize("recorded_order", [False, True])
def test_an_ordered_loader_is_still_batched_exactly_on_fewer_entries(recorded_order, monkeypatch):
    """An ordered B = 50 drop_last loader (file order, or a permutation given as the loader's order): found on
    the screen's 24 entries and confirmed on all of them, with its variant."""
    model, lik, x, y = PROBLEM
    _bind(monkeypatch, 24, len(x))
    order = np.random.default_rng(5).permutation(len(x)) if recorded_order else None
    theirs, _ = loader_fisher(GRADS, 50, order=order, drop_last=True)
    result = diagnose(model, lik, x, y, theirs, hessian=False, order=order)
    assert (result.estimator, result.batch_size, result.variant) == ("batched", 50, "dropped"), result.report()
    assert result.rel_error <= 1e-10
    _says_bound(result, 24)


def test_the_closest_b_of_a_none_is_measured_on_the_budgets_entries(monkeypatch):
    """No B fits a Fisher at other weights: the closest B is listed with its error on the 24 screened entries."""
    model, lik, x, y = PROBLEM
    _bind(monkeypatch, 24, len(x))
    other = model.with_theta(model.theta + 0.3 * np.random.default_rng(2).standard_normal(model.n_params))
    theirs, _ = loader_fisher(er.per_sample_gradients(other, lik, x, y), 50)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    closest = next(c for c in result.candidates if c.entries is not None)
    assert closest.entries == 24 and "(on 24 screened entries)" in result.report()


def test_within_the_budget_nothing_is_said():
    model, lik, x, y = PROBLEM
    theirs, _ = loader_fisher(GRADS, 32)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    assert result.to_dict()["screen"] == {"entries": 104, "wanted": 104, "bound_by": None, "memory_grows": False}
    assert "\nscreen " not in result.report()


# ------------------------------------------------------------------ the memory itself (a bound, not a timing)
def _peak(n: int) -> int:
    """tracemalloc peak of diagnose on a shuffled B = 48 loader of n rows (20-64-64-10, P = 6154)."""
    rng = np.random.default_rng(0)
    model = er.MLP.random([20, 64, 64, 10], "relu", rng=rng)
    lik, x, y = er.get_likelihood("categorical"), rng.standard_normal((n, 20)), rng.integers(0, 10, n)
    theirs, _ = loader_fisher(er.per_sample_gradients(model, lik, x, y), 48, order=rng.permutation(n))
    diagnose(model, lik, x[:200], y[:200], theirs, hessian=False)  # imports and compiled kernels loaded first
    with traced_peak() as traced:
        diagnose(model, lik, x, y, theirs, hessian=False)
    return traced.peak


def test_the_peak_memory_does_not_grow_with_n_under_the_budget(monkeypatch):
    """4 MiB of screen: 74 entries at N = 2000, 18 at 8000. Without the budget the 6000 more rows would hold
    28 x 256 x 6000 bytes = 41 MiB more (the (N, M) arrays); with it the growth is the few bytes per row
    outside the budget (labels, the shuffled test's tables over B = 1..N): bounded here by 8 MiB."""
    monkeypatch.setattr(budget, "SCREEN_BYTES", 4 * 2**20)
    monkeypatch.setattr(budget, "CHUNK_BYTES", 2**20)  # the one pass's chunks: small beside the screen
    assert screen_size(2000, 6154)["entries"] == 74 and screen_size(8000, 6154)["entries"] == 18
    small, large = _peak(2000), _peak(8000)
    assert large - small < 8 * 2**20, (small / 2**20, large / 2**20)
