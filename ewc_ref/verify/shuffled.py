"""The statistical judgement of ``shuffled``: squared minibatch-mean gradients over a SHUFFLED loader.

The most common Fisher in the wild: a DataLoader with shuffle=True, batches of B, and per batch
THEIRS += gbar_k gbar_k^T with gbar_k the gradient of the minibatch-MEAN loss (then divided by
the K = N / B batches, "averaged", or not, "summed"). The rows' order is unknown, so THEIRS is
random; docs/shuffled-loader-fisher.md derives its moments. With g_n the per-example gradients,
m = 1/N sum_n g_n, E = 1/N sum_n g_n g_n^T (the empirical Fisher) and the population covariance
Sigma = E - m m^T, a batch drawn without replacement has

    E[gbar gbar^T] = m m^T + alpha Sigma = (N - B)/(B (N - 1)) E + N (B - 1)/(B (N - 1)) m m^T,
    alpha = (N - B) / (B (N - 1))                                                       (U1)

and since the K batch means of a partition average to m exactly, 1/K sum_k gbar_k gbar_k^T =
m m^T + 1/K sum_k d_k d_k^T with d_k = gbar_k - m, sum_k d_k = 0: K - 1 degrees of freedom.
When the batch means are near Gaussian (CLT within a batch), sum_k d_k d_k^T is Wishart with
K - 1 degrees of freedom and scale alpha K/(K - 1) Sigma, so for the entries i, j of the diagonal

    Cov[T_i, T_j] = c^2 2 alpha^2 Sigma_ij^2 / (K - 1)                                   (U2)

(the m m^T terms cancel exactly). ``judge_shuffled`` fits THEIRS ~= a m m^T + b Sigma on M
tested diagonal entries by generalised least squares in the metric W = Sigma o Sigma (Hadamard
square; (U2) is a multiple of it), so alpha = b / a, B = N / (alpha (N - 1) + 1) (exactly: the B
whose alpha averaged over the K batches of a partition, the last one partial, is b / a), c = a,
and the whitened residual gives

    chi2 = (K - 1) / (2 b^2) r^T W^+ r  ~  chi2_{M - 2}                                   (U3)

(U3) weighs every whitened direction alike, so the small-variance ones dominate it; a systematic
error (a Fisher at other weights) is also small there but far smoother than K batches' noise in
the large-variance ones. So the plain squared residual on the tested entries

    e = ||T - E[T]||^2                                                                    (U4)

is compared with its distribution over the simulations below (two-sided, a normal fit to log e),
and a reading is accepted only when (U3), (U4) and (U5) are: the weight a of m m^T, the one
noise-free part of T, must match the reading's c within its simulated spread

    |a - mean a_sim| / sd a_sim                                                           (U5)

When sd a_sim > c / 4 (a converged net, m ~ 0) c and B are confounded: only c alpha-bar(B) is
measured, and the noise level (U3)-(U4) is all that tells B. Such a reading is ``identified =
False`` and ``diagnose`` names it as a likely cause, not as the verdict.

Small batches and confident networks break the CLT within a batch (one rare example dominates
a batch mean), so like ``mc`` every p-value and the interval of B are also computed from
SHUFFLE_BOOTSTRAP simulated shuffled-loader Fishers of the same tested entries (random
partitions of the rows into batches of the implied B), and the candidate is rejected only when
both p-values are below MC_ALPHA. The interval of B holds the B whose alpha-bar lies within
2.58 simulated standard deviations of log b from the estimate (a log-normal 99% band; 32 simulations
estimate that sd to +-13%, and the readings are discrete, so 95% would be optimistic), united with
the band of the b fitted with a short batch's one high-leverage row apart, profiled over B (``band.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, norm

from ..curvature import label_kernels
from ..jsonio import JsonResult
from .band import band_of_b, sum_family_band
from .readings import (
    FAMILIES,
    aggregation_scale,
    equal_level,
    hypotheses,
    loader_tables,
    named_family,
    run_around,
)

#: Simulated shuffled-loader Fishers that calibrate the test and the interval of B.
SHUFFLE_BOOTSTRAP = 32
#: Significance level of each of (U3), (U4), (U5). Looser than mc's 1e-6 because a false ``shuffled``
#: is the likelier error: the catalogue's systematic errors that mimic a shuffled loader (Brier loss,
#: half-predicted labels, tests/verify/test_diagnose.py) reach p = 2e-5..6e-5, genuine shuffled Fishers
#: (B = 8..48, both nets of tests/fixtures/libraries) 0.01..0.7. A genuine one is rejected with
#: probability <= 3e-3 where the normal fits hold.
SHUFFLED_ALPHA = 1e-3
#: Readings simulated (the likeliest first by the Gaussian log-likelihood of (U2)-(U3)) among the loader
#: families of readings.py, kept / dropped, the free fit, and up to two B near each with a short last batch
#: of < B/4 rows (``readings.heavy_neighbours``). Each simulated reading is a test at SHUFFLED_ALPHA: more
#: of them would accept more systematic errors.
SIMULATED_READINGS = 6
#: Rows of largest leverage tried as the one high-leverage row of a short last batch (``GLS.clean_b``).
HEAVY_ROWS = 64
#: Readings within this many log-units of the best one's synthetic likelihood share the band of B (chi2_1 99% / 2).
BAND_LOG_LIKELIHOOD = 3.3


def _split_normal(value: float, samples: np.ndarray) -> tuple[float, float]:
    """(z, sd) of `value` under a split normal fitted to `samples`: centred on their median, with the
    root-mean-square deviation from it of the samples on value's side as that side's sd (``split_normal_p``).
    A heavy right tail (a few-row batch) widens the right side only: a THEIRS too SMOOTH for the
    loader (a Fisher at other weights) is still judged against the narrow left side."""
    centre = float(np.median(samples))
    side = samples[samples > centre] if value > centre else samples[samples < centre]
    sd = float(np.sqrt(np.mean((side - centre) ** 2))) if side.size >= 3 else float(samples.std(ddof=1))
    sd = max(sd, 1e-12 * max(abs(centre), 1e-300))
    return (value - centre) / sd, sd


def synthetic_log_likelihood(observed: np.ndarray, simulated: np.ndarray) -> float:
    """sum_j log pdf of observed[j] under the split-normal fit to simulated[:, j] (a synthetic likelihood,
    Wood 2010, with independent coordinates): comparable across readings because `observed` is the
    same reading-free summary (a, log b, log q of the free fit) for all of them."""
    total = 0.0
    for j in range(observed.size):
        z, sd = _split_normal(float(observed[j]), simulated[:, j])
        total += -0.5 * z * z - math.log(sd) - 0.5 * math.log(2 * math.pi)
    return total


def split_normal_p(value: float, samples: np.ndarray) -> float:
    """Two-sided p-value of `value` under the split normal of ``_split_normal``: a skewed null (a few-row
    batch's heavy tail) is not mistaken for a misfit on its long side, nor made lax on its short side."""
    return float(2 * norm.sf(abs(_split_normal(value, samples)[0])))


@dataclass
class ShuffledTest(JsonResult):
    """The judgement of ``shuffled`` (module docstring, (U1)-(U3))."""

    accepted: bool
    reason: str
    implied_batch_size: float = math.nan  # the B whose alpha-bar(B) is closest to the fitted b / a
    batch_size: int | None = None  # the same, as an int
    batch_size_interval: tuple = (math.nan, math.nan)  # 99% band of B_hat
    scale: float = math.nan  # c = a: 1 when the batches were averaged, K when summed
    scale_se: float = math.nan  # bootstrap standard error of c
    reduction: str = ""  # the aggregation over batches: 'averaged' | 'summed' | 'over N' | '' (readings.Family)
    entries: int = 0  # M, whitened directions tested
    chi2: float = math.nan  # (U3)
    p_noise: float = math.nan
    rel_error: float = math.nan  # ||T - c E[T]|| / ||T|| of the fitted expectation on all entries
    identified: bool = False  # the m m^T weight pins c down (sd <= c / 4): B and c are not confounded
    drop_last: bool | None = False  # the reading drops the short last batch (None: cannot tell)
    batch_loss: str = ""  # the per-batch loss reduction: 'mean' | 'sum' | '' (free fit: not read)
    aggregation_scale: float = math.nan  # c_agg of the reading: 1, K or K/N (readings (L1))
    labels: str = "observed"  # the loader's labels: 'observed' (DATA's y) | 'predicted' (diagnosis._predicted_shuffled)

    def to_dict(self) -> dict:
        def finite(value):
            return value if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)) else None

        low, high = self.batch_size_interval
        return {"accepted": self.accepted, "reason": self.reason, "implied_batch_size": finite(self.implied_batch_size),
                "batch_size": self.batch_size, "batch_size_interval": [finite(low), finite(high)],
                "scale": finite(self.scale), "scale_se": finite(self.scale_se), "reduction": self.reduction or None,
                "entries": self.entries, "chi2": finite(self.chi2), "p_noise": finite(self.p_noise),
                "rel_error": finite(self.rel_error), "identified": self.identified, "drop_last": self.drop_last,
                "batch_loss": self.batch_loss or None, "aggregation_scale": finite(self.aggregation_scale), "labels": self.labels}


def expectation_terms(grad_entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m m^T, Sigma) on the tested entries from per-example gradients G : (N, M): (M,), (M, M)."""
    n = grad_entries.shape[0]
    m = grad_entries.mean(axis=0)
    sigma = grad_entries.T @ grad_entries / n - np.outer(m, m)
    return m * m, sigma


def simulate(grad_entries: np.ndarray, batch_size: int, draws: int, rng: np.random.Generator,
             drop_last: bool = False, batch_loss: str = "mean") -> np.ndarray:
    """(draws, M) averaged shuffled-loader Fishers of the tested entries: random partitions into batches of B,
    1/K sum_k gbar_k^2 with gbar_k the batch's mean gradient, or its sum with batch_loss='sum'.

    A partition is a permutation of the rows cut into runs of B (the last one partial, or dropped
    with `drop_last`: only the first floor(N / B) B positions are used); each draw's squared batch
    means are ``label_kernels.partition_squares``, which streams the (N, M) entries (float64, or the
    float32 copy of ``judge_shuffled``: half the bytes) in row order into the K batch sums, in float64.
    Twin: ``simulate_loop`` (the permuted rows summed run by run).
    """
    n = grad_entries.shape[0]
    used = n - n % batch_size if drop_last else n
    k = -(-used // batch_size)
    starts = np.arange(0, used, batch_size)
    counts = np.minimum(starts + batch_size, used) - starts
    batch_of_position = np.arange(used) // batch_size
    batch = np.empty(n, dtype=np.int64)
    out = np.empty((draws, grad_entries.shape[1]))
    for d in range(draws):
        if batch_loss == "sum":  # each batch's SUM (rare: a per-batch-sum loop named from the free fit)
            shuffled = grad_entries[rng.permutation(n)[:used]].astype(np.float64)
            gsum = np.add.reduceat(shuffled, starts, axis=0)
            out[d] = np.einsum("km,km->m", gsum, gsum) / k
            continue
        batch.fill(-1)  # a row the loader dropped
        batch[rng.permutation(n)[:used]] = batch_of_position  # the row at position i of the permutation is in batch i // B
        out[d] = label_kernels.partition_squares(grad_entries, batch, counts) / k
    return out


def simulate_loop(grad_entries: np.ndarray, batch_size: int, draws: int, rng: np.random.Generator,
                  drop_last: bool = False, batch_loss: str = "mean") -> np.ndarray:
    """simulate with the permuted rows summed run by run (its twin; the same partitions for the same rng)."""
    n = grad_entries.shape[0]
    used = n - n % batch_size if drop_last else n
    k = -(-used // batch_size)
    starts = np.arange(0, used, batch_size)
    counts = np.minimum(starts + batch_size, used) - starts
    out = np.empty((draws, grad_entries.shape[1]))
    for d in range(draws):
        shuffled = grad_entries[rng.permutation(n)[:used]]
        gbar = np.add.reduceat(shuffled, starts, axis=0) / (counts[:, None] if batch_loss == "mean" else 1.0)
        out[d] = np.einsum("km,km->m", gbar, gbar) / k
    return out


class GLS:
    """T ~= a m m^T + b Sigma in the metric W = Sigma o Sigma restricted to its well-conditioned span."""

    def __init__(self, mm: np.ndarray, sigma: np.ndarray, floor: float):
        lam, vec = np.linalg.eigh(sigma * sigma)
        keep = lam > max(1e-12 * float(lam[-1]), floor)
        self.basis, self.sd = vec[:, keep], np.sqrt(lam[keep])
        self.design = (self.basis.T @ np.stack([mm, np.diag(sigma)], axis=1)) / self.sd[:, None]
        self.sigma_ii = np.diag(sigma).copy()
        self.m = int(keep.sum())

    def fit(self, t: np.ndarray) -> tuple[float, float, float]:
        """(a, b, r^T W^+ r) of the generalised least-squares fit."""
        tw = self.basis.T @ t / self.sd
        coef, *_ = np.linalg.lstsq(self.design, tw, rcond=None)
        r = tw - self.design @ coef
        return float(coef[0]), float(coef[1]), float(r @ r)

    def heavy_rows(self, grad_entries: np.ndarray, count: int = HEAVY_ROWS) -> None:
        """Prepare ``clean_b``: the whitened g_n^2 : (m, L) of the L rows of largest leverage
        sum_i g_ni^2 / Sigma_ii, and their parts orthogonal to the design."""
        lev = np.einsum("nm,nm,m->n", grad_entries, grad_entries, 1.0 / np.maximum(self.sigma_ii, 1e-300))
        rows = np.argsort(-lev)[:min(count, lev.size)]
        self.heavy = (self.basis.T @ (grad_entries[rows].astype(np.float64) ** 2).T) / self.sd[:, None]
        q, _ = np.linalg.qr(self.design)
        self.heavy_perp = self.heavy - q @ (q.T @ self.heavy)
        self.heavy_norm2 = np.maximum((self.heavy_perp ** 2).sum(axis=0), 1e-300)

    def clean_b(self, t: np.ndarray) -> float:
        """b of the fit T ~= a m m^T + b Sigma + gamma g_j g_j^T, j the heavy row (``heavy_rows``) that
        explains most of the two-term fit's residual: a short last batch of r rows holding one
        high-leverage row adds ~ g_j^2 / (K r^2) to T, which the plain b absorbs (x 2.3-2.6 of its
        typical value at N = 1797, B = 64) and this b does not (docs/shuffled-loader-fisher.md,
        "The band of B")."""
        tw = self.basis.T @ t / self.sd
        coef, *_ = np.linalg.lstsq(self.design, tw, rcond=None)
        j = int(np.argmax((((tw - self.design @ coef) @ self.heavy_perp) ** 2) / self.heavy_norm2))
        coef, *_ = np.linalg.lstsq(np.column_stack([self.design, self.heavy[:, j]]), tw, rcond=None)
        return float(coef[1])


def _semi_sd(samples: np.ndarray, side: int) -> float:
    """The split normal's sd above (side = +1) or below (-1) the median of `samples` (``_split_normal``)."""
    return _split_normal(float(np.median(samples)) + side * 1e300, samples)[1]


def _simulate_reading(reading: dict, a, b_observed, tables, grad_entries, theirs_entries, expect, gls, n, draws,
                      rng) -> dict:
    """p-value, scale se, band of B and identification of one reading against its simulated loader Fishers."""
    family, bb, cm, cs, c_agg, drop = (reading[key] for key in ("family", "bb", "cm", "cs", "c_agg", "drop"))
    stat, dof = reading["stat"], reading["dof"]
    level_eq = tables[drop]["alpha"] if family is None else equal_level(n, family)
    p = float(2 * min(chi2.sf(stat, dof), chi2.cdf(stat, dof)))
    se, spread, identified, score, profile = math.nan, (0.0, 0.0), False, reading["log_like"], (bb, bb)
    if draws >= 10:
        sims = c_agg * simulate(grad_entries, bb, draws, rng, drop_last=drop,
                                batch_loss="mean" if family is None else family.batch_loss)
        log_stat = np.log([max(reading["statistic"](t), 1e-300) for t in sims])
        p = max(p, split_normal_p(math.log(max(stat, 1e-300)), log_stat))
        # (U4): the plain squared residual against the reading's expectation, where the whitened (U3)
        # is blind: a systematic error (a Fisher at other weights) is far SMOOTHER than the
        # noise of K batches in the high-variance directions (calibrated on the simulations only)
        centre = expect @ np.array([cm, cs]) if family is not None else sims.mean(axis=0)
        log_e = np.log(np.maximum(((sims - centre) ** 2).sum(axis=1), 1e-300))
        energy = split_normal_p(math.log(max(float(((theirs_entries - centre) ** 2).sum()), 1e-300)), log_e)
        fits = np.array([gls.fit(t) for t in sims])
        # (U5): the fitted weight of m m^T must match the reading's (the only noise-free part of T);
        # skewed when a short last batch of a few rows dominates the noise: a split normal
        p = min(p, energy, split_normal_p(a, fits[:, 0]))
        identified = float(fits[:, 0].std(ddof=1)) <= 0.25 * abs(cm)
        summary = lambda f: np.stack([f[..., 0], np.log(np.maximum(f[..., 1], 1e-300)),  # noqa: E731
                                      np.log(np.maximum(f[..., 2], 1e-300))], axis=-1)
        score = synthetic_log_likelihood(summary(np.array(gls.fit(theirs_entries))), summary(fits))
        se = float(np.std(fits[:, 0], ddof=1) if family is None else cm * np.std(fits[:, 1] / cs, ddof=1))
        # the band of B from the b of the three-term fit (``GLS.clean_b``): a short last batch holding one
        # high-leverage row moves the plain b by x 2-3 and would carry the band with it
        clean = np.array([gls.clean_b(t) for t in sims])
        log_clean = np.log(np.maximum(clean, 1e-300))
        profile = band_of_b(gls.clean_b(theirs_entries), float(np.median(log_clean)), _semi_sd(log_clean, -1),
                            _semi_sd(log_clean, +1), level_eq, bb, tables[drop]["k"], n, drop)
        log_b = np.log(np.maximum(fits[:, 1], 1e-300))
        # 99% of log b: 2.58 split-normal deviations on each side (a few-row last batch skews it up)
        spread = (2.58 * _semi_sd(log_b, -1), 2.58 * _semi_sd(log_b, +1))
    # the band of the plain b: the B whose equal-batch level (readings (L2)), through the reading's Sigma
    # weight at bb, puts the observed b inside its simulated 99% range (the run of such B around bb); united
    # with the profile band of the cleaned b, which holds the loader's B when a heavy row in its short batch
    # moved the plain b (each is a 99% band; the union is at least one)
    b_obs = max(b_observed, 1e-300)
    scaled = level_eq * (cs / max(level_eq[bb - 1], 1e-300))
    # (a reading whose simulated b reach ~0 has a log-spread of hundreds: the band is then every B, not an overflow)
    low_level, high_level = b_obs * math.exp(-min(spread[1], 600.0)), b_obs * math.exp(min(spread[0], 600.0))
    run = run_around((scaled >= low_level) & (scaled <= high_level), bb) or (bb, bb)
    band = (max(1, min(run[0], bb, profile[0])), min(n, max(run[1], bb, profile[1])))
    return {"p": p, "family": family, "bb": bb, "cm": cm, "c_agg": c_agg, "drop": drop, "stat": stat, "dof": dof,
            "se": se, "identified": identified, "band": band, "score": score}


def _reading(family, bb, a, b, drop, table, gls, expect, tw_of, n) -> dict:
    """A reading's fully specified expectation, its statistic (U3) and its Gaussian log-likelihood."""
    k = int(table["k"][bb - 1])
    if family is None:  # the free fit: T = a m m^T + b Sigma refitted
        cm, cs, c_agg = a, b, a

        def statistic(t):
            _, b_, q_ = gls.fit(t)
            return (k - 1) * q_ / (2 * max(b_, 1e-300) ** 2)
    else:  # T = coef_m m m^T + coef_S Sigma (readings (L1))
        cm, cs = float(table[family][0][bb - 1]), float(table[family][1][bb - 1])
        c_agg = float(aggregation_scale(n, drop, family)[bb - 1])

        def statistic(t):
            r = tw_of(t - expect @ np.array([cm, cs]))
            return (k - 1) * float(r @ r) / (2 * cs**2)
    return {"family": family, "bb": bb, "cm": cm, "cs": cs, "c_agg": c_agg, "drop": drop, "k": k,
            "dof": gls.m - 2 if family is None else gls.m, "statistic": statistic}


def judge_shuffled(theirs_entries: np.ndarray, grad_entries: np.ndarray, roundoff: float,
                   rng: np.random.Generator, draws: int = SHUFFLE_BOOTSTRAP) -> ShuffledTest:
    """Accept or reject ``shuffled`` on the tested diagonal entries (module docstring, (U1)-(U3)).

    theirs_entries : (M,) THEIRS on the tested entries; grad_entries : (N, M) the per-example
    gradients there, rows in any order; roundoff : residual size treated as round-off.
    Of the readings of the fitted weights (``hypotheses``: a loader family of ``readings`` at a B, or
    the free fit) that pass, the most likely under (U2)-(U3) is reported, with its p-value against its
    own simulated shuffled-loader Fishers.
    """
    n = grad_entries.shape[0]
    mm, sigma = expectation_terms(grad_entries)
    gls = GLS(mm, sigma, floor=(10 * roundoff) ** 2 * 1e-6)
    if gls.m < 8:
        return ShuffledTest(False, f"too few directions with sampling variance to judge shuffled (M = {gls.m})")
    gls.heavy_rows(grad_entries)
    a, b, _ = gls.fit(theirs_entries)
    if b <= 0:
        return ShuffledTest(False, f"not a shuffled-loader Fisher: THEIRS ~= {a:.3g} m m^T + {b:.3g} Sigma needs a "
                                   "positive weight on Sigma", entries=gls.m)
    tw_of = lambda t: gls.basis.T @ t / gls.sd  # noqa: E731
    expect = np.stack([mm, np.diag(sigma)], axis=1)
    tables = loader_tables(n)
    readings = []
    for drop in (False, True):
        for family, bb in hypotheses(a, b, n, tables[drop], drop):
            reading = _reading(family, bb, a, b, drop, tables[drop], gls, expect, tw_of, n)
            reading["stat"] = reading["statistic"](theirs_entries)
            # readings are ranked by the Gaussian log-likelihood of (U2)-(U3): a vague reading (K = 2)
            # explains any residual with a huge variance and pays M log sigma^2 for it; the free
            # fit pays log M for its extra parameter (BIC)
            reading["log_like"] = (-0.5 * (reading["stat"] + gls.m * math.log(2 * reading["cs"] ** 2 / (reading["k"] - 1)))
                                   - (math.log(gls.m) if family is None else 0.0))
            readings.append(reading)
    if not readings:
        return ShuffledTest(False, "not a shuffled-loader Fisher: every reading implies a single batch", entries=gls.m)
    readings.sort(key=lambda r: (r["family"] is None, -r["log_like"]))  # the families before the free fit (a scale bug)
    # the simulations stream all N M entries per draw: a float32 copy halves the bytes; its round-off, 6e-8
    # relative per entry (summed in float64), is far below a loader's relative noise sqrt(2 / (K - 1)) >= sqrt(2 / N) (U2)
    sim_entries = grad_entries.astype(np.float32)
    chosen = readings[:SIMULATED_READINGS]
    free = [r for r in readings if r["family"] is None]
    if free and free[0] not in chosen:  # the free fit keeps a slot: a per-batch-sum loop is named only through it
        chosen = readings[:SIMULATED_READINGS - 1] + free[:1]
    judged = [_simulate_reading(reading, a, b, tables, sim_entries, theirs_entries, expect, gls, n, draws, rng)
              for reading in chosen]
    # the most likely passing reading by the synthetic likelihood of the free fit's (a, log b, log q); the
    # free reading (a scale bug) pays log M for its extra parameter (BIC)
    for j in judged:
        j["score"] -= 0.0 if j["family"] else math.log(gls.m)
    passing = sorted((j for j in judged if j["p"] >= SHUFFLED_ALPHA), key=lambda j: (j["family"] is None, -j["score"]))
    # among the passing readings the data cannot tell apart (within BAND_LOG_LIKELIHOOD of the best score),
    # the simplest family wins: the order of readings.FAMILIES (averaged, summed, over N; mean before sum)
    if passing:
        top = [j for j in passing if j["family"] is not None and j["score"] >= passing[0]["score"] - BAND_LOG_LIKELIHOOD]
        passing.sort(key=lambda j: (j not in top, FAMILIES.index(j["family"]) if j in top else 0))
    best = passing[0] if passing else max(judged, key=lambda j: j["p"])
    family, b_int, c, drop = best["family"], best["bb"], best["cm"], best["drop"]
    p_noise, stat, dof, scale_se, identified = best["p"], best["stat"], best["dof"], best["se"], best["identified"]
    # the 99% band of B: the union of the bands of every passing reading of the same family (a short last
    # batch makes the noise jagged in B, so a neighbour may explain THEIRS as well)
    kin = [j for j in passing if j["family"] == family and j["score"] >= best["score"] - BAND_LOG_LIKELIHOOD] or [best]
    low, high = min(j["band"][0] for j in kin), max(j["band"][1] for j in kin)
    drops = {j["drop"] for j in kin}
    # drop_last is told only when every passing reading agrees and no B in the band divides N (there
    # the loader has no short batch to keep or drop)
    drop = drop if len(drops) == 1 and not any(n % b == 0 for b in range(low, high + 1)) else None
    # c and B are confounded when m m^T is negligible (summed at B looks like averaged at a smaller B).
    # Identified when the m m^T weight a of simulated loaders WITHOUT the short last batch (whose few
    # rows add noise along m m^T too, which is not confounding) has sd <= c / 4, or when no reading of
    # another family (or the free fit) passes within BAND_LOG_LIKELIHOOD of the best one
    # A free fit stands for the family its c names (``readings.named_family``); a rival naming ANOTHER family means the
    # data cannot tell the two loops apart (an over-N per-batch-sum loop read as summed at a smaller B): then
    # the reading is not identified, whatever the spread of a says
    def stands_for(j):  # a free reading's family by its c (readings.named_family), else its own
        return j["family"] or named_family(j["cm"], j["se"], *j["band"], tables[bool(j["drop"])], n)[0]

    named = stands_for(best)
    rivals = [j for j in passing if j is not best and j["score"] >= best["score"] - BAND_LOG_LIKELIHOOD
              and stands_for(j) != named]
    if family is None:  # the free fit's drop_last is not informative: it does not model the short batch's weight
        drop = None
    if draws >= 10 and passing and not rivals:
        identified = True
    elif rivals:
        identified = False
    elif draws >= 10 and not best["drop"] and n % b_int and n // b_int >= 2:  # only then: 32 more simulations
        sims = best["c_agg"] * simulate(sim_entries, b_int, draws, rng, drop_last=True,
                                        batch_loss="mean" if family is None else family.batch_loss)
        identified = float(np.std([gls.fit(t)[0] for t in sims], ddof=1)) <= 0.25 * abs(c)
    test = ShuffledTest(False, "", float(b_int), b_int, (float(low), float(high)), c, scale_se, entries=gls.m,
                        chi2=stat, p_noise=p_noise, drop_last=drop, aggregation_scale=best["c_agg"])
    if p_noise < SHUFFLED_ALPHA:
        test.reason = (f"not shaped like a shuffled loader's noise: chi2 = {stat:.4g} over {dof} directions at the "
                       f"implied B = {b_int} (p = {p_noise:.2g})")
        return test
    if family is None:  # the free fit: named the first family whose m m^T weight is c within 2 se at a B of the
        # band (a per-batch sum's c ~ B^2 pins B better than the free fit's alpha = b / a), at the closest such B
        table = tables[bool(best["drop"])]
        family, b_named = named_family(c, scale_se, low, high, table, n)
        if family is not None:  # simulated (ranking) as that family's loader: c_agg times its per-batch loss
            band, b_int = max(2 * scale_se if math.isfinite(scale_se) else 0.1 * c, 1e-9 * c), b_named
            test.aggregation_scale = float(aggregation_scale(n, bool(best["drop"]), family)[b_int - 1])
            test.batch_size, test.implied_batch_size = b_int, float(b_int)
            if family.batch_loss == "sum" and draws >= 10:  # its own loaders' m m^T weight and b / a (band.py), not the
                # free fit's band (a per-batch-MEAN loader's: a 5-row batch carries 85 % of its noise, 0.02 % of a sum's)
                low, high = sum_family_band(a, b, family, b_int, n, gls.fit, lambda drop: simulate(
                    sim_entries, b_int, 2 * draws, rng, drop, "sum"))
            else:  # united with the B whose m m^T weight is within 2.58 se of c (each a 99% band: the union is one)
                by_c = run_around(np.abs(c - table[family][0]) <= 2.58 * band / 2, b_int)
                low, high = (min(low, by_c[0]), max(high, by_c[1])) if by_c else (low, high)
            test.batch_size_interval = (float(low), float(high))
    if family is not None:
        test.reduction, test.batch_loss = family.aggregation, family.batch_loss
    test.identified = identified
    test.accepted = True
    last = {True: ", drop_last", False: ", the short last batch kept", None: ", drop_last or not (cannot tell)"}
    test.reason = (f"consistent with a shuffled loader{last[drop] if n % b_int else ''}"
                   f"{'' if family is None else ' (' + family.name + ')'}: B = {b_int} (99% {low}..{high}), "
                   f"chi2 = {stat:.4g} over {dof} directions (p = {p_noise:.2g})")
    return test
