"""Which Fisher did they compute?  Diagnose a foreign curvature file against every estimator.

Published EWC code disagrees on what "the Fisher" is: some square the gradient of a
minibatch-mean loss, some use the observed labels, some sample labels from the model, some
forget the 1/N or divide twice. Given THEIRS (a diag or full curvature npz, EXCHANGE.md) and
the same weights and data, ``diagnose`` computes every candidate F on our side and fits

    THEIRS ~= c * F,     c = <T, F> / <F, F>,     rel_error = ||T - c F|| / ||T||          (1)

(least squares on the flattened arrays, Frobenius norms). The candidates are

- ``empirical``, ``exact`` (= ``ggn`` here), ``pred`` and, for small problems, ``hessian``
  (ewc_ref.fisher);
- ``batched`` for every plausible minibatch size B: all divisors of N, the powers of two up
  to N and the common sizes 8, 16, 32, 64, 100, 128, 256 (B = 1 is ``empirical`` itself:
  each minibatch is one example). All of them come from one pass over the per-example
  gradients: the gradient sum of rows [a, b) is the difference of two prefix sums
  (``batched_fishers``; its naive twin is ``ewc_ref.fisher(estimator='batched')`` per B);
- ``mc``, judged statistically (below), because an mc estimate equals ``exact`` only in
  expectation.

A deterministic candidate fits when rel_error <= ``tol``, a round-off threshold that depends
on the precision THEIRS was computed in (``roundoff_tolerance``): 1e-8 for float64, 1e-4 for
float32 (detected when every value of THEIRS, or of the model's parameters, is a float32
number written as float64, as ``.double()`` exports are). When several fit, the best one wins;
when none fits and ``mc`` is not accepted either, the answer is ``"none"``: a Fisher of the
wrong thing must not be forced into a class.

Judging ``mc`` (THEIRS = c/(N S) sum_{n,s} g_ns g_ns^T, y_ns ~ p(y | x_n)). Given x_n, one
draw's entry q = g_i g_j has a mean and a covariance with the other entries that are exactly
computable from the label distribution (``entry_moments``):

    categorical   enumerate the C labels with weights p_k:  u_k = J^T (p - e_k),
                  q_k = u_ki u_kj,  E = sum_k p_k q_k,  Cov = sum_k p_k (q_k - E)(q_k - E)^T
    gaussian,     g = J^T e with independent zero-mean e_c, E e_c^2 = m2_c, fourth cumulant k4_c
    bernoulli     (gaussian: e = (f - y)/sigma^2, m2 = 1/sigma^2, k4 = 0; bernoulli: e = p - y,
                  m2 = p (1 - p), k4 = m2 (1 - 3 m2) - 3 m2^2); with a = J[:, i] etc. and
                  s = J^T diag(m2) J:  E = s_ij,
                  Cov(g_i g_j, g_k g_l) = sum_c k4_c a_ic a_jc a_kc a_lc + s_ik s_jl + s_il s_jk

The examples and the samples are independent, so for the mean over N examples and S samples

    E[T] = c F,    Cov[T] = c^2 Sigma / S,    Sigma = 1/N^2 sum_n Cov_n                     (2)

on a set of M tested entries (all of a diagonal up to MC_ENTRIES, else a seeded random subset;
for full THEIRS half diagonal, half off-diagonal). Whitening the residual with the
eigendecomposition Sigma = V diag(lambda) V^T gives w_k = v_k^T (T/c - F) / sqrt(lambda_k),
independent and ~ N(0, 1/S) when the CLT holds over the N examples. Then

    Q1 = sum_k w_k^2 ~ chi2_M / S,     implied S_hat = M / Q1                              (3)

and ``mc`` is accepted unless (a) THEIRS is noisier than one sample per example,
P(chi2_M >= Q1) < MC_ALPHA, or (b) the residual is not shaped like sampling noise: the mean of
w^2 over the low-variance half of the directions divided by that over the high-variance half
is F(M/2, M/2)-distributed under mc whatever S is, and a two-sided p-value < MC_ALPHA rejects:

    ratio = mean_{k in low half} w_k^2 / mean_{k in high half} w_k^2                     (4)

Both distributions assume the CLT over the N examples, which fails for confident networks
(a rarely sampled wrong label has a huge gradient), so each p-value is also computed against
MC_BOOTSTRAP genuine one-sample estimates (labels drawn from the model, normal fit to the
log of the statistic), and mc is rejected only when both p-values are below MC_ALPHA.
(It decides verdicts: on a 5-10-4 net with mean max softmax 0.86-0.93 and N = 100, 7 of 40
genuine one-sample estimates get Gaussian-theory p-values of 2e-7 to 3e-74 and calibrated ones
of 3e-5 to 0.65; tests/test_diagnose.py::test_bootstrap_calibration_accepts_genuine_mc_where_the_clt_fails.)
The scale's Monte Carlo standard error is c sqrt(F^T Sigma F / S) / <F, F> on those entries.

A systematic error (a Fisher at the wrong parameters, clipped values) puts its residual where
sampling cannot (ratio >> 1); squaring a gradient of the wrong thing fails (a). Residual
outside the span of Sigma (entries no label can change) rejects at once. Limitation: a
systematic error that happens to look like sampling noise cannot be told apart from mc by
any test on THEIRS alone. Known defect: the residual T/c - F uses the least-squares c of (1),
whose own sampling error (1/c - 1) F lands in directions of little or no sampling variance
when Sigma is (nearly) singular: N (C - 1) < M, or very confident predictions. There genuine
mc estimates are rejected ("directions that mc sampling cannot change"): measured on the
5-10-4 net, S = 1, 20 seeds: 0/20 accepted at N = 30 (N (C - 1) = 90 < M = 104) and 11/20 at
N = 100 with mean max softmax 0.93 (20/20 at N >= 100 with 0.49-0.86). Refitting c in the
whitened metric accepts 20/20 and 17/20 but biases S_hat up 2-3x on confident nets: not done.

``mc``'s expectation is ``exact``, so when ``exact`` fits within round-off it wins (an mc
estimate with S -> infinity is indistinguishable from it) and mc is not judged.

Scales are reported as floats at full precision and described in words by matching c with
the factors buggy code produces (``describe_scale``): N ("the 1/N average is missing"),
1/N ("divided by N twice"), N/(N-1), B^2 (the squared gradient of a minibatch SUM), ...
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2, norm
from scipy.stats import f as f_dist

from ._validate import as_float_array, check_positive_int
from .curvature import Curvature, curvature_from_arrays, fisher
from .likelihoods import Bernoulli, Categorical, Gaussian, Likelihood
from .loss import check_model_data
from .mlp import MLP

#: Relative residual ||T - cF|| / ||T|| accepted as round-off, by the precision THEIRS was computed in.
#: float64: two correct float64 computations differ by summation order, ~(depth + log2 N) eps64 ~ 1e-13
#: relative; 1e-8 leaves 5 orders of headroom and is still 4 orders below the closest genuinely
#: different matrices of the catalogue (tests/test_diagnose.py). float32: eps32 = 6e-8; a torch
#: float32 Fisher of the docs example differs from ours by 6e-7 (docs/verify-a-pytorch-ewc.md),
#: 1e-4 leaves a factor ~170 for deeper nets and larger N and still separates N/(N-1) (1/N >= 5e-4 for
#: N <= 2000 is absorbed by the scale, not the residual) and neighbouring batch sizes (>= 1e-2).
ROUNDOFF_TOL = {"float64": 1e-8, "float32": 1e-4}
COMMON_BATCH_SIZES = (1, 8, 16, 32, 64, 100, 128, 256)
#: Entries used by the mc test (all of a diagonal up to this size, else a seeded random subset):
#: their exact M x M covariance costs N C M^2 and an eigendecomposition M^3.
MC_ENTRIES = 256
#: Significance level of each mc test (chi-square and F): mc is wrongly rejected with probability
#: <= 2e-6 when the CLT holds, and a systematic error must be ~5 sigma to be caught.
MC_ALPHA = 1e-6
#: Genuine one-sample mc estimates simulated to calibrate both tests beyond the CLT.
MC_BOOTSTRAP = 64
#: hessian is a candidate when P * N is at most this: its diagonal costs P Hessian-vector
#: products over N rows, ~P^2 N (36 s for P = 2410, N = 1000 on 2 cores); diagnose(hessian=True)
#: or `ewc-ref diagnose --hessian` includes it regardless.
HESSIAN_LIMIT = 200_000


# --------------------------------------------------------------------------- results
@dataclass
class Candidate:
    """One estimator fitted to THEIRS by (1)."""

    estimator: str
    scale: float
    rel_error: float
    batch_size: int | None = None
    samples: int | None = None
    fits: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        if self.estimator == "batched":
            return f"batched, B = {self.batch_size}"
        if self.estimator == "mc" and self.samples is not None:
            return f"mc, S = {self.samples}"
        return self.estimator

    def to_json(self) -> dict:
        return {"estimator": self.estimator, "scale": self.scale, "rel_error": self.rel_error,
                "batch_size": self.batch_size, "samples": self.samples, "fits": self.fits, "note": self.note}


@dataclass
class MCTest:
    """The statistical judgement of ``mc`` (module docstring, (2)-(4))."""

    accepted: bool
    reason: str
    implied_samples: float = math.nan  # S_hat = M / Q1
    samples: int | None = None  # max(1, round(S_hat))
    entries: int = 0  # M, whitened directions tested
    chi2: float = math.nan  # Q = samples * Q1, ~ chi2_M under mc with that S
    p_noise: float = math.nan  # P(chi2_M >= Q1): THEIRS noisier than one sample per example?
    shape_ratio: float = math.nan  # mean w^2 of the low-variance half / of the high-variance half
    p_shape: float = math.nan  # two-sided F-test p-value of shape_ratio
    scale_se: float = math.nan  # standard error of the fitted scale under mc with `samples`

    def to_json(self) -> dict:
        def finite(value):
            return value if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)) else None

        return {"accepted": self.accepted, "reason": self.reason, "implied_samples": finite(self.implied_samples),
                "samples": self.samples, "entries": self.entries, "chi2": finite(self.chi2),
                "p_noise": finite(self.p_noise), "shape_ratio": finite(self.shape_ratio), "p_shape": finite(self.p_shape)}


@dataclass
class Diagnosis:
    """The answer of ``diagnose``: THEIRS ~= scale * F_estimator, or estimator = 'none'."""

    estimator: str
    scale: float
    rel_error: float
    batch_size: int | None
    samples: int | None
    candidates: list
    n: int
    n_params: int
    structure: str
    precision: str
    tol: float
    scale_words: str = ""
    runner_up: Candidate | None = None
    margin: float = math.nan  # runner-up error / winner error
    equivalent: list = field(default_factory=list)  # candidates whose matrix equals the winner's here
    mc: MCTest | None = None
    closest: Candidate | None = None

    def to_json(self) -> dict:
        """The object of EXCHANGE.md (`diagnose --json`), plus explanatory extras."""
        return {
            "estimator": self.estimator, "scale": self.scale, "batch_size": self.batch_size,
            "samples": self.samples, "rel_error": self.rel_error,
            "candidates": [c.to_json() for c in self.candidates],
            "scale_words": self.scale_words, "n": self.n, "n_params": self.n_params,
            "structure": self.structure, "precision": self.precision, "tol": self.tol,
            "runner_up": None if self.runner_up is None else self.runner_up.to_json(),
            "margin": self.margin if math.isfinite(self.margin) else None,
            "equivalent": [c.label for c in self.equivalent],
            "mc_test": None if self.mc is None else self.mc.to_json(),
        }

    def report(self, theirs_name: str = "THEIRS", top: int = 12) -> str:
        """Human-readable verdict: winner, scale in words, runner-up and margin, the correct Fisher."""
        lines = [f"{theirs_name}: {self.structure}, P = {self.n_params}; N = {self.n} examples; "
                 f"precision {self.precision} (round-off threshold {self.tol:g})", ""]
        if self.estimator == "none":
            best = self.closest
            lines.append("verdict     none: THEIRS matches no estimator within round-off (nor mc within its sampling noise)")
            lines.append(f"closest     {best.label}: THEIRS ~= {best.scale:.12g} x F, relative error {best.rel_error:.3g} "
                         f"({best.rel_error / self.tol:.3g} x the threshold)")
            lines.append("            a Fisher at other weights, of another loss, with capped values or mixed labels looks like this")
        else:
            winner = self.winner
            lines.append(f"verdict     {winner.label}: THEIRS = {self.scale:.12g} x F_{self.estimator}, "
                         f"relative error {self.rel_error:.3g}")
            lines.append(f"scale       {self.scale_words}")
            if self.estimator == "mc" and self.mc is not None:
                m = self.mc
                lines.append(f"mc test     implied S = {m.implied_samples:.3g} (reported S = {m.samples}); "
                             f"chi2 = {m.chi2:.4g} over M = {m.entries} whitened directions (expect ~M); "
                             f"shape F-test ratio {m.shape_ratio:.3g}, p = {m.p_shape:.2g}")
                lines.append("            mc's expectation is the exact Fisher: a larger S makes it indistinguishable from exact")
            if self.equivalent:
                lines.append(f"same here   {', '.join(c.label for c in self.equivalent)} (equal matrices on these weights and data)")
            if self.runner_up is not None:
                lines.append(f"runner-up   {self.runner_up.label}: relative error {self.runner_up.rel_error:.3g} "
                             f"(margin {self.margin:.3g} = runner-up error / winner error)")
        lines.append("")
        lines.append(f"correct EWC Fisher: the exact Fisher F = 1/N sum_n J_n^T Lambda_n J_n, a mean over the N = {self.n} examples")
        lines.append("  (ewc-ref fisher MODEL DATA --estimator exact); the Laplace posterior precision is "
                     f"N F + prior precision = {self.n} F + prior precision,")
        lines.append("  and the EWC penalty for the next task is lambda/2 sum_i F_i (theta_i - theta*_i)^2 added to its mean loss.")
        lines.append("")
        shown = self.candidates[:top]
        lines.append(f"candidates ({len(shown)} best of {len(self.candidates)}; scale c and relative error of THEIRS ~= c F):")
        lines.append(f"  {'estimator':<22} {'scale c':>22} {'rel_error':>11}  fits")
        for c in shown:
            mark = "yes" if c.fits else "no"
            lines.append(f"  {c.label:<22} {c.scale:>22.15g} {c.rel_error:>11.3g}  {mark}{('  ' + c.note) if c.note else ''}")
        return "\n".join(lines)

    @property
    def winner(self) -> Candidate | None:
        for c in self.candidates:
            if (c.estimator, c.batch_size) == (self.estimator, self.batch_size) and c.fits:
                return c
        return None


# --------------------------------------------------------------------------- scale fitting
def fit_scale(theirs: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Least-squares c with THEIRS ~= c F and the relative residual ||T - c F|| / ||T||, eq (1).

    Both arrays are flattened; norms are Frobenius. c = 0 and error 1 when F = 0.
    """
    t = np.ravel(theirs).astype(np.float64)
    f = np.ravel(candidate).astype(np.float64)
    ff = float(f @ f)
    tt = float(t @ t)
    if ff == 0.0 or tt == 0.0:
        return 0.0, 1.0
    c = float(t @ f) / ff
    return c, float(np.linalg.norm(t - c * f) / math.sqrt(tt))


def scale_factors(n: int, batch_size: int | None = None) -> list[tuple[float, str]]:
    """The scale factors buggy or variant code produces, with their explanation."""
    factors = [(1.0, "x 1: a mean over the N examples, the EXCHANGE.md convention")]
    if n > 1:
        factors += [
            (float(n), f"x N = {n}: the 1/N average is missing (a sum over examples)"),
            (1.0 / n, f"/ N = {n}: divided by N twice"),
            (n / (n - 1), f"x N/(N-1) = {n}/{n - 1}: divided by N - 1 instead of N"),
            ((n - 1) / n, f"x (N-1)/N = {n - 1}/{n}: divided by N + ... (N/(N-1) too many)"),
            (float(n) ** 2, f"x N^2 = {n}^2: the gradient of the summed loss, squared per example and summed"),
            (1.0 / n**2, f"/ N^2 = {n}^2: divided by N three times"),
        ]
    factors += [(2.0, "x 2: a factor 1/2 missing (e.g. the lambda/2 of the penalty folded in)"),
                (0.5, "x 1/2: a factor 1/2 folded in (e.g. the lambda/2 of the penalty)")]
    if batch_size is not None and batch_size > 1:
        b, k = batch_size, -(-n // batch_size)
        factors += [
            (float(b) ** 2, f"x B^2 = {b}^2: the gradient of the minibatch SUM (not mean) was squared"),
            (float(k), f"x K = {k}: summed over the K minibatches instead of averaged"),
            (float(k) * b**2, f"x K B^2 = {k} x {b}^2: minibatch sums squared and summed over minibatches"),
            (1.0 / k, f"/ K = {k}: divided by the number of minibatches twice"),
            (float(b), f"x B = {b}: multiplied by the batch size"),
            (1.0 / b, f"/ B = {b}: divided by the batch size once more"),
            (float(n) / k, f"x N/K = {n}/{k}: divided by N instead of K after summing"),
            (float(k) / n, f"x K/N = {k}/{n}: averaged over N instead of the K minibatches"),
        ]
        if k > 1:
            factors.append((k / (k - 1), f"x K/(K-1) = {k}/{k - 1}: divided by K - 1 instead of K"))
    return factors


def describe_scale(scale: float, n: int, batch_size: int | None = None, rtol: float = 1e-6) -> str:
    """The scale in words, matched against ``scale_factors`` within relative `rtol`.

    `rtol` should reflect the uncertainty of the fitted scale (round-off for a deterministic
    fit, the Monte Carlo standard error for mc): N/(N-1) differs from 1 by 1/(N-1) only.
    """
    if not math.isfinite(scale) or scale <= 0:
        return f"x {scale:.12g}: not a positive multiple (THEIRS is not a curvature of this kind)"
    best = min(scale_factors(n, batch_size), key=lambda item: abs(math.log(scale / item[0])))
    if abs(scale / best[0] - 1) <= rtol:
        words = best[1]
        if best[0] != 1.0 or abs(scale - 1) > 1e-12:
            words += f" (c = {scale:.12g})"
        return words
    return f"x {scale:.12g}: no simple factor of N, B or 2 (closest: {best[1].split(':')[0]})"


def roundoff_tolerance(theirs: np.ndarray, model: MLP | None = None) -> tuple[str, float]:
    """('float32' | 'float64', threshold): float32 when THEIRS or the model's parameters are
    float32 arrays or float32 values written as float64 (torch ``.double()`` exports)."""
    def is_float32(a):
        a = np.asarray(a)
        if a.dtype == np.float32:
            return True
        return bool(np.array_equal(a, a.astype(np.float32).astype(a.dtype)))

    arrays = [theirs] + ([model.theta] if model is not None else [])
    precision = "float32" if any(is_float32(a) for a in arrays) else "float64"
    return precision, ROUNDOFF_TOL[precision]


def candidate_batch_sizes(n: int) -> list[int]:
    """Divisors of N, powers of two up to N and the common sizes, within [1, N], sorted."""
    sizes = {d for d in range(1, math.isqrt(n) + 1) if n % d == 0}
    sizes |= {n // d for d in sizes}
    sizes |= {2**k for k in range(n.bit_length()) if 2**k <= n}
    sizes |= {b for b in COMMON_BATCH_SIZES if b <= n}
    sizes.add(n)
    return sorted(sizes)


# --------------------------------------------------------------------------- batched, all B at once
def _chunk_rows(model: MLP, width: int) -> int:
    return max(1, (4 * 1024**2) // max(1, width * model.n_params))


def batched_fishers(model: MLP, lik: Likelihood, x, y, batch_sizes, structure: str = "diag",
                    chunk_size: int | None = None) -> dict[int, np.ndarray]:
    """``batched`` Fishers for many minibatch sizes B from one pass over per-example gradients.

    F_B = 1/K sum_k gbar_k gbar_k^T, gbar_k = 1/|b_k| sum_{n in b_k} g_n over the k-th run of
    B consecutive rows (the last, partial run is a batch of its own), K = ceil(N / B).
    With the prefix sums s_m = sum_{n < m} g_n, sum_{n in [a, b)} g_n = s_b - s_a, so every
    B costs K subtractions of (P,) vectors after the single pass that forms the g_n in chunks.

    Returns {B: (P,) diagonal} for structure='diag', {B: (P, P)} for 'full'.
    The naive twin is ``ewc_ref.fisher(..., estimator='batched', batch_size=B)`` per B.
    """
    x, y = check_model_data(model, lik, x, y)
    n, p = x.shape[0], model.n_params
    sizes = [check_positive_int(b, "batch_sizes", upper=n) for b in batch_sizes]
    chunk = chunk_size or _chunk_rows(model, 1)
    dtype = np.result_type(x, model.theta)
    acc = {b: np.zeros(p, dtype) for b in sizes} if structure == "diag" else {b: [] for b in sizes}
    last_prefix = {b: np.zeros(p, dtype) for b in sizes}  # s at the last batch boundary passed
    last_boundary = dict.fromkeys(sizes, 0)
    prefix = np.zeros(p, dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        f, cache = model.forward(x[start:stop])
        G = model.per_sample_grads(cache, lik.grad(f, y[start:stop]))
        S = prefix + np.cumsum(G, axis=0)  # S[r] = s_{start + r + 1}
        for b in sizes:
            ends = np.arange((start // b + 1) * b, stop + 1, b)
            if stop == n and (ends.size == 0 or ends[-1] != n):
                ends = np.append(ends, n)
            if ends.size == 0:
                continue
            at_ends = S[ends - start - 1]
            starts = np.concatenate([[last_boundary[b]], ends[:-1]])
            sums = np.diff(np.vstack([last_prefix[b][None], at_ends]), axis=0)
            gbar = sums / (ends - starts)[:, None]
            if structure == "diag":
                acc[b] += np.einsum("kp,kp->p", gbar, gbar)
            else:
                acc[b].append(gbar)
            last_prefix[b], last_boundary[b] = at_ends[-1], int(ends[-1])
        prefix = S[-1]
    out = {}
    for b in sizes:
        k = -(-n // b)
        if structure == "diag":
            out[b] = acc[b] / k
        else:
            gbar = np.vstack(acc[b])
            out[b] = gbar.T @ gbar / k
    return out


# --------------------------------------------------------------------------- mc: exact moments
def _entries(n_params: int, structure: str, rng: np.random.Generator, limit: int = MC_ENTRIES):
    """Index pairs (i, j) tested by the mc test: diagonal entries, plus off-diagonal pairs for full."""
    if structure == "diag":
        i = np.arange(n_params) if n_params <= limit else np.sort(rng.choice(n_params, limit, replace=False))
        return i, i.copy()
    n_diag = min(n_params, limit // 2)
    d = np.arange(n_params) if n_diag == n_params else np.sort(rng.choice(n_params, n_diag, replace=False))
    n_off = min(limit - n_diag, n_params * (n_params - 1) // 2)
    i = rng.integers(0, n_params, 4 * n_off + 8)
    j = rng.integers(0, n_params, 4 * n_off + 8)
    keep = i < j
    pairs = np.unique(np.stack([i[keep], j[keep]], axis=1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:n_off]]
    return np.concatenate([d, pairs[:, 0]]), np.concatenate([d, pairs[:, 1]])


def _moments_per_example(lik: Likelihood, f: np.ndarray, A: np.ndarray, ii: np.ndarray, jj: np.ndarray):
    """Mean and covariance over y ~ p(y | f_n) of the entries q_e = g_{i_e} g_{j_e} of one draw.

    f : (n, C); A : (n, C, m) output-Jacobian columns J_n[:, cols]; ii, jj : (M,) indices into cols.
    Returns E : (n, M) and the covariance summed over the n examples, (M, M).
    """
    A_i, A_j = A[:, :, ii], A[:, :, jj]
    if isinstance(lik, Categorical):
        # Enumerate the C labels: u_k = J^T (p - e_k), q_k = u_ki u_kj with probability p_k.
        p = lik.mean(f)
        u_i = np.einsum("ncm,nc->nm", A_i, p)[:, None, :] - A_i  # (n, K, M)
        u_j = np.einsum("ncm,nc->nm", A_j, p)[:, None, :] - A_j
        q = u_i * u_j
        mean = np.einsum("nk,nkm->nm", p, q)
        centred = np.sqrt(p)[:, :, None] * (q - mean[:, None, :])
        return mean, np.einsum("nke,nkf->ef", centred, centred)
    # g = J^T e with independent zero-mean e_c of variance m2_c and fourth cumulant k4_c:
    # Cov(g_i g_j, g_k g_l) = sum_c k4_c a_ic a_jc a_kc a_lc + s_ik s_jl + s_il s_jk, s = A^T diag(m2) A.
    if isinstance(lik, Gaussian):
        m2 = np.full(f.shape, 1.0 / lik.sigma**2)  # e = (f - y) / sigma^2 ~ N(0, 1 / sigma^2)
        k4 = np.zeros(f.shape)
    elif isinstance(lik, Bernoulli):
        m2 = lik.hessian_diag(f)  # e = p - y: E e^2 = p (1 - p), E e^4 = m2 (1 - 3 m2)
        k4 = m2 * (1 - 3 * m2) - 3 * m2**2
    else:
        raise TypeError(f"lik: no mc moments for {type(lik).__name__}")
    s = np.einsum("nca,ncb,nc->nab", A, A, m2)  # (n, m, m)
    mean = s[:, ii, jj]
    s_ik, s_jl = s[:, ii][:, :, ii], s[:, jj][:, :, jj]
    s_il, s_jk = s[:, ii][:, :, jj], s[:, jj][:, :, ii]
    prod = A_i * A_j
    cov = np.einsum("nce,ncf,nc->ef", prod, prod, k4) + np.einsum("nef,nef->ef", s_ik, s_jl) + np.einsum("nef,nef->ef", s_il, s_jk)
    return mean, cov


def entry_moments(model: MLP, lik: Likelihood, x, i_index, j_index, bootstrap: int = 0, rng=None,
                  chunk_size: int | None = None):
    """Exact mean and covariance of a one-sample mc estimate's entries (i_e, j_e), eq (2).

    Returns
    -------
    mean : (M,) 1/N sum_n E_y[g_i g_j] (= the exact Fisher's entries)
    cov : (M, M) 1/N^2 sum_n Cov_y[q, q] (the covariance of a one-sample mc estimate)
    draws : (bootstrap, M) one-sample mc estimates of the entries, labels drawn from the model
        with `rng` (only when bootstrap > 0)
    """
    rng = np.random.default_rng(rng)
    x = model.check_input(x)
    i_index, j_index = np.asarray(i_index), np.asarray(j_index)
    n = x.shape[0]
    cols, inverse = np.unique(np.concatenate([i_index, j_index]), return_inverse=True)
    ii, jj = inverse[: len(i_index)], inverse[len(i_index):]
    c, m = model.n_outputs, len(i_index)
    width = max(c * model.n_params, m * m, len(cols) ** 2)
    chunk = chunk_size or max(1, (4 * 1024**2) // width)
    mean = np.zeros(m)
    cov = np.zeros((m, m))
    draws = np.zeros((bootstrap, m))
    unit = np.eye(c)
    model64 = model.with_theta(model.theta.astype(np.float64))
    for start in range(0, n, chunk):
        xc = x[start:start + chunk].astype(np.float64)
        f, cache = model64.forward(xc)
        J = model64.per_sample_grads(cache, np.broadcast_to(unit[:, None, :], (c, xc.shape[0], c)))  # (C, n, P)
        A = np.moveaxis(J[:, :, cols], 0, 1)  # (n, C, |cols|)
        e, v = _moments_per_example(lik, f, A, ii, jj)
        mean += e.sum(axis=0)
        cov += v
        if bootstrap:
            labels = lik.sample(f, rng, bootstrap)  # (n, K, ...)
            for k in range(bootstrap):
                g = np.einsum("nca,nc->na", A, lik.grad(f, labels[:, k]))  # (n, |cols|)
                draws[k] += np.einsum("ne,ne->e", g[:, ii], g[:, jj])
    if bootstrap:
        return mean / n, cov / n**2, draws / n
    return mean / n, cov / n**2


def judge_mc(theirs_entries: np.ndarray, scale: float, exact_entries: np.ndarray, cov: np.ndarray,
             roundoff: float, draws: np.ndarray | None = None) -> MCTest:
    """Accept or reject mc for the tested entries (module docstring, (3) and (4)).

    theirs_entries, exact_entries : (M,); cov : (M, M) one-sample covariance; roundoff : the
    size of a residual treated as round-off (directions with less sampling sd are dropped);
    draws : (K, M) simulated one-sample estimates that calibrate both statistics where the CLT
    is poor (confident predictions make rare labels' huge gradients dominate the noise).
    """
    if scale <= 0:
        return MCTest(False, "the fitted scale is not positive")
    residual = theirs_entries / scale - exact_entries
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]  # decreasing variance
    floor = max(1e-12 * float(lam[0]) if lam.size else 0.0, (10 * roundoff / scale) ** 2)  # sd >= 10 x round-off
    keep = lam > floor
    outside = residual - vec[:, keep] @ (vec[:, keep].T @ residual)
    if np.linalg.norm(outside) > 10 * roundoff / scale * math.sqrt(len(residual)):
        return MCTest(False, "THEIRS differs from exact in directions that mc sampling cannot change")
    m = int(keep.sum())
    if m < 8:
        return MCTest(False, f"too few directions with sampling variance to judge mc (M = {m})", entries=m)
    basis, sd = vec[:, keep], np.sqrt(lam[keep])
    half = m // 2

    def statistics(r):
        w2 = (basis.T @ r / sd) ** 2  # whitened squared residuals, ~ chi2_1 / S each
        return float(w2.sum()), float(np.mean(w2[half:]) / max(np.mean(w2[:half]), 1e-300))

    q1, ratio = statistics(residual)  # Q1: the chi-square statistic at S = 1
    if q1 == 0.0:
        return MCTest(False, "THEIRS equals exact exactly", entries=m)
    s_hat = m / q1
    samples = max(1, int(round(s_hat)))
    # p-values: the Gaussian-theory one, or the bootstrap one (a normal fit to the log of the
    # statistic over genuine one-sample draws) when larger: mc is rejected only when both are small.
    p_noise = float(chi2.sf(q1, m))
    p_shape = float(2 * min(f_dist.sf(ratio, m - half, half), f_dist.cdf(ratio, m - half, half)))
    if draws is not None and len(draws) >= 10:
        null = np.array([statistics(d - exact_entries) for d in draws])
        log_q, log_r = np.log(null[:, 0]), np.log(null[:, 1])
        p_noise = max(p_noise, float(norm.sf((math.log(q1) - log_q.mean()) / max(log_q.std(ddof=1), 1e-12))))
        z_ratio = abs(math.log(ratio) - log_r.mean()) / max(log_r.std(ddof=1), 1e-12)
        p_shape = max(p_shape, float(2 * norm.sf(z_ratio)))
    # c = <T, F>/<F, F> is linear in T: Var c = c^2 F^T Sigma F / (S <F, F>^2) on the tested entries.
    spread = float(exact_entries @ cov @ exact_entries)
    scale_se = float(scale * math.sqrt(max(spread, 0.0) / samples) / max(float(exact_entries @ exact_entries), 1e-300))
    test = MCTest(False, "", s_hat, samples, m, samples * q1, p_noise, ratio, p_shape, scale_se)
    if p_noise < MC_ALPHA:
        test.reason = (f"too noisy for mc: chi2 = {q1:.4g} at S = 1 over {m} directions (p = {p_noise:.2g}); "
                       f"implied S = {s_hat:.3g} < 1")
    elif p_shape < MC_ALPHA:
        where = "low" if ratio > 1 else "high"
        test.reason = (f"the residual is not shaped like sampling noise: {ratio:.3g} x more of it per direction in the "
                       f"{where}-variance half (p = {p_shape:.2g}; a systematic error)")
    else:
        test.accepted = True
        test.reason = f"consistent with mc sampling noise at S = {samples} (p = {p_noise:.2g} and {p_shape:.2g} >= {MC_ALPHA:g})"
    return test


# --------------------------------------------------------------------------- entry point
def _as_theirs(theirs, model: MLP) -> tuple[str, np.ndarray]:
    """('diag', (P,)) or ('full', (P, P)) from a Curvature, a dict of arrays or an array."""
    p = model.n_params
    if isinstance(theirs, Curvature):
        if theirs.structure not in ("diag", "full"):
            raise ValueError(f"theirs: diagnose handles 'diag' and 'full' curvatures, got structure {theirs.structure!r}")
        if theirs.n_params != p:
            raise ValueError(f"theirs: has P = {theirs.n_params} parameters, the model has {p}")
        return theirs.structure, np.asarray(theirs.data, dtype=np.float64)
    if isinstance(theirs, dict):
        return _as_theirs(curvature_from_arrays(dict(theirs), model, source="theirs"), model)
    array = as_float_array(theirs, "theirs")
    if array.shape == (p,):
        return "diag", array.astype(np.float64)
    if array.shape == (p, p):
        return "full", array.astype(np.float64)
    raise ValueError(f"theirs: expected a Curvature, a dict of per-parameter arrays, shape ({p},) or ({p}, {p}); got shape {array.shape}")


def diagnose(model: MLP, lik: Likelihood, x, y, theirs, batch_sizes=None, tol: float | None = None,
             rng=0, progress: bool = False, hessian: bool | None = None) -> Diagnosis:
    """Find the estimator and scale with THEIRS ~= scale * F_estimator (module docstring).

    Parameters
    ----------
    model, lik, x, y : the weights and data THEIRS was computed on (rows in their order)
    theirs : Curvature (diag or full), dict {state_dict name: array}, (P,) or (P, P) array
    batch_sizes : minibatch sizes to try for 'batched' (default ``candidate_batch_sizes(N)``)
    tol : round-off threshold on the relative residual (default ``roundoff_tolerance``)
    rng : seed or Generator for the mc test's entry subset (large P)
    progress : report the stages on stderr
    hessian : include the Hessian candidate (default: when P * N <= HESSIAN_LIMIT)

    Returns
    -------
    Diagnosis (``.to_json()`` is the EXCHANGE.md object, ``.report()`` the text)

    Raises
    ------
    ValueError naming the argument: THEIRS of the wrong shape, all-zero or non-finite; data
    that does not fit the model; non-finite parameters.
    """
    x, y = check_model_data(model, lik, x, y)
    if not np.all(np.isfinite(model.theta)):
        raise ValueError("model: parameters contain NaN or inf")
    structure, t = _as_theirs(theirs, model)
    if not np.all(np.isfinite(t)):
        raise ValueError("theirs: contains non-finite values (NaN or inf)")
    if not np.any(t):
        raise ValueError("theirs: all entries are zero; expected a curvature matrix with a nonzero entry")
    precision, default_tol = roundoff_tolerance(t, model)
    if tol is None:
        tol = default_tol
    elif not (isinstance(tol, float | int) and 0 < tol < 1):
        raise ValueError(f"tol: expected a number in (0, 1), got {tol!r}")
    n, p = x.shape[0], model.n_params
    if batch_sizes is None:
        batch_sizes = [b for b in candidate_batch_sizes(n) if b > 1]
    else:
        batch_sizes = sorted({check_positive_int(b, "batch_sizes", upper=n) for b in batch_sizes} - {1})
    if hessian is None:
        hessian = p * n <= HESSIAN_LIMIT
    rng = np.random.default_rng(rng)

    def log(message: str) -> None:
        if progress:
            sys.stderr.write(f"diagnose: {message}\n")
            sys.stderr.flush()

    matrices = {}
    names = ["empirical", "exact", "pred"] + (["hessian"] if hessian else [])
    for name in names:
        log(f"computing {name} ({structure})")
        matrices[(name, None)] = fisher(model, lik, x, y, estimator=name, structure=structure).data
    log(f"computing batched for {len(batch_sizes)} batch sizes")
    for b, matrix in batched_fishers(model, lik, x, y, batch_sizes, structure).items():
        matrices[("batched", b)] = matrix

    candidates = []
    for (name, b), matrix in matrices.items():
        c, err = fit_scale(t, matrix)
        note = "= batched with B = 1" if name == "empirical" else ("= ggn here" if name == "exact" else "")
        candidates.append(Candidate(name, c, err, batch_size=b, fits=err <= tol, note=note))

    exact_c = next(c for c in candidates if c.estimator == "exact")
    mc_test = None
    if not exact_c.fits:
        log("judging mc against the exact per-example label distributions")
        i_idx, j_idx = _entries(p, structure, rng)
        exact_entries, cov, draws = entry_moments(model, lik, x, i_idx, j_idx, bootstrap=MC_BOOTSTRAP, rng=rng)
        theirs_entries = t[i_idx] if structure == "diag" else t[i_idx, j_idx]
        roundoff = tol * float(np.linalg.norm(theirs_entries)) / math.sqrt(len(theirs_entries))
        mc_test = judge_mc(theirs_entries, exact_c.scale, exact_entries, cov, roundoff, draws)
        candidates.append(Candidate("mc", exact_c.scale, exact_c.rel_error, samples=mc_test.samples,
                                    fits=mc_test.accepted, note=mc_test.reason))
    else:
        candidates.append(Candidate("mc", exact_c.scale, exact_c.rel_error, samples=None, fits=False,
                                    note="not judged: exact fits within round-off (mc with S -> infinity)"))

    order = {"empirical": 0, "exact": 1, "pred": 2, "batched": 3, "hessian": 4, "mc": 5}
    candidates.sort(key=lambda c: (c.rel_error, order[c.estimator], c.batch_size or 0))
    deterministic = [c for c in candidates if c.fits and c.estimator != "mc"]
    if deterministic:
        winner = deterministic[0]
    elif mc_test is not None and mc_test.accepted:
        winner = next(c for c in candidates if c.estimator == "mc")
    else:
        best = candidates[0]
        return Diagnosis("none", best.scale, best.rel_error, None, None, candidates, n, p, structure, precision,
                         float(tol), scale_words=describe_scale(best.scale, n, best.batch_size, rtol=10 * best.rel_error),
                         mc=mc_test, closest=best)

    # Candidates whose matrix equals the winner's here (e.g. pred = empirical at 100% accuracy).
    win_matrix = matrices[(winner.estimator, winner.batch_size)] if winner.estimator != "mc" else matrices[("exact", None)]
    equivalent, others = [], []
    for c in candidates:
        if c is winner or c.estimator == "mc":
            if c is not winner and mc_test is not None:  # an unjudged mc is exact itself
                others.append(c)
            continue
        same = fit_scale(win_matrix, matrices[(c.estimator, c.batch_size)])[1] <= tol and c.fits
        (equivalent if same else others).append(c)
    if winner.estimator == "mc":  # exact has the same residual: the runner-up is the best other estimator
        others = [c for c in others if c.estimator != "exact"]
    runner_up = others[0] if others else None
    # float64 epsilon as the floor: an exact 0 residual should not give an astronomic margin
    margin = runner_up.rel_error / max(winner.rel_error, np.finfo(float).eps) if runner_up is not None else math.inf
    if winner.estimator == "mc":
        rtol = 4 * mc_test.scale_se / max(abs(winner.scale), 1e-300)
        words = describe_scale(winner.scale, n, None, rtol=rtol)
        words += f" (+/- {mc_test.scale_se:.2g}, the Monte Carlo standard error)"
    else:
        words = describe_scale(winner.scale, n, winner.batch_size, rtol=max(10 * winner.rel_error, 1e-9))
    return Diagnosis(winner.estimator, winner.scale, winner.rel_error, winner.batch_size,
                     winner.samples if winner.estimator == "mc" else None, candidates, n, p, structure, precision,
                     float(tol), scale_words=words, runner_up=runner_up, margin=margin, equivalent=equivalent,
                     mc=mc_test)
