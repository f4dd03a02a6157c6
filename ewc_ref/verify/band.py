"""The 99% band of B of a shuffled-loader reading, profiled over B (docs/shuffled-loader-fisher.md, "The test").

A reading (reduction, B = bb, scale c) of ``shuffled.judge_shuffled`` is simulated at bb only. The
band asks, for every B, whether a loader of B puts the observed noise weight b inside its 99%
range. The b used is ``shuffled.GLS.clean_b``: with the one high-leverage row of a short last batch
fitted apart (the x 2.3-2.6 moves of the plain b at N = 1797, B = 64), b follows the equal-batch level
of the reading's loader family (readings.py (L2); the free fit: alpha(B) times its c)

    lambda(B) = c_agg(B) rho(B) alpha(B),   alpha(B) = (N - B) / (B (N - 1))                       (B1)

with c_agg = 1, N / B or 1 / B (averaged, summed, over N) and rho = 1 or B^2 (per-batch mean or sum),
monotone in B near the reading's B for the mean families. The reading's simulated range of log b is moved to B by log lambda(B) -
log lambda(bb) and widened by w(B) = rho(B) / rho(bb), rho the relative sd of a loader's Fisher
(Gaussian batch means, ``relative_sd``): a short batch of r rows adds alpha(r)^2 to its variance.
"""

from __future__ import annotations

import math

import numpy as np

#: Normal quantile of the two-sided 99% band.
Z99 = 2.58


def relative_sd(k_of: np.ndarray, n: int, drop_last: bool) -> np.ndarray:
    """(N,) rho(B) = sd / mean of an averaged loader Fisher's entry at B = 1..N, up to a factor common to all B.

    With batch sizes s_k (K - 1 of B and one of r = N - (K - 1) B, or K of B with drop_last) and
    alpha_k = alpha(s_k): sd^2 ~ 2 Sigma^2 (sum_k alpha_k^2 + K (K - 1)/(N - 1)^2) / K^2 (Gaussian batch
    means, ``ranking.loader_moments`` without its fourth-cumulant term), mean ~ Sigma sum_k alpha_k / K,
    so rho(B) = sqrt(2 v2) / sum_k alpha_k. Summing instead of averaging scales both alike.
    """
    sizes = np.arange(1, n + 1, dtype=np.float64)
    k = k_of.astype(np.float64)
    full = k if drop_last else k - 1
    last = np.maximum(n - full * sizes, 1.0)
    has_last = full < k

    def alpha(s):
        return (n - s) / (s * max(n - 1, 1))

    v2 = full * alpha(sizes) ** 2 + np.where(has_last, alpha(last) ** 2, 0.0) + k * (k - 1) / max(n - 1, 1) ** 2
    total = full * alpha(sizes) + np.where(has_last, alpha(last), 0.0)
    return np.sqrt(2 * v2) / np.maximum(total, 1e-300)


def band_of_b(b_clean: float, centre: float, sd_low: float, sd_high: float, level: np.ndarray, bb: int,
              k_of: np.ndarray, n: int, drop_last: bool) -> tuple[int, int]:
    """(low, high): the B = 1..N whose loader puts the observed b inside its 99% range, and bb.

    b_clean : the observed b (``GLS.clean_b``); centre, sd_low, sd_high : median and split-normal
    sds (``shuffled._split_normal``) of log b over the reading's simulated loaders at bb; k_of : (N,)
    K(B). B is in when -Z99 sd_low w(B) <= log b - log lambda(B) - (centre - log lambda(bb)) <= Z99
    sd_high w(B) (level : (N,) lambda(B) of (B1), up to a constant factor; w = rho(B) / rho(bb)), for the B with K(B) - 1 >= (K(bb) - 1) / 4 (farther,
    the reading's noise is no guide: a B of a few batches, or of a 1-3-row short batch, is as noisy
    as that). The band always holds bb, whose reading passed its own test.
    """
    sizes = np.arange(1, n + 1)
    rho = relative_sd(k_of, n, drop_last)
    widen = rho / max(rho[bb - 1], 1e-300)
    z = math.log(max(b_clean, 1e-300)) - np.log(np.maximum(level, 1e-300)) - (centre - math.log(level[bb - 1]))
    inside = ((k_of - 1 >= (k_of[bb - 1] - 1) / 4) & (k_of >= 2)
              & (z >= -Z99 * sd_low * widen) & (z <= Z99 * sd_high * widen))
    held = sizes[inside]
    return (int(min(held.min(), bb)), int(max(held.max(), bb))) if held.size else (bb, bb)
