"""The moments and simulations of sampled.py's candidates (docs/shuffled-loader-fisher.md, (SL1)-(SL4), (SR1)-(SR2)).

A loader at labels drawn from the model (``simulate_sampled``, the expectation factor and relative
variance of ``loader_curves``, the covariance of ``loader_covariance``) and the mean over a random
subset of rows (``simulate_subset``, ``subset_curve``); the summary every candidate is judged and ranked
on (``summary``), the whitened test (``whitened``) and the Gaussian pre-ranking (``GaussianMetric``).
Naive twins and brute-force checks: tests/verify/test_sampled_labels.py, tests/verify/test_subset_rows.py.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.special import gammaln


# --------------------------------------------------------------------------- moments (SL2), (SL3), (SR1)
def batch_sizes(n: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """(K,) the loader's batch sizes: floor(N / B) of B, and the short last one unless dropped."""
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return np.array(sizes, dtype=np.float64)


def loader_curves(n: int, reduction: str, drop_last: bool, kappa: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(e, relvar, K) : (N,) each, for B = 1..N: the expectation factor (SL2), the relative variance (SL3), the batches."""
    b = np.arange(1, n + 1, dtype=np.float64)
    full = np.floor(n / b)
    r = n - full * b
    last = (r > 0) & (not drop_last)
    rlast = np.where(last, r, 1.0)
    rho_b, rho_r = (1 / b**2, 1 / rlast**2) if reduction == "mean" else (np.ones_like(b), np.ones_like(b))
    k = full + last
    first = full * rho_b * b + np.where(last, rho_r * rlast, 0.0)
    second = full * rho_b**2 * b**2 + np.where(last, rho_r**2 * rlast**2, 0.0)
    fourth = full * rho_b**2 * b + np.where(last, rho_r**2 * rlast, 0.0)
    return first / k, (2 * second + kappa * fourth) / first**2, k


def subset_curve(n_rows: int, replace: bool, limit: int) -> np.ndarray:
    """(limit,) f(n) / n for n = 1..limit (SR1): the variance of a subset mean relative to one row's."""
    m = np.arange(1, limit + 1, dtype=np.float64)
    return (np.ones_like(m) if replace else np.clip((n_rows - m) / max(n_rows - 1, 1), 0.0, None)) / m


def untouched_probability(rows_touching: np.ndarray, n_rows: int, n: int, replace: bool) -> np.ndarray:
    """(M,) pi_i = P(none of n random rows is among the r_i rows whose gradient touches entry i)          (SR3)

    = C(N - r, n) / C(N, n) without replacement (0 when N - r < n), (1 - r / N)^n with; rows_touching : (M,) r_i."""
    r = np.asarray(rows_touching, dtype=np.float64)
    if replace:
        return (1.0 - r / n_rows) ** n
    free = n_rows - r
    log_pi = (gammaln(free + 1) - gammaln(np.maximum(free - n, 0) + 1) - gammaln(n_rows + 1) + gammaln(n_rows - n + 1))
    return np.where(free >= n, np.exp(log_pi), 0.0)


def support_p(t: np.ndarray, support: np.ndarray, n: int, replace: bool, floor: float = 0.01) -> tuple[float, int, float]:
    """(p, zeros, expected): an upper bound on P(a subset of n rows leaves at most as many of the entries D
    untouched as THEIRS has zeros there)                                                             (SR4)

    t : (M,) THEIRS; support : (N, M) bool, row n touches entry i (its gradient there is nonzero). D is chosen
    from the supports alone (not from t): greedily, by pi_i (SR3) from the largest, the entries with pi_i >=
    `floor` whose row sets are disjoint from those already chosen. The indicators "entry i touched" are then
    increasing functions of disjoint sets of the selection indicators, which are negatively associated for
    sampling with or without replacement (Joag-Dev and Proschan 1983), so for Z = the untouched count on D,
    mu = sum_D pi_i:  P(Z = 0) <= prod_D (1 - pi_i), and P(Z <= (1 - d) mu) <= exp(-d^2 mu / 2) (Chernoff,
    valid under negative association). A loader over all rows leaves no entry untouched: where a subset of n
    rows would leave several, its zero count rules the subset out.
    """
    n_rows = support.shape[0]
    pi = untouched_probability(support.sum(axis=0), n_rows, n, replace)
    used = np.zeros(n_rows, dtype=bool)
    chosen = []
    for i in np.argsort(-pi, kind="stable"):
        if pi[i] < floor:
            break
        if not (support[:, i] & used).any():
            chosen.append(i)
            used |= support[:, i]
    if not chosen:
        return 1.0, 0, 0.0
    zeros, mu = int(np.sum(t[chosen] == 0)), float(pi[chosen].sum())
    if zeros >= mu:
        return 1.0, zeros, mu
    bound = math.exp(-((1 - zeros / mu) ** 2) * mu / 2)
    if zeros == 0:
        bound = min(bound, float(np.prod(1.0 - pi[chosen])))
    return bound, zeros, mu


# --------------------------------------------------------------------------- simulations
def simulate_sampled(h: np.ndarray, one_sample: np.ndarray, batch_size: int, reduction: str, drop_last: bool,
                     draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, M) sampled-label loader Fishers (SL1), random partitions, aggregation 1/K.

    h : (N, M) per-example gradients at one draw of labels; one_sample : (D, M) genuine one-sample mc
    estimates 1/N sum_n h_n^2 at fresh labels, row 0 at the labels of h. Each draw: a random
    partition, X_k = sum_{n in b_k} eps_n h_n with random signs eps (E[X X^T] and the cross terms'
    covariance are those of fresh labels), plus the full batches' share of fresh-label noise of the
    rows' own squares, rho_B (rows in full batches) / K x (one_sample[d] - one_sample[0]).
    Naive twin: the loop in tests/verify/test_sampled_labels.py.
    """
    n = h.shape[0]
    sizes = batch_sizes(n, batch_size, drop_last)
    used, k = int(sizes.sum()), sizes.size
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    rho = 1 / sizes**2 if reduction == "mean" else np.ones(k)
    full_rows = (n // batch_size) * batch_size
    fresh = (rho[0] * full_rows / k) * (one_sample[1:] - one_sample[0]) if one_sample.shape[0] > 1 else None
    out = np.empty((draws, h.shape[1]))
    indptr = np.append(starts, used)
    for d in range(draws):
        rows = rng.permutation(n)[:used]
        signs = rng.integers(0, 2, used) * 2.0 - 1.0
        # the signed (K, N) batch indicator times h: one sparse product, no (N, M) copy (as shuffled.simulate)
        indicator = sparse.csr_matrix((signs.astype(h.dtype), rows, indptr), shape=(k, n))
        x = (indicator @ h).astype(np.float64)
        out[d] = rho @ (x * x) / k
        if fresh is not None:
            out[d] += fresh[d % fresh.shape[0]]
    return out


def simulate_subset(q: np.ndarray, n_rows: int, replace: bool, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, M) means of q : (N, M) over n_rows random rows, with or without replacement (SR1)."""
    n = q.shape[0]
    out = np.empty((draws, q.shape[1]))
    for d in range(draws):
        rows = rng.integers(0, n, n_rows) if replace else rng.permutation(n)[:n_rows]
        out[d] = q[rows].mean(axis=0)
    return out


def summary(t: np.ndarray, mu: np.ndarray, alt: np.ndarray) -> np.ndarray:
    """(log c_hat, log Q, log shape, lean) of t against c mu (module docstring); t : (..., M), mu, alt : (M,) > 0.

    lean = the slope of log(t_i / mu_i) on d_i = log(alt_i / mu_i) (least squares over the entries): how far t
    leans from mu towards the other centre alt (F and E: ~0 for an estimate centred on mu, ~1 for one centred on alt), the one
    coordinate that tells an estimate at the observed labels from one at sampled labels when both are noisy.
    """
    t = np.atleast_2d(t)
    c = np.maximum(t.sum(axis=1) / mu.sum(), 1e-300)
    r = np.clip(t / (c[:, None] * mu) - 1, -1e150, 1e150)
    r2 = r * r
    upper = mu >= np.median(mu)
    q = np.median(r2, axis=1)
    shape = np.median(r2[:, upper], axis=1) / np.maximum(np.median(r2[:, ~upper], axis=1), 1e-300)
    d = np.log(alt / mu)
    d -= d.mean()
    # on the log scale: the noise is multiplicative and heavy-tailed (a few rows' huge squares); a
    # zero entry (no row of the subset touches it) is clipped at 1e-3 of its expectation
    u = np.log(np.maximum(t / (c[:, None] * mu), 1e-3))
    lean = (u - u.mean(axis=1, keepdims=True)) @ d / max(float(d @ d), 1e-300)
    return np.stack([np.log(c), np.log(np.maximum(q, 1e-300)), np.log(np.maximum(shape, 1e-300)), lean], axis=1)


def whitening(mu: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(basis (M, m), sd (m,)) of Pi cov Pi, Pi = I - mu mu^T / |mu|^2, eigenvalues above 1e-10 of the largest,
    in decreasing order (``whitened``'s metric; one eigendecomposition serves every scalar multiple of cov)."""
    unit = mu / np.linalg.norm(mu)
    proj = np.eye(mu.size) - np.outer(unit, unit)
    lam, vec = np.linalg.eigh(proj @ cov @ proj)
    lam, vec = lam[::-1], vec[:, ::-1]
    keep = lam > 1e-10 * lam[0]
    return vec[:, keep], np.sqrt(lam[keep])


def whitened(t: np.ndarray, mu: np.ndarray, cov: np.ndarray | None = None, metric=None) -> np.ndarray:
    """(D, 2) (log chi2, log shape) of t : (D, M) against c mu in the metric of cov : (M, M), the covariance
    of t / c_hat (c_hat = sum t / sum mu) under a reading ((SL4), (SR2)); or of a precomputed ``whitening``.

    As statistics.judge_mc: the residual r = t / c_hat - mu with the direction of mu projected out (c is
    fitted), whitened in the eigenbasis of Pi cov Pi: chi2 = sum w^2, shape = mean w^2 of the low-variance
    half / of the high-variance half. A systematic error (a Fisher at other weights, another loss, clipped
    values) puts its residual where the noise cannot.
    """
    t = np.atleast_2d(t)
    basis, sd = metric if metric is not None else whitening(mu, cov)
    r = t / (t.sum(axis=1, keepdims=True) / mu.sum()) - mu
    w2 = ((r @ basis) / sd) ** 2
    half = w2.shape[1] // 2
    chi = np.log(np.maximum(w2.sum(axis=1), 1e-300))
    shape = np.log(np.maximum(w2[:, half:].mean(axis=1), 1e-300) / np.maximum(w2[:, :half].mean(axis=1), 1e-300))
    return np.stack([chi, shape], axis=1)


def loader_weights(n: int, batch_size: int, reduction: str, drop_last: bool) -> tuple[float, float]:
    """(a, b) of (SL4): Cov[T / c_hat] = a (F o F) + b C_bar, a = 2 sum rho^2 s^2 / (sum rho s)^2, b = sum rho^2 s / (...)^2."""
    s = batch_sizes(n, batch_size, drop_last)
    rho = 1 / s**2 if reduction == "mean" else np.ones_like(s)
    total = float(np.sum(rho * s)) ** 2
    return 2 * float(np.sum(rho**2 * s**2)) / total, float(np.sum(rho**2 * s)) / total


class GaussianMetric:
    """The Gaussian log-likelihood of r = t / c_hat - mu under Cov = a A + b C for many (a, b) at the cost of
    one generalised eigendecomposition A W = C W Lambda (W^T C W = I): r^T Cov^-1 r = sum_i z_i^2 / (a lambda_i
    + b) with z = W^T r, log det Cov = sum_i log(a lambda_i + b) + const (the readings' common constant dropped)."""

    def __init__(self, t: np.ndarray, mu: np.ndarray, a_mat: np.ndarray, c_mat: np.ndarray):
        from scipy.linalg import eigh

        ridge = 1e-9 * max(float(np.trace(c_mat)) / c_mat.shape[0], 1e-300)
        self.lam, w = eigh(a_mat, c_mat + ridge * np.eye(c_mat.shape[0]))
        self.lam = np.maximum(self.lam, 0.0)
        self.c_hat = float(t.sum() / mu.sum())
        self.z2 = (w.T @ (t / self.c_hat - mu)) ** 2
        ones = np.ones(mu.size)
        self.total = (float(ones @ a_mat @ ones), float(ones @ c_mat @ ones), float(mu.sum()) ** 2)

    def score(self, a: float, b: float, expected_scale: float) -> tuple[float, float]:
        """(chi2, log-likelihood) of the reading, the latter with the term of log c_hat ~ N(log expected_scale,
        (a 1^T A 1 + b 1^T C 1) / (1^T mu)^2)."""
        var = np.maximum(a * self.lam + b, 1e-300)
        chi2 = float(np.sum(self.z2 / var))
        scale_var = max((a * self.total[0] + b * self.total[1]) / self.total[2], 1e-300)
        z_scale = (math.log(max(self.c_hat, 1e-300)) - math.log(max(expected_scale, 1e-300))) ** 2 / scale_var
        return chi2, -0.5 * (chi2 + float(np.sum(np.log(var))) + z_scale + math.log(scale_var))


def loader_covariance(n: int, batch_size: int, reduction: str, drop_last: bool, fisher_full: np.ndarray,
                      per_row: np.ndarray) -> np.ndarray:
    """(M, M) covariance of T / c_hat of a sampled-label loader (SL4), T's expectation scaled to F:

        [2 sum_k rho_k^2 s_k^2 (F o F) + sum_k rho_k^2 s_k C_bar] / (sum_k rho_k s_k)^2

    fisher_full : (M, M) the exact Fisher on the entries (Phi_k ~ s_k F); per_row : (M, M) C_bar = 1/N sum_n
    Cov_y[h_n o h_n] (N x the one-sample mc covariance, statistics (S2)). B = 1 gives C_bar / N: mc, S = 1.
    """
    s = batch_sizes(n, batch_size, drop_last)
    rho = 1 / s**2 if reduction == "mean" else np.ones_like(s)
    return (2 * np.sum(rho**2 * s**2) * fisher_full**2 + np.sum(rho**2 * s) * per_row) / np.sum(rho * s) ** 2




def partition_moments(fisher_rows: np.ndarray, square_cov_rows: np.ndarray, batches: list,
                      reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact (mean (M,), covariance (M, M)) of T (SL1) over the labels, for given batches (SL3); aggregation 1/K.

    fisher_rows : (N, M, M) F_n on the entries; square_cov_rows : (N, M, M) Cov_y[h_n o h_n];
    batches : list of K index arrays (the rows of each batch). mean = 1/K sum_k rho_k diag(Phi_k),
    cov = 1/K^2 sum_k rho_k^2 [2 (Phi_k o Phi_k - sum_{n in b_k} F_n o F_n) + sum_{n in b_k} Cov_n],
    Phi_k = sum_{n in b_k} F_n. The reference of ``loader_covariance`` (SL4); twin: the exact enumeration
    of every label in tests/verify/test_sampled_labels.py.
    """
    k = len(batches)
    m = fisher_rows.shape[1]
    mean, cov = np.zeros(m), np.zeros((m, m))
    for rows in batches:
        rho = 1.0 / len(rows) ** 2 if reduction == "mean" else 1.0
        phi = fisher_rows[rows].sum(axis=0)
        own = np.einsum("nij,nij->ij", fisher_rows[rows], fisher_rows[rows])
        mean += rho * np.diag(phi)
        cov += rho**2 * (2 * (phi * phi - own) + square_cov_rows[rows].sum(axis=0))
    return mean / k, cov / k**2
