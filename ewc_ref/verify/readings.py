"""The loader families a shuffled-loader Fisher is read as: per-batch loss x aggregation over batches.

A training loop's Fisher over a shuffled loader (docs/shuffled-loader-fisher.md, "A short last batch")

    F = c_agg sum_k rho_k gbar_k gbar_k^T / K,   gbar_k = 1/s_k sum_{n in b_k} g_n,

has per-batch weights rho_k = 1 (the batch's loss a MEAN) or s_k^2 (a SUM) and an aggregation
c_agg = 1 (F /= K, "averaged"), K (no division, "summed") or K/N (F /= N, "over N"). Its expectation
is E[F] = coef_m m m^T + coef_S Sigma with

    coef_m(B) = c_agg w_m,  coef_S(B) = c_agg w_S,  w_m = 1/K sum_k rho_k,  w_S = 1/K sum_k rho_k alpha(s_k)   (L1)

for the batch sizes s_k of B over N rows (K - 1 of B and a short last one kept, or K of B with
drop_last) and alpha(s) = (N - s) / (s (N - 1)) ((U1) of shuffled.py). Each (per-batch loss,
aggregation) is a FAMILY; ``shuffled.judge_shuffled`` reads the fitted weights (a, b) of THEIRS ~=
a m m^T + b Sigma as a family at the B whose coef_S (or coef_m) matches, and simulates the loader.

With batches of equal size the weights are closed forms, the equal-batch level used to bracket B
and to move a band of B (band.py):

    level(B) = c_agg rho alpha(B):  alpha, N/B alpha, alpha/B, B^2 alpha, N B alpha, B alpha        (L2)

for the six families in the order of ``FAMILIES``. Naive twin of (L1): a loop over the batch sizes
(tests/verify/test_loader_families.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Family:
    """A per-batch loss and an aggregation over batches, with the factor its scale is (F of ``factors``)."""

    aggregation: str  # 'averaged' (F /= K) | 'summed' (no division) | 'over N' (F /= N)
    batch_loss: str  # 'mean' | 'sum' (the batch's loss reduction)
    expression: str  # THEIRS / (the averaged mean-loss loader) for equal batches, in N, K, B
    words: str

    @property
    def name(self) -> str:
        return f"{self.aggregation}, per-batch {self.batch_loss}"


FAMILIES = (
    Family("averaged", "mean", "1", "per-batch loss a mean, squared gradients averaged over the K batches"),
    Family("summed", "mean", "K", "per-batch loss a mean, squared gradients summed over the K batches (no / K)"),
    Family("over N", "mean", "K/N", "per-batch loss a mean, squared gradients summed and divided by N (not K)"),
    Family("averaged", "sum", "B^2", "per-batch loss a SUM (x s_k^2 per batch, ~ B^2), averaged over the K batches"),
    Family("summed", "sum", "B^2*K", "per-batch loss a SUM (x s_k^2 per batch), summed over the K batches"),
    Family("over N", "sum", "B^2*K/N", "per-batch loss a SUM (x s_k^2 per batch), summed and divided by N"),
)


#: The families read as hypotheses of their own (``hypotheses``): the per-batch MEAN ones. A per-batch-sum
#: family ties its scale to B (c ~ B^2, level ~ B): tried as readings of their own, a Fisher at other
#: weights passed as one (p = 0.0018, the catalogue's 'gaussian wrong parameters') where no mean family
#: did; so a sum family is named only from the free fit, when its c lies within 2 se of the family's
#: coef_m (``shuffled.judge_shuffled``): the free fit pays log M for its scale, as a scale bug does.
READ_FAMILIES = tuple(f for f in FAMILIES if f.batch_loss == "mean")


def batch_sizes_table(n: int, drop_last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For B = 1..N: (B, K, number of full batches, size of the short last batch or 0), all (N,) float64."""
    sizes = np.arange(1, n + 1, dtype=np.float64)
    k = np.floor(n / sizes) if drop_last else np.ceil(n / sizes)
    rest = n - np.floor(n / sizes) * sizes
    last = np.zeros(n) if drop_last else rest
    full = k - (last > 0)
    return sizes, k, full, last


def alpha(size, n: int):
    """(U1): the variance factor of a mean of `size` rows drawn without replacement from n."""
    return (n - size) / (np.maximum(size, 1) * max(n - 1, 1))


def coefficients(n: int, drop_last: bool, family: Family) -> tuple[np.ndarray, np.ndarray]:
    """(coef_m, coef_S), each (N,) over B = 1..N: (L1), the weights of m m^T and Sigma in E[F]."""
    sizes, k, full, last = batch_sizes_table(n, drop_last)
    rho_full, rho_last = (sizes**2, last**2) if family.batch_loss == "sum" else (np.ones(n), (last > 0) * 1.0)
    w_m = (full * rho_full + rho_last) / k
    w_s = (full * rho_full * alpha(sizes, n) + np.where(last > 0, rho_last * alpha(last, n), 0.0)) / k
    c_agg = aggregation_scale(n, drop_last, family)
    return c_agg * w_m, c_agg * w_s


def aggregation_scale(n: int, drop_last: bool, family: Family) -> np.ndarray:
    """(N,) c_agg over B = 1..N: 1, K or K/N."""
    _, k, _, _ = batch_sizes_table(n, drop_last)
    return {"averaged": np.ones(n), "summed": k, "over N": k / n}[family.aggregation]


def equal_level(n: int, family: Family) -> np.ndarray:
    """(N,) (L2): the Sigma weight of the family's loader with equal batches (K = N / B), B = 1..N."""
    sizes = np.arange(1, n + 1, dtype=np.float64)
    c_agg = {"averaged": 1.0, "summed": n / sizes, "over N": 1.0 / sizes}[family.aggregation]
    rho = sizes**2 if family.batch_loss == "sum" else 1.0
    return c_agg * rho * alpha(sizes, n)


def matching(levels: np.ndarray, target: float, width: float = 1.5) -> list[int]:
    """The B (1-based) where `levels` comes closest to `target` on a log scale, one per run of B whose
    level lies within x width of it (a non-monotone level, e.g. B^2 alpha(B), can match twice);
    the best two, closest first. Empty when no level is within x width."""
    if not target > 0:
        return []
    gap = np.abs(np.log(np.maximum(levels, 1e-300)) - np.log(target))
    near = gap <= np.log(width)
    if not near.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], near.astype(np.int8), [0]])))
    runs = [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2], strict=True)]
    best = [start + int(np.argmin(gap[start:stop])) for start, stop in runs]
    return [i + 1 for i in sorted(best, key=lambda i: gap[i])[:2]]


def mean_alpha(n: int, drop_last: bool = False) -> np.ndarray:
    """(N,) alpha-bar(B) for B = 1..N: (U1) averaged over the K batches of a partition, the last one partial.

    alpha-bar(B) = ((K - 1) alpha(B) + alpha(N - (K - 1) B)) / K, alpha(s) = (N - s) / (s (N - 1)):
    a partial last batch of 8 rows raises alpha-bar(32) by 9% at N = 1000 (B = 29 if ignored).
    With `drop_last` every batch has B rows (a random B-subset of the N): alpha(B).
    """
    b = np.arange(1, n + 1)
    if drop_last:
        return (n - b) / (b * max(n - 1, 1))
    k = -(-n // b)
    last = n - (k - 1) * b

    def alpha(size):
        return (n - size) / (size * max(n - 1, 1))

    return ((k - 1) * alpha(b) + alpha(last)) / k


def equal_batch_size(alpha: float, n: int) -> float:
    """B = N / (alpha (N - 1) + 1), the inverse of (U1) for batches of equal size."""
    return n / (max(alpha, 0.0) * (n - 1) + 1)


def implied_batch_size(a: float, b: float, n: int, alphas: np.ndarray | None = None) -> int:
    """The B whose alpha-bar(B) (``mean_alpha``) is closest to b / a on a log scale, searched within
    x 1.5 of the equal-batch inverse (alpha-bar is jagged in B: far-off B with a partial last batch
    can match as well, and are not what a loader with that noise level means)."""
    alphas = mean_alpha(n) if alphas is None else alphas
    alpha = max(b / a, 1e-300)
    b0 = equal_batch_size(alpha, n)
    lo = min(n, max(1, int(b0 / 1.5)))
    hi = max(lo, min(n, int(math.ceil(b0 * 1.5))))
    window = np.log(np.maximum(alphas[lo - 1:hi], 1e-300))
    return lo + int(np.argmin(np.abs(window - math.log(alpha))))


def n_batches(n: int, drop_last: bool = False) -> np.ndarray:
    """(N,) K(B) for B = 1..N: ceil(N / B), or floor(N / B) with drop_last."""
    b = np.arange(1, n + 1)
    return n // b if drop_last else -(-n // b)


def heavy_neighbours(bb: int, n: int, levels: np.ndarray, target: float) -> list[int]:
    """Up to two B near `bb` (x 1.5) whose level c alpha-bar(B) is within x 1.5 of `target` and whose
    short last batch has < B/4 rows: such a batch dominates the noise (a mean of a few rows), so a
    neighbour in level that lacks it would be judged too strictly; they are tried too."""
    lo, hi = max(2, int(bb / 1.5)), min(n, int(math.ceil(bb * 1.5)))
    near = [c for c in range(lo, hi + 1)
            if c != bb and 0 < n % c < c / 4 and abs(math.log(max(levels[c - 1], 1e-300) / target)) < math.log(1.5)]
    return sorted(near, key=lambda c: abs(math.log(max(levels[c - 1], 1e-300) / target)))[:2]


def hypotheses(a: float, b: float, n: int, table: dict, drop_last: bool) -> list[tuple[Family | None, int]]:
    """(family, B) readings that explain the fitted weights: the free fit (family None: c = a,
    alpha-bar = b / a), and for each family of ``readings.FAMILIES`` the B whose Sigma weight coef_S(B)
    is closest to b within x 1.5 of where its equal-batch level (L2) crosses b -- all the data can tell
    when m m^T is negligible (a converged net: a is then not identified) -- with ``heavy_neighbours``
    neighbours with a short last batch; for the families of READ_FAMILIES."""
    out: list[tuple[Family | None, int]] = []
    if a > 0 and b / a <= 1.0 + 1e-6:
        out.append((None, implied_batch_size(a, b, n, table["alpha"])))
    for family in READ_FAMILIES:
        coef_m, coef_s = table[family]
        found = []
        level = equal_level(n, family)
        # no level within x 1.5 of b: the closest one still (a reading that fails its test says why)
        nearest = [1 + int(np.argmin(np.abs(np.log(np.maximum(level, 1e-300)) - math.log(max(b, 1e-300)))))]
        for b0 in matching(level, b) or nearest:
            lo, hi = max(1, int(b0 / 1.5)), min(n, int(math.ceil(b0 * 1.5)))
            bb = lo + int(np.argmin(np.abs(np.log(np.maximum(coef_s[lo - 1:hi], 1e-300)) - math.log(b))))
            found += [bb] + ([] if drop_last else heavy_neighbours(bb, n, coef_s, b))
        out += [(family, bb) for bb in dict.fromkeys(found)]
    return [(f, bb) for f, bb in out if table["k"][bb - 1] >= 2 and not (drop_last and n % bb == 0)]


def loader_tables(n: int) -> dict:
    """{drop_last: {'alpha': alpha-bar(B), 'k': K(B), family: (coef_m, coef_S)}} over B = 1..N (readings (L1))."""
    return {drop: {"alpha": mean_alpha(n, drop), "k": n_batches(n, drop),
                   **{family: coefficients(n, drop, family) for family in FAMILIES}} for drop in (False, True)}


def run_around(mask: np.ndarray, bb: int) -> tuple[int, int] | None:
    """The run of True in mask (over B = 1..N) that holds bb, or the nearest one; None when all False."""
    where = np.flatnonzero(mask)
    if where.size == 0:
        return None
    i = int(where[np.argmin(np.abs(where - (bb - 1)))])
    lo, hi = i, i
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    while hi + 1 < mask.size and mask[hi + 1]:
        hi += 1
    return lo + 1, hi + 1


def named_family(c: float, se: float, low: int, high: int, table: dict, n: int) -> tuple[Family | None, int | None]:
    """(the first family whose m m^T weight coef_m(B) is c within 2 se at a B in [low, high], that B closest
    to c), or (None, None): the loop a free reading (c = its fitted a, se its simulated se) stands for.
    table : ``loader_tables(n)[drop_last]``."""
    band = max(2 * se if math.isfinite(se) else 0.1 * abs(c), 1e-9 * abs(c))
    sizes = np.arange(max(low, 1), min(high, n) + 1)
    for family in FAMILIES if sizes.size else ():
        gap = np.abs(c - table[family][0][sizes - 1])
        if gap.min() <= band:
            return family, int(sizes[np.argmin(gap)])
    return None, None
