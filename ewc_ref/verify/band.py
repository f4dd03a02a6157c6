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

A per-batch-SUM family's noise weight says little about B: summed, lambda(B) = N (N - B) / (N - 1) moves by
3.5 % from B = 1 to B = 64 at N = 1,797. Its m m^T weight does (docs/shuffled-loader-fisher.md (L3)-(L5)):

    E[F] = w_E(B) E + w_mm(B) m m^T,  w_E = c_agg/K sum_k rho_k alpha_k,  w_mm = c_agg/K sum_k rho_k (1 - alpha_k)   (B2)

(E the empirical Fisher), so coef_m(B) = w_E + w_mm (L1) ~ N B summed, B^2 averaged, B over N, and the
ratio coef_S / coef_m = sum_k s_k^2 alpha_k / sum_k s_k^2 does not depend on the aggregation.
``weight_band`` reads B from the fitted m m^T weight a and from log(b / a), each against the named family's
own simulated loaders moved to every B by (L1) and the noise scale ``noise_sd`` (B3).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import t as student_t

from .readings import Family, aggregation_scale, batch_sizes_table, coefficients

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


def empirical_weights(n: int, drop_last: bool, family: Family) -> tuple[np.ndarray, np.ndarray]:
    """(w_E, w_mm), each (N,) over B = 1..N: E[F] = w_E E + w_mm m m^T for the family's loader (B2), (L3).

    With batch sums G_k = sum_{n in b_k} g_n (sizes s_k), E[G_k G_k^T] = s_k (N - s_k)/(N - 1) E
    + N s_k (s_k - 1)/(N - 1) m m^T; per-batch weights rho_k = 1 / s_k^2 (mean) or 1 (sum) and c_agg / K
    give w_E = coef_S and w_mm = coef_m - coef_S of (L1). Naive twin: the mean over every row order
    (tests/verify/test_band_sum_family.py).
    """
    coef_m, coef_s = coefficients(n, drop_last, family)
    return coef_s, coef_m - coef_s


def noise_sd(n: int, drop_last: bool, family: Family) -> np.ndarray:
    """(N,) the sd of one diagonal entry of the family's loader Fisher at B = 1..N, up to a factor common to all B (B3).

    Gaussian batch means (docs/shuffled-loader-fisher.md, "A short last batch"):
    Var[F_i] = 2 Sigma_ii^2 (c_agg / K)^2 (sum_k rho_k^2 alpha_k^2 + ((sum_k rho_k)^2 - sum_k rho_k^2) / (N - 1)^2),
    rho_k = 1 (per-batch mean) or s_k^2 (sum); the factor sqrt(2) Sigma_ii is dropped. For the averaged
    per-batch-mean family noise_sd / coef_S is ``relative_sd``. Left to the simulations at the reading's B: the
    m-linear term of a short batch (2 m rho_k d_k, which does not cancel when the rho_k differ), the fourth
    cumulant, and the finite-population factor sqrt((N - K) / (N + 1)) of the exact permutation variance
    (a Beta, not a chi2, for equal batches: 0.5 % between K = 20 and 40 at N = 1797).
    """
    sizes, k, full, last = batch_sizes_table(n, drop_last)
    per_sum = family.batch_loss == "sum"
    rho_full = sizes**2 if per_sum else np.ones(n)
    rho_last = last**2 if per_sum else (last > 0) * 1.0
    alpha_full = (n - sizes) / (sizes * max(n - 1, 1))
    alpha_last = np.where(last > 0, (n - last) / (np.maximum(last, 1) * max(n - 1, 1)), 0.0)
    square_sum = full * rho_full**2 + rho_last**2
    v = full * (rho_full * alpha_full) ** 2 + (rho_last * alpha_last) ** 2 + ((full * rho_full + rho_last) ** 2
                                                                           - square_sum) / max(n - 1, 1) ** 2
    c_agg = {"averaged": np.ones(n), "summed": k, "over N": k / n}[family.aggregation]
    return c_agg * np.sqrt(2 * v) / np.maximum(k, 1)


def _split_range(samples: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) over the columns of samples : (D, B): median -/+ quantile x the split-normal semi-sd of
    each side (root-mean-square deviation from the median of that side's samples, ``shuffled._split_normal``)."""
    centre = np.median(samples, axis=0)
    dev = samples - centre
    below = np.sqrt(np.sum(np.where(dev < 0, dev**2, 0.0), axis=0) / np.maximum(np.sum(dev < 0, axis=0), 1))
    above = np.sqrt(np.sum(np.where(dev > 0, dev**2, 0.0), axis=0) / np.maximum(np.sum(dev > 0, axis=0), 1))
    return centre - quantile * below, centre + quantile * above


def informative_level(coef_s: np.ndarray, bb: int, slope: float = 0.5) -> bool:
    """Whether the Sigma weight coef_S : (N,) over B = 1..N moves with B at bb: |d log coef_S / d log B| >= slope
    (a central difference over bb -/+ 10 %). Summed and over-N per-batch sums: 0.04 at B = 64, N = 1797 (flat);
    averaged: 0.96."""
    lo, hi = max(1, int(bb / 1.1)), min(coef_s.size, int(math.ceil(bb * 1.1)))
    if hi <= lo or min(coef_s[lo - 1], coef_s[hi - 1]) <= 0:
        return False
    return abs(math.log(coef_s[hi - 1] / coef_s[lo - 1]) / math.log(hi / lo)) >= slope


def weight_band(a_obs: float, b_obs: float, fits: np.ndarray, family: Family, bb: int, n: int,
                drop_last: bool) -> tuple[int, int]:
    """(low, high): the B = 1..N whose loader of `family` puts the fitted m m^T weight a, or log(b / a), or (where
    ``informative_level``) b inside its 99% range; always holds bb. The union of the bands (each 99%), (L5).

    fits : (D, 2) the (a, b) of THEIRS ~= a m m^T + b Sigma (``shuffled.GLS.fit``) on D simulated loaders
    of the family at bb. Moved to B: a_d(B) = coef_m(B) + (a_d - coef_m(bb)) s(B) / s(bb), likewise b_d
    with coef_S, s = ``noise_sd`` (B3): the same noise realisations, rescaled. The 99% range is the
    median -/+ t_{0.995, D/2 - 1} split-normal semi-sds (a t quantile: each side's sd is estimated from
    about D / 2 draws). B is kept out to K(B) - 1 >= (K(bb) - 1) / 4, as in ``band_of_b``.
    """
    coef_m, coef_s = coefficients(n, drop_last, family)
    _, k, _, _ = batch_sizes_table(n, drop_last)
    scale = noise_sd(n, drop_last, family)
    scale = scale / max(scale[bb - 1], 1e-300)
    a_moved = coef_m + np.outer(fits[:, 0] - coef_m[bb - 1], scale)  # (D, N)
    b_moved = coef_s + np.outer(fits[:, 1] - coef_s[bb - 1], scale)
    quantile = float(student_t.ppf(0.995, max(fits.shape[0] // 2 - 1, 1)))
    a_low, a_high = _split_range(a_moved, quantile)
    r_low, r_high = _split_range(np.log(np.maximum(b_moved, 1e-300) / np.maximum(a_moved, 1e-300)), quantile)
    ratio_obs = math.log(max(b_obs, 1e-300) / max(a_obs, 1e-300))
    reach = (k - 1 >= (k[bb - 1] - 1) / 4) & (k >= 2)
    inside = reach & (((a_low <= a_obs) & (a_obs <= a_high)) | ((r_low <= ratio_obs) & (ratio_obs <= r_high)))
    if informative_level(coef_s, bb):  # the noise weight b itself (B^2 alpha(B) averaged), united
        b_low, b_high = _split_range(b_moved, quantile)
        inside |= reach & (b_low <= b_obs) & (b_obs <= b_high)
    held = np.flatnonzero(inside) + 1
    return (int(min(held.min(), bb)), int(max(held.max(), bb))) if held.size else (bb, bb)


def sum_family_band(a_obs: float, b_obs: float, family: Family, bb: int, n: int, fit, simulate) -> tuple[int, int]:
    """The union over drop_last (kept, dropped: the free fit that names a per-batch-sum family does not tell them
    apart) of ``weight_band``, from D loaders of the family at bb: simulate(drop_last) -> (D, M) their Fishers
    with per-batch sums averaged over the K batches (``shuffled.simulate``), here times c_agg; fit(t) -> (a, b, ...)
    (``shuffled.GLS.fit``)."""
    bands = []
    for drop in (False, True) if n % bb and n // bb >= 2 else (False,):
        sims = aggregation_scale(n, drop, family)[bb - 1] * simulate(drop)
        bands.append(weight_band(a_obs, b_obs, np.array([fit(t)[:2] for t in sims]), family, bb, n, drop))
    return min(low for low, _ in bands), max(high for _, high in bands)
