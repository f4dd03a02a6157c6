"""The statistical judgement of ``mc``: exact moments of a one-sample estimate's entries and the tests.

Judging ``mc`` (THEIRS = c/(N S) sum_{n,s} g_ns g_ns^T, y_ns ~ p(y | x_n)). Given x_n, one
draw's entry q = g_i g_j has a mean and a covariance with the other entries that are exactly
computable from the label distribution (``entry_moments``):

    categorical   enumerate the C labels with weights p_k:  u_k = J^T (p - e_k),
                  q_k = u_ki u_kj,  E = sum_k p_k q_k,  Cov = sum_k p_k (q_k - E)(q_k - E)^T
                  (``Likelihood.label_quadrature``; its ``gradient_cumulants`` is None)
    gaussian,     g = J^T e with independent zero-mean e_c, E e_c^2 = m2_c, fourth cumulant k4_c
    bernoulli     (``Likelihood.gradient_cumulants``; gaussian: e = (f - y)/sigma^2,
                  m2 = 1/sigma^2, k4 = 0; bernoulli: e = p - y,
                  m2 = p (1 - p), k4 = m2 (1 - 3 m2) - 3 m2^2); with a = J[:, i] etc. and
                  s = J^T diag(m2) J:  E = s_ij,
                  Cov(g_i g_j, g_k g_l) = sum_c k4_c a_ic a_jc a_kc a_lc + s_ik s_jl + s_il s_jk

The examples and the samples are independent, so for the mean over N examples and S samples

    E[T] = c F,    Cov[T] = c^2 Sigma / S,    Sigma = 1/N^2 sum_n Cov_n                     (S2)

on a set of M tested entries (all of a diagonal up to MC_ENTRIES, else a seeded random subset;
for full THEIRS half diagonal, half off-diagonal). The scale c is unknown (any scale bug), so it
is fitted by least squares on the tested entries, c = <T, F> / <F, F>; with T = c_0 (F + eps)
this makes the residual EXACTLY

    r = T / c - F = (c_0 / c) Pi eps,    Pi = I - F F^T / |F|^2,    Cov[r] ~ Pi Sigma Pi / S     (S2')

(one direction, F's, is spent on c). Whitening r with the eigendecomposition
Pi Sigma Pi = V diag(lambda) V^T gives w_k = v_k^T r / sqrt(lambda_k), independent and
~ N(0, 1/S) when the CLT holds over the N examples, over the M' ~ M - 1 directions kept. Then

    Q1 = sum_k w_k^2 ~ chi2_M' / S,     implied S_hat = M' / Q1                             (S3)

and ``mc`` is accepted unless (a) THEIRS is noisier than one sample per example,
P(chi2_M' >= Q1) < MC_NOISE_ALPHA, or (b) the residual is not shaped like sampling noise: the
mean of w^2 over the low-variance half of the directions divided by that over the high-variance
half is F(M'/2, M'/2)-distributed under mc whatever S is, and a two-sided p-value < MC_ALPHA rejects:

    ratio = mean_{k in low half} w_k^2 / mean_{k in high half} w_k^2                     (S4)

Both distributions assume the CLT over the N examples, which fails for confident networks
(a rarely sampled wrong label has a huge gradient), so each p-value is also computed against
MC_BOOTSTRAP genuine one-sample estimates (labels drawn from the model, each through the same
pipeline: its own least-squares c, then (S2')-(S4); normal fit to the log of the statistic), and
mc is rejected only when both p-values are below the level. The implied S is calibrated on the
same draws (log Q1 of an S-sample estimate ~ log Q1(S = 1) - log S, centred on the median) with
a 95% interval (the wider of the normal fit and the empirical 2.5/97.5% points), and the
reported S is the point estimate rounded to an integer (>= 1), always with that interval.
(It decides verdicts: on a 5-10-4 net with mean max softmax 0.86-0.93 and N = 100, 7 of 40
genuine one-sample estimates get Gaussian-theory p-values below 1e-6 and calibrated ones
of 3e-5 to 0.65; tests/verify/test_diagnose_statistics.py::test_bootstrap_calibration_accepts_genuine_mc_where_the_clt_fails.)
The scale's Monte Carlo standard error is c sqrt(F^T Sigma F / S) / <F, F> on those entries.

Measured with (S2') (5-10-4 net, 20 genuine estimates per setting; N = 30 where N (C - 1) < M,
N = 100 with gains 1, 4, 8 (mean max softmax up to 0.93), N = 300 gain 8, S = 1 and 10): all
accepted, the 95% interval holding S in 18-20 of 20. Before (S2') the residual used the c of
all P entries against Sigma itself: its sampling error (1/c - 1) F landed in directions of
little sampling variance and rejected 20/20 at N = 30 and 4/20 at N = 100 gain 8, and the
interval missed S = 1 in 6/20 at N = 300 gain 8. Over 420 genuine estimates (7 settings x 60
seeds) the smallest calibrated p-value was 2e-3: hence MC_NOISE_ALPHA = 1e-4 for (a), which
rejects a Fisher with each example's label shifted to the previous one's (p ~ 2e-5, implied S
0.4-0.7: noisier than any mc estimate), while (b) keeps MC_ALPHA.

A systematic error (a Fisher at the wrong parameters, clipped values) puts its residual where
sampling cannot (ratio >> 1); squaring a gradient of the wrong thing fails (a). Residual
outside the span of Pi Sigma Pi (entries no label can change), beyond round-off and the little
variance the eigenvalue floor drops, rejects at once. Limitation: a systematic error that
happens to look like sampling noise cannot be told apart from mc by any test on THEIRS alone.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2, norm
from scipy.stats import f as f_dist

from ..curvature import budget
from ..curvature.entries import per_sample_grad_entries
from ..model.likelihoods import Likelihood
from ..model.mlp import MLP
from .results import MCTest

#: Entries used by the mc test (all of a diagonal up to this size, else a seeded random subset):
#: their exact M x M covariance costs N C M^2 and an eigendecomposition M^3.
MC_ENTRIES = 256
#: Significance level of the shape test (S4): mc is wrongly rejected by it with probability <= 1e-6
#: when the CLT holds, and a systematic error must be ~5 sigma to be caught.
MC_ALPHA = 1e-6
#: Significance level of the one-sided noise test (S3a), "noisier than one sample per example" (module
#: docstring: no genuine estimate of 420 came below 2e-3 once the scale error is projected out, (S2')).
MC_NOISE_ALPHA = 1e-4
#: Genuine one-sample mc estimates simulated to calibrate both tests beyond the CLT.
MC_BOOTSTRAP = 64


def sample_entries(n_params: int, structure: str, rng: np.random.Generator, limit: int = MC_ENTRIES):
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


def moments_per_example(lik: Likelihood, f: np.ndarray, A: np.ndarray, ii: np.ndarray, jj: np.ndarray):
    """Mean and covariance over y ~ p(y | f_n) of the entries q_e = g_{i_e} g_{j_e} of one draw.

    f : (n, C); A : (n, C, m) output-Jacobian columns J_n[:, cols]; ii, jj : (M,) indices into cols.
    Returns E : (n, M) and the covariance summed over the n examples, (M, M).
    """
    cumulants = lik.gradient_cumulants(f)
    if cumulants is None:
        # Dependent outputs (categorical): enumerate the labels, u_k = J^T (d l / d f at label k).
        labels, p = lik.label_quadrature(f)
        R = np.stack([lik.grad(f, label) for label in labels], axis=1)  # (n, K, C)
        return quadrature_moments(p, np.matmul(R, A), ii, jj)  # batched BLAS
    return cumulant_moments(*cumulants, A, ii, jj)


def quadrature_moments(p: np.ndarray, u: np.ndarray, ii: np.ndarray, jj: np.ndarray):
    """Mean (n, M) and summed covariance (M, M) of q = u_{y,i} u_{y,j} with label k drawn with probability p_k.

    p : (n, K) label probabilities; u : (n, K, m) the gradient entries J^T (d l / d f at label k).
    """
    diagonal = np.array_equal(ii, jj) and np.array_equal(ii, np.arange(u.shape[-1]))
    q = u * u if diagonal else u[:, :, ii] * u[:, :, jj]
    mean = np.einsum("nk,nkm->nm", p, q)
    centred = (np.sqrt(p)[:, :, None] * (q - mean[:, None, :])).reshape(-1, q.shape[-1])
    return mean, centred.T @ centred  # sum over n and k of the outer products, one GEMM


def cumulant_moments(m2: np.ndarray, k4: np.ndarray, A: np.ndarray, ii: np.ndarray, jj: np.ndarray):
    """Mean (n, M) and summed covariance (M, M) of q = g_i g_j for g = J^T e with independent e_c.

    m2, k4 : (n, C) second moment and fourth cumulant of e_c; A : (n, C, m) = J_n[:, cols]:
    Cov(g_i g_j, g_k g_l) = sum_c k4_c a_ic a_jc a_kc a_lc + s_ik s_jl + s_il s_jk, s = A^T diag(m2) A.
    """
    A_i, A_j = A[:, :, ii], A[:, :, jj]
    s = np.einsum("nca,ncb,nc->nab", A, A, m2)  # (n, m, m)
    mean = s[:, ii, jj]
    prod = A_i * A_j
    cov = np.einsum("nce,ncf,nc->ef", prod, prod, k4)
    if np.array_equal(ii, jj) and np.array_equal(ii, np.arange(s.shape[1])):
        # Diagonal entries in column order (diagnose's one pass): s_ik = s_jl = s_il = s_jk = s, so the
        # two products are 2 s o s, with no (n, m, m) copies (four of them cost 2.6 GB at n = 1000, m = 256).
        return mean, cov + 2.0 * np.einsum("nef,nef->ef", s, s)
    s_ik, s_jl = s[:, ii][:, :, ii], s[:, jj][:, :, jj]
    s_il, s_jk = s[:, ii][:, :, jj], s[:, jj][:, :, ii]
    return mean, cov + np.einsum("nef,nef->ef", s_ik, s_jl) + np.einsum("nef,nef->ef", s_il, s_jk)


def entry_moments(model: MLP, lik: Likelihood, x, i_index, j_index, bootstrap: int = 0, rng=None,
                  chunk_size: int | None = None):
    """Exact mean and covariance of a one-sample mc estimate's entries (i_e, j_e), (S2).

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
    diagonal = bool(np.array_equal(ii, jj) and np.array_equal(ii, np.arange(len(cols))))
    # per row: the Jacobian columns (C x |cols|), and for the cumulant path s : (|cols|, |cols|)
    dependent = lik.gradient_cumulants(np.zeros((1, c))) is None
    width = 4 * c * len(cols) + (0 if dependent else 4 * len(cols) ** 2)
    chunk = chunk_size or max(1, budget.CHUNK_BYTES // (8 * width))
    mean = np.zeros(m)
    cov = np.zeros((m, m))
    draws = np.zeros((bootstrap, m))
    unit = np.eye(c)
    model64 = model.with_theta(model.theta.astype(np.float64))
    for start in range(0, n, chunk):
        xc = x[start:start + chunk].astype(np.float64)
        f, cache = model64.forward(xc)
        # the output Jacobian's columns J_n[:, cols] only: C backward vectors, never (C, n, P)
        A = np.moveaxis(per_sample_grad_entries(model64, cache, np.broadcast_to(unit[:, None, :], (c, xc.shape[0], c)),
                                                cols), 0, 1)  # (n, C, |cols|)
        e, v = moments_per_example(lik, f, A, ii, jj)
        mean += e.sum(axis=0)
        cov += v
        if bootstrap:
            labels = lik.sample(f, rng, bootstrap)  # (n, K, ...)
            R = np.stack([lik.grad(f, labels[:, k]) for k in range(bootstrap)], axis=1)  # (n, K, C)
            g = np.matmul(R, A)  # (n, K, |cols|): every draw's gradient entries at once
            if diagonal:  # entries (i, i) in column order: no gather
                draws += np.einsum("nke,nke->ke", g, g)
            else:
                draws += np.einsum("nke,nke->ke", g[:, :, ii], g[:, :, jj])
    if bootstrap:
        return mean / n, cov / n**2, draws / n
    return mean / n, cov / n**2


def judge_mc(theirs_entries: np.ndarray, scale: float, exact_entries: np.ndarray, cov: np.ndarray,
             roundoff: float, draws: np.ndarray | None = None) -> MCTest:
    """Accept or reject mc for the tested entries (module docstring, (S3) and (S4)).

    theirs_entries, exact_entries : (M,); cov : (M, M) one-sample covariance; roundoff : the
    size of a residual treated as round-off (directions with less sampling sd are dropped);
    draws : (K, M) simulated one-sample estimates that calibrate both statistics where the CLT
    is poor (confident predictions make rare labels' huge gradients dominate the noise).
    """
    if scale <= 0:
        return MCTest(False, "the fitted scale is not positive")
    # With c fitted by least squares, r = T/c - F = (c_0/c) Pi eps exactly, Pi = I - F F^T / |F|^2
    # (module docstring, (S2')): the residual's covariance is Pi Sigma Pi / S, not Sigma / S.
    direction = exact_entries / max(float(np.linalg.norm(exact_entries)), 1e-300)
    projected = cov - np.outer(direction, direction @ cov)
    projected -= np.outer(projected @ direction, direction)
    lam, vec = np.linalg.eigh((projected + projected.T) / 2)
    lam, vec = lam[::-1], vec[:, ::-1]  # decreasing variance
    floor = max(1e-12 * float(lam[0]) if lam.size else 0.0, (10 * roundoff / scale) ** 2)  # sd >= 10 x round-off
    keep = lam > floor
    basis, sd = vec[:, keep], np.sqrt(lam[keep])
    # c refitted on the tested entries, so that the residual is exactly (c_0/c) Pi eps (c of diagnosis (D1) uses all P)
    local = float(theirs_entries @ exact_entries) / max(float(exact_entries @ exact_entries), 1e-300)
    if local <= 0:
        return MCTest(False, "the scale fitted on the tested entries is not positive")
    residual = theirs_entries / local - exact_entries
    outside = residual - basis @ (basis.T @ residual)
    # allowed there: round-off, plus up to 10 sd of the little sampling variance the floor dropped
    dropped = float(np.sum(np.clip(lam[~keep], 0.0, None)))
    if np.linalg.norm(outside) > 10 * roundoff / scale * math.sqrt(len(residual)) + 10 * math.sqrt(dropped):
        return MCTest(False, "THEIRS differs from exact in directions that mc sampling cannot change")
    m = int(keep.sum())
    if m < 8:
        return MCTest(False, f"too few directions with sampling variance to judge mc (M = {m})", entries=m)
    dof = m
    half = m // 2

    def statistics(r):
        w2 = (basis.T @ r / sd) ** 2  # whitened squared residuals, ~ chi2_1 / S each
        return float(w2.sum()), float(np.mean(w2[half:]) / max(np.mean(w2[:half]), 1e-300))

    q1, ratio = statistics(residual)  # Q1: the chi-square statistic at S = 1
    if q1 == 0.0:
        return MCTest(False, "THEIRS equals exact exactly", entries=m)
    s_hat = dof / q1
    interval = (chi2.ppf(0.025, dof) / q1, chi2.isf(0.025, dof) / q1)  # S Q1 ~ chi2_dof
    # p-values: the Gaussian-theory one, or the bootstrap one (a normal fit to the log of the
    # statistic over genuine one-sample draws) when larger: mc is rejected only when both are small.
    p_noise = float(chi2.sf(q1, dof))
    p_shape = float(2 * min(f_dist.sf(ratio, m - half, half), f_dist.cdf(ratio, m - half, half)))
    if draws is not None and len(draws) >= 10:
        # each draw through the same pipeline as THEIRS: its own least-squares scale, whitened in Pi Sigma Pi
        null = np.array([statistics(d * (float(exact_entries @ exact_entries) / max(float(d @ exact_entries), 1e-300))
                                    - exact_entries) for d in draws])
        log_q, log_r = np.log(null[:, 0]), np.log(null[:, 1])
        # S calibrated on genuine one-sample draws: log Q1 of an S-sample estimate ~ log Q1(S = 1) - log S
        # (consistent where the CLT fails: dof / Q1 misstates S on confident nets, Q1 being skewed);
        # centred on the median, which the rare huge draws of a confident net do not drag
        sd = max(log_q.std(ddof=1), 1e-12)
        s_hat = math.exp(float(np.median(log_q)) - math.log(q1))
        # 95%: the wider of the normal fit and the empirical 2.5/97.5% points of log Q1 (heavy tails)
        low, high = np.quantile(log_q, [0.025, 0.975]) - math.log(q1)
        interval = (min(s_hat * math.exp(-1.96 * sd), math.exp(low)), max(s_hat * math.exp(1.96 * sd), math.exp(high)))
        p_noise = max(p_noise, float(norm.sf((math.log(q1) - log_q.mean()) / sd)))
        z_ratio = abs(math.log(ratio) - log_r.mean()) / max(log_r.std(ddof=1), 1e-12)
        p_shape = max(p_shape, float(2 * norm.sf(z_ratio)))
    # the point estimate as an integer (reported with its interval): 1 only when S_hat rounds to 1, not
    # whenever 1 lies inside a wide interval (a point estimate of 11 with 95% 1.1..108 is S ~ 11)
    samples = max(1, int(round(s_hat)))
    # c = <T, F>/<F, F> is linear in T: Var c = c^2 F^T Sigma F / (S <F, F>^2) on the tested entries.
    spread = float(exact_entries @ cov @ exact_entries)
    scale_se = float(scale * math.sqrt(max(spread, 0.0) / samples) / max(float(exact_entries @ exact_entries), 1e-300))
    test = MCTest(False, "", s_hat, samples, m, samples * q1, p_noise, ratio, p_shape, scale_se,
                  samples_interval=(float(interval[0]), float(interval[1])), implied_samples_chi2=dof / q1)
    if p_noise < MC_NOISE_ALPHA:
        test.reason = (f"too noisy for mc: chi2 = {q1:.4g} at S = 1 over {m} directions (p = {p_noise:.2g}); "
                       f"implied S = {s_hat:.3g} < 1")
    elif p_shape < MC_ALPHA:
        where = "low" if ratio > 1 else "high"
        test.reason = (f"the residual is not shaped like sampling noise: {ratio:.3g} x more of it per direction in the "
                       f"{where}-variance half (p = {p_shape:.2g}; a systematic error)")
    else:
        test.accepted = True
        test.reason = f"consistent with mc sampling noise at S = {samples} (95% {interval[0]:.3g}..{interval[1]:.3g}; p = {p_noise:.2g} >= {MC_NOISE_ALPHA:g} and {p_shape:.2g} >= {MC_ALPHA:g})"
    return test

