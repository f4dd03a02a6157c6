"""The trapezoid rule on a regular grid in log space, and the bound on its error (``grid`` uses both).

On points z_k with product weights w_k = prod_i h_i c_i (c = 1/2 on the outermost points):

    log Z = logsumexp_k (log q_k + log w_k),   m_k = exp(log q_k + log w_k - log Z)
    mean  = sum_k m_k z_k,                     cov = sum_k m_k (z_k - mean)(z_k - mean)^T

Error estimate: an upper bound on |actual error| of log p(D), every mean entry and every
covariance entry, the sum of four parts (`GridPosterior.error_parts`):

* Richardson. Every quantity is recomputed on each of the 2^d half grids that take every
  second point per axis, starting at index 0 (the even points, same bounds) or 1 (the odd
  points): I_half(2h). For an O(h^2) rule error(h) ~ |I(h) - I(2h)| / 3; for smooth densities
  that decay at the bounds the trapezoid rule converges faster than any power of h, so
  |I(h) - I(2h)| ~ error(2h) >> error(h). The estimate is 4 max_half |I(h) - I_half(2h)|. Both
  parities are needed: on a grid coarser than the density one half grid can agree with the
  full grid by aliasing (the density's peak on the shared points; the covariance error was
  2e7 times the even-only estimate at n = 5). The factor 4 is measured: over the 253 grids of
  benchmarks/grid_error_scan.py (skewed, heavy-tailed, flat-topped, Gaussian, correlated 2-d and
  3-d; n from 11) max |error| / (max_half |I(h) - I_half(2h)|) is 2.0, at n = 11 (0.32 from
  n = 21 on), so 4 leaves a factor 2 on the coarsest grids allowed.
* Round-off. The mass of point k, m_k = exp(log q_k + log w_k - log Z), carries a relative
  error delta_k = eps [4 (|log q_k| + |log w_k| + |log Z| + 1) + sum_i |z_ki| |d log q / dz_i|]:
  a few roundings of each logarithm (4 ulps also covers a log density whose terms cancel to half
  their magnitude, e.g. a z - e^z), and the rounding of the point itself (eps |z|) through the
  log density's slope (by differences on the grid). The error of each quantity is delta
  propagated through its sum, plus (20 + log2 K) eps sum_k |its terms| for numpy's pairwise
  summation (128-term blocks in 8 accumulators, then a binary tree):
      log Z:      sum_k m_k delta_k + (20 + log2 K) eps + eps |log Z|
      mean_i:     sum_k m_k delta_k |z_ki - mean_i| + (20 + log2 K) eps sum_k m_k |z_ki|
      cov_ij:     sum_k m_k delta_k |c_ki c_kj - cov_ij| + (20 + log2 K) eps sum_k m_k |c_ki c_kj|
                  + eps sum_k m_k (|z_ki| |c_kj| + |c_ki| |z_kj|),   c_k = z_k - mean
  (the last line: centring rounds z - mean to eps |z|). Masses are renormalised by their
  computed sum, so a rounding of log Z does not scale the mean.
* Truncated tail. The mass in the outermost layer of points (`boundary_mass`, summed directly)
  bounds the mass beyond the bounds as at most n times that layer (the density falls off within
  half the box width of a face), lying at most one box width from the mean: tail = n boundary,
  adding tail to log Z, tail (b - a) to the mean and tail ((b - a)(b - a)^T + |cov|) to the cov.
  Above `boundary_tol` the grid refuses (ValueError).
* Resolution. Richardson compares h with 2h; on a grid whose spacing is several conditional
  standard deviations of a narrow (for example sheared) ridge, both alias the ridge alike and
  their difference says nothing (a 3-d ridge sampled every ~5 conditional sds had a covariance
  error 5 times its estimate). Along axis i the second difference of log q at the points that hold
  the mass, D_i = log q(z + h_i e_i) - 2 log q(z) + log q(z - h_i e_i), is -h_i^2 / s_i^2 for a
  Gaussian of conditional sd s_i. Where max |D_i| > 4 (h_i > 2 s_i: the trapezoid rule at 2h then
  errs by ~exp(-2 pi^2 / 16) ~ 0.3 of a Gaussian's mass) the grid is not resolved
  (`GridPosterior.resolved` False) and each estimate is raised to at least the quantity's scale
  (1 + |log Z|, sd_i + h_i, (sd_i + h_i)(sd_j + h_j)): "not resolved", an order of magnitude only.

Measured (benchmarks/grid_error_scan.py, docs/bayes-and-laplace.md): max actual / estimate
0.51 over 253 grids (4.9e4 with the previous even-only |I(h) - I(2h)| / 3 and a constant
1e-13 floor); on well-resolved grids (default n) the estimate is <= 6e-10 of the quantity's
scale (1 + |log Z|, sd_i, sd_i sd_j) and typically 20-250 times the actual error.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

# The public names are grid.py's building blocks; the leading-underscore ones are this module's own.
__all__ = ["MAX_SECOND_DIFFERENCE", "boundary_mass", "error_parts", "grid_points", "log_trapezoid_weights",
           "max_second_difference", "moments", "richardson", "spacing", "trapezoid_weights"]

# Error model constants, justified by benchmarks/grid_error_scan.py (module docstring).
_RICHARDSON_SAFETY = 4.0
#: Resolution: |second difference of log q| <= 4, i.e. spacing <= 2 conditional sds (docstring).
MAX_SECOND_DIFFERENCE = 4.0
# Points holding at least this fraction of the largest point mass are where resolution matters.
_SIGNIFICANT_MASS = 1e-6
_LOG_DENSITY_ULPS = 4.0
_SUM_ULPS = 20.0


def grid_points(axes) -> np.ndarray:
    """(K, d) points of the product grid, K = prod_i n_i, for d axes of shape (n_i,) (C order, 'ij')."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def spacing(axis: np.ndarray) -> float:
    """h = (b - a) / (n - 1): relative error ~eps, where axis[1] - axis[0] loses eps |a| / h."""
    return float((axis[-1] - axis[0]) / (axis.size - 1))


def trapezoid_weights(axis: np.ndarray) -> np.ndarray:
    """(n,) weights h c_k of one axis, c = 1/2 on the two end points and 1 inside."""
    h = spacing(axis)
    w = np.full(axis.size, h)
    w[0] = w[-1] = 0.5 * h
    return w


def log_trapezoid_weights(axes) -> np.ndarray:
    """(n_1, ..., n_d) log w_k = sum_i log(h_i c_ki), the product weights of the d axes."""
    d = len(axes)
    total = np.zeros([a.size for a in axes])
    for i, a in enumerate(axes):
        total = total + np.log(trapezoid_weights(a)).reshape([-1 if j == i else 1 for j in range(d)])
    return total


def _pairwise_sum(terms: np.ndarray) -> float:
    """sum_k terms_k of a contiguous 1-d array by numpy's pairwise summation (error bound below)."""
    return float(np.sum(np.ascontiguousarray(terms).ravel()))


def moments(log_q: np.ndarray, axes):
    """(log Z, mean (d,), cov (d, d), masses (K,), centred (d, K)) of the trapezoid rule on this grid.

    Every sum runs along a contiguous axis, so numpy sums it pairwise (`_SUM_ULPS`).
    """
    log_w = log_trapezoid_weights(axes)
    log_z = float(logsumexp(log_q + log_w))
    masses = np.exp(log_q + log_w - log_z).ravel()
    # Renormalise by the computed sum: a rounding of log Z (eps |log Z|) would otherwise scale the
    # mean by 1 + eps |log Z|, an error of eps |log Z| |mean| that no sum of positive terms needs.
    masses /= _pairwise_sum(masses)
    points = grid_points(axes).T  # (d, K), rows contiguous
    mean = np.array([_pairwise_sum(masses * row) for row in points])
    centred = points - mean[:, None]
    d = len(axes)
    cov = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            cov[i, j] = cov[j, i] = _pairwise_sum(masses * centred[i] * centred[j])
    return log_z, mean, cov, masses, centred


def richardson(log_q: np.ndarray, axes, log_z: float, mean: np.ndarray, cov: np.ndarray):
    """max over the 2^d half grids of |I(h) - I_half(2h)| for log Z, mean (d,) and cov (d, d).

    A half grid takes every second point along each axis, starting at index 0 (the even points,
    same bounds) or at index 1 (the odd points, bounds moved in by h). Returns also the moments
    of the all-even half grid (GridPosterior.coarse).
    """
    d = len(axes)
    diff_z, diff_mean, diff_cov = 0.0, np.zeros(d), np.zeros((d, d))
    even = None
    for parity in np.ndindex(*(2,) * d):
        index = tuple(slice(0, None, 2) if p == 0 else slice(1, -1, 2) for p in parity)
        sub_z, sub_mean, sub_cov, _, _ = moments(log_q[index], [a[i] for a, i in zip(axes, index, strict=True)])
        if not any(parity):
            even = {"log_evidence": sub_z, "mean": sub_mean, "cov": sub_cov}
        diff_z = max(diff_z, abs(log_z - sub_z))
        diff_mean = np.maximum(diff_mean, np.abs(mean - sub_mean))
        diff_cov = np.maximum(diff_cov, np.abs(cov - sub_cov))
    return diff_z, diff_mean, diff_cov, even


def max_second_difference(log_q: np.ndarray, masses: np.ndarray) -> float:
    """max over axes i and interior points k with mass >= _SIGNIFICANT_MASS max mass of
    |log q(k + e_i) - 2 log q(k) + log q(k - e_i)|; log_q (n,)*d, masses (K,)."""
    significant = (masses >= _SIGNIFICANT_MASS * masses.max()).reshape(log_q.shape)
    worst = 0.0
    with np.errstate(invalid="ignore"):
        for i in range(log_q.ndim):
            inner = [slice(None)] * log_q.ndim
            inner[i] = slice(1, -1)
            second = np.diff(log_q, n=2, axis=i)
            keep = significant[tuple(inner)] & np.isfinite(second)
            if np.any(keep):
                worst = max(worst, float(np.abs(second[keep]).max()))
    return worst


def _log_density_slopes(log_q: np.ndarray, axes) -> np.ndarray:
    """sum_i |z_i| |d log q / d z_i| at every grid point, (K,), by differences on the grid
    (0 where a neighbour is -inf or the product overflows: such points carry no mass)."""
    total = np.zeros(log_q.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for i, a in enumerate(axes):
            slope = np.gradient(log_q, a, axis=i)
            shape = [-1 if j == i else 1 for j in range(len(axes))]
            total = total + np.abs(slope) * np.abs(a).reshape(shape)
    return np.where(np.isfinite(total), total, 0.0).ravel()


def _roundoff(log_q: np.ndarray, axes, log_z: float, mean, cov, masses, centred):
    """Float64 round-off bounds of (log Z, mean (d,), cov (d, d)); see the module docstring.

    delta_k = eps (ULPS (|log q_k| + |log w_k| + |log Z| + 1) + sum_i |z_ki| |d_i log q|) is the
    relative error of mass m_k; each sum adds (SUM_ULPS) eps sum_k |its terms|.
    """
    eps = np.finfo(np.float64).eps
    log_w = log_trapezoid_weights(axes).ravel()
    lq = log_q.ravel()
    inside = masses > 0
    delta = np.zeros_like(masses)
    delta[inside] = eps * (_LOG_DENSITY_ULPS * (np.abs(lq[inside]) + np.abs(log_w[inside]) + abs(log_z) + 1)
                           + _log_density_slopes(log_q, axes)[inside])
    summation = eps * (_SUM_ULPS + np.log2(masses.size))
    m_delta = masses * delta
    err_z = _pairwise_sum(m_delta) + summation + eps * abs(log_z)
    points = centred + mean[:, None]
    abs_points, abs_centred = np.abs(points), np.abs(centred)
    err_mean = np.array([_pairwise_sum(m_delta * abs_centred[i]) + summation * _pairwise_sum(masses * abs_points[i])
                         for i in range(len(axes))])
    d = len(axes)
    err_cov = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            product = centred[i] * centred[j]
            err_cov[i, j] = err_cov[j, i] = (
                _pairwise_sum(m_delta * np.abs(product - cov[i, j]))
                + summation * _pairwise_sum(masses * np.abs(product))
                # centring: z - mean is rounded to eps |z|, and enters the product twice
                + eps * _pairwise_sum(masses * (abs_points[i] * abs_centred[j] + abs_centred[i] * abs_points[j]))
            )
    return err_z, err_mean, err_cov


def boundary_mass(log_p: np.ndarray, log_w: np.ndarray) -> float:
    """Probability in the outermost layer of points (index 0 or n_i - 1 along some axis), summed
    directly (1 - interior would lose it to cancellation below ~1e-16)."""
    on_face = np.zeros(log_p.shape, bool)
    for axis in range(log_p.ndim):
        index = [slice(None)] * log_p.ndim
        index[axis] = [0, -1]
        on_face[tuple(index)] = True
    return float(np.sum(np.exp(log_p + log_w)[on_face]))


def error_parts(log_q, axes, grid_moments, half_grid_differences, tail_mass: float, reach: np.ndarray) -> dict:
    """{'richardson', 'roundoff', 'tail'} -> (log Z, mean (d,), cov (d, d)) error parts (module docstring);
    grid_moments as `moments` returns them, half_grid_differences the first three of `richardson`."""
    log_z, mean, cov, masses, centred = grid_moments
    diff_z, diff_mean, diff_cov = half_grid_differences
    round_z, round_mean, round_cov = _roundoff(log_q, axes, log_z, mean, cov, masses, centred)
    # The truncated tail: the mass beyond the bounds is taken to be at most the outermost layer's
    # mass once per layer of the grid (boundary * n), lying at most one box width from the mean.
    return {
        "richardson": (_RICHARDSON_SAFETY * diff_z, _RICHARDSON_SAFETY * diff_mean, _RICHARDSON_SAFETY * diff_cov),
        "roundoff": (round_z, round_mean, round_cov),
        "tail": (tail_mass, tail_mass * reach, tail_mass * (np.outer(reach, reach) + np.abs(cov))),
    }
