"""One rule for statistical verdicts: every statistical candidate scored on one scale.

``mc`` (with its S) and ``shuffled`` (with its B, drop_last, averaged or summed) each pass or fail
their own test (statistics.py, shuffled.py). When both pass -- a confident net makes both noise
models wide -- they are compared on the SAME tested diagonal entries t : (M,) by the synthetic
log-likelihood (Wood 2010) of one summary of t, the same for both,

    u(t) = (a, b, log q):   t ~= a m m^T + b diag(Sigma) in the metric Sigma o Sigma, q its residual      (R1)

(shuffled.GLS), under draws of each candidate at its fitted parameters:

    mc         c (F + (d - F) / sqrt(S)),  d the genuine one-sample draws, c least squares, S = S_hat
    shuffled   c x simulated loader Fishers at the reading's B and drop_last

    score = sum_j log p_j(u_j(t)) - k/2 log M                                                  (R2)

with p_j a split normal fitted to the draws' u_j (the sd on the observed side is the larger of the
sd and that side's semi-deviation) and k = 2 free parameters for each (c, S; c, B), so the penalty
cancels. The better score is the verdict when it wins by MARGIN; otherwise "cannot tell" naming
both. A deterministic candidate that fits within round-off always wins before any of this
(diagnosis.py). Simulated rather than Gaussian because a confident net's one-sample mc draws and a
few-row batch's shuffled draws are heavy-tailed: a Gaussian likelihood of t (measured: mc -628
against shuffled +89 for a genuine mc estimate of a very confident net) penalises the heavier model.

``loader_moments`` is the reference implementation of the mean and covariance derived in
docs/shuffled-loader-fisher.md ("A short last batch, and drop_last").
"""

from __future__ import annotations

import math

import numpy as np

from .readings import FAMILIES, aggregation_scale, coefficients
from .sampled_moments import summary
from .shuffled import GLS, expectation_terms, simulate, synthetic_log_likelihood

#: Log-likelihood units by which the better statistical candidate must win (a likelihood ratio of
#: e^3 ~ 20, "strong" on Kass & Raftery's scale); less is "cannot tell".
MARGIN = 3.0
#: Simulated draws per candidate behind each score. The scores' difference has a Monte Carlo sd of 2.8 at
#: 64 draws and 0.8 at 256 (12 seeds, the confident net of tests/verify/test_diagnose_ranking.py, whose
#: mean difference is 2.3): at 64 the margin of 3 was decided by the draws, not by THEIRS.
SCORE_DRAWS = 256
#: Draws per candidate of ``centred_draw_scores`` (at 32 a score difference's Monte Carlo sd is comparable
#: to MARGIN, and the draws, not THEIRS, would decide).
CENTRED_DRAWS = 128


def loader_moments(grad_entries: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of one shuffled-loader Fisher's diagonal entries, averaged, batches of `sizes`.

    grad_entries : (N, M) per-example gradients; sizes : (K,) the batches (a random partition of
    the rows, or of a random subset with drop_last). mean : (M,) m^2 + alpha-bar diag(Sigma) (exact);
    covariance : (M, M) 1/K^2 (2 (Sigma o Sigma) v2 + kappa v4), v2 = sum_k alpha_k^2 + K (K - 1)/(N - 1)^2,
    v4 = sum_k 1 / s_k^3 (Gaussian batch means plus the leading, with-replacement fourth-cumulant
    term; it overstates a few-row batch's kurtosis for heavy-tailed gradients). Naive twin: the
    moments of random partitions (tests/verify/test_diagnose_ranking.py).
    """
    n = grad_entries.shape[0]
    m = grad_entries.mean(axis=0)
    centred = grad_entries - m
    sigma = centred.T @ centred / n
    sq = centred * centred
    kappa = sq.T @ sq / n - np.outer(np.diag(sigma), np.diag(sigma)) - 2 * sigma * sigma
    s = np.asarray(sizes, dtype=np.float64)
    k = s.size
    alpha = (n - s) / (s * max(n - 1, 1))
    v2 = float(np.sum(alpha**2)) + k * (k - 1) / max(n - 1, 1) ** 2
    v4 = float(np.sum(1.0 / s**3))
    return m * m + alpha.mean() * np.diag(sigma), (2 * sigma * sigma * v2 + kappa * v4) / k**2


def _summary(gls, t: np.ndarray) -> np.ndarray:
    """(a, b, log q): the free fit t ~= a m m^T + b Sigma in the metric Sigma o Sigma and its residual
    (shuffled.GLS), a summary defined for any t and the same for every candidate."""
    a, b, q = gls.fit(t)
    return np.array([a, b, math.log(max(q, 1e-300))])


def simulated_scores(t: np.ndarray, grad_entries: np.ndarray, roundoff: float, mc_fit, shuffled_fit,
                     rng: np.random.Generator, draws: int = SCORE_DRAWS) -> dict:
    """{'mc': score, 'shuffled': score}: the synthetic log-likelihood (Wood 2010; independent split-normal
    coordinates, shuffled.synthetic_log_likelihood) of the summary (a, b, log q) of t under draws of
    each candidate at its fitted parameters, k = 2 free parameters each (the penalty cancels).

    mc_fit : (exact (M,), one-sample draws (D, M), S): draws at S are F + (d - F) / sqrt(S), scaled by
    the least-squares c; shuffled_fit : (B, c_agg, drop_last, per-batch loss): ``shuffled.simulate`` at that
    reading, times c_agg.
    Simulated, not Gaussian, because a confident net's one-sample mc draws and a few-row batch's
    shuffled draws are heavy-tailed: a Gaussian likelihood of t penalises the heavier model unfairly.
    """

    mm, sigma = expectation_terms(grad_entries)
    gls = GLS(mm, sigma, floor=(10 * roundoff) ** 2 * 1e-6)
    observed = _summary(gls, t)
    exact, one_sample, samples = mc_fit
    c_mc = float(t @ exact) / max(float(exact @ exact), 1e-300)
    mc_draws = c_mc * (exact + (one_sample - exact) / math.sqrt(max(samples, 1e-300)))
    batch_size, c_sh, drop_last, batch_loss = shuffled_fit
    sh_draws = c_sh * simulate(grad_entries, batch_size, draws, rng, drop_last=drop_last, batch_loss=batch_loss)
    penalty = math.log(t.size)  # k/2 log M with k = 2 for both
    return {name: synthetic_log_likelihood(observed, np.array([_summary(gls, d) for d in sims])) - penalty
            for name, sims in (("mc", mc_draws), ("shuffled", sh_draws))}


def rank(scores: dict) -> tuple[str | None, float]:
    """(the best name, or None when the best does not win by MARGIN; the margin best - second)."""
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    if len(ordered) == 1:
        return ordered[0][0], math.inf
    margin = ordered[0][1] - ordered[1][1]
    return (ordered[0][0] if margin >= MARGIN else None), margin


def centred_scores(t: np.ndarray, exact: np.ndarray, empirical: np.ndarray, draws: dict) -> dict:
    """{name: score} (R2) of every passing statistical candidate when 'sampled' or 'subset' passes too.

    The summary is sampled.summary's (log c_hat, log Q, log shape, lean towards E) of t : (M,) against
    c F on their tested entries, under each candidate's draws {name: (D, M)} at its fitted parameters; k = 2
    free parameters each (the penalty cancels). It is wider than (R1)'s because mc, a loader at sampled labels
    and a subset share the expectation c F (or c E) and differ only in how their noise is spread over the
    entries; where it is spread alike, the margin is small and the answer "cannot tell" names them.
    """
    observed = summary(t, exact, empirical)[0]
    penalty = math.log(t.size)
    return {name: synthetic_log_likelihood(observed, summary(sims, exact, empirical)) - penalty
            for name, sims in draws.items()}


def centred_draw_scores(t_entries, grad_entries, one, mc_test, shuffled, centred: dict, rng,
                        shuffled_entries=None) -> dict:
    """``centred_scores`` of mc, shuffled and sampled.py's tests that pass ({} when fewer than two pass).

    t_entries : (M_screen,) THEIRS; grad_entries : (N, M_screen) at the observed labels; one : the one pass;
    shuffled_entries : the entries the shuffled reading simulates (those at the predicted labels for a reading there;
    default grad_entries).
    CENTRED_DRAWS draws of each at its fitted parameters on sampled.judge_centred's entries: mc as in
    ``simulated_scores``, shuffled by shuffled.simulate at its reading (its aggregation factor and per-batch
    loss), sampled.py's by their own ``draw``.
    """
    rng = rng.spawn(1)[0]  # a child stream (as sampled.judge_centred)
    sub = next(iter(centred.values())).sub
    draws = {name: test.draw(CENTRED_DRAWS, rng) for name, test in centred.items() if test.accepted}
    if mc_test is not None and mc_test.accepted:
        exact, d = one.mc_mean[sub], one.mc_draws[:, sub]
        c_mc = float(t_entries[sub] @ exact) / max(float(exact @ exact), 1e-300)
        draws["mc"] = c_mc * (exact + (d - exact) / math.sqrt(max(mc_test.implied_samples, 1e-300)))
    empirical = np.mean(grad_entries[:, sub] ** 2, axis=0)
    scores = centred_scores(t_entries[sub], one.mc_mean[sub], empirical, draws) if draws else {}
    if shuffled is not None and shuffled.accepted:
        # profiled over B: its reading's B and the PROFILE_SIZES B of its band whose expected scale (L1) is nearest
        # THEIRS's. The summary's scale coordinate moves fast with B (a summed family's K e(B) is jagged), so the
        # point estimate alone scored -27 and -68 where B = 64, in the band, scored -4.8 and -3.6 (a shuffled
        # loader of 64 summed over K, seeds 1008 and 1011), and a subset of ~90 rows (-4.8, -3.9) led it. The B
        # are compared on PROFILE_DRAWS draws each, the best scored on CENTRED_DRAWS (cost: 0.6 s -> 0.2 s at N = 10^4)
        own = grad_entries if shuffled_entries is None else shuffled_entries
        g = np.ascontiguousarray(own[:, sub], dtype=np.float32)  # read by every draw: contiguous, half the bytes

        def score(b, c_agg, count):
            sims = c_agg * simulate(g, b, count, rng, drop_last=bool(shuffled.drop_last),
                                    batch_loss=shuffled.batch_loss or "mean")
            return centred_scores(t_entries[sub], one.mc_mean[sub], empirical, {"s": sims})["s"]

        sizes = _profile_sizes(t_entries[sub], own[:, sub], one.mc_mean[sub], shuffled)
        best = max(sizes, key=lambda size: score(*size, PROFILE_DRAWS)) if len(sizes) > 1 else sizes[0]
        scores["shuffled"] = score(*best, CENTRED_DRAWS)
    return scores if len(scores) >= 2 else {}


#: B besides the reading's own at which ``centred_draw_scores`` scores a shuffled reading, on PROFILE_DRAWS draws each.
PROFILE_SIZES = 3
PROFILE_DRAWS = 32


def _profile_sizes(t: np.ndarray, g: np.ndarray, exact: np.ndarray, shuffled) -> list[tuple[int, float]]:
    """[(B, c_agg(B))]: the reading's B and, for a named family (readings.FAMILIES), the PROFILE_SIZES B of the
    band [low, high] whose expectation c_agg (coef_m m^2 + coef_S sigma^2) (L1) on the entries has the sum
    nearest THEIRS's (the summary's scale coordinate, sampled_moments.summary, relative to exact)."""
    own = shuffled.aggregation_scale if math.isfinite(shuffled.aggregation_scale) else shuffled.scale
    out = [(int(shuffled.batch_size), float(own))]
    family = next((f for f in FAMILIES if (f.aggregation, f.batch_loss) == (shuffled.reduction, shuffled.batch_loss)),
                  None)
    low, high = shuffled.batch_size_interval
    if family is None or not (math.isfinite(low) and math.isfinite(high)):
        return out
    n = g.shape[0]
    drop = bool(shuffled.drop_last)
    m = g.mean(axis=0)
    sigma = np.mean((g - m) ** 2, axis=0)
    coef_m, coef_s = coefficients(n, drop, family)  # the aggregation factor included
    sizes = np.arange(max(int(low), 2), min(int(high), n) + 1)
    if drop:
        sizes = sizes[n // sizes >= 1]
    predicted = (coef_m[sizes - 1] * float(m @ m) + coef_s[sizes - 1] * float(sigma.sum())) / max(float(exact.sum()), 1e-300)
    observed = float(t.sum()) / max(float(exact.sum()), 1e-300)
    scale = aggregation_scale(n, drop, family)
    for b in sizes[np.argsort(np.abs(np.log(np.maximum(predicted, 1e-300) / max(observed, 1e-300))))]:
        if len(out) > PROFILE_SIZES:
            break
        if int(b) != out[0][0]:
            out.append((int(b), float(scale[b - 1])))
    return out
