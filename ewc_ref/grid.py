"""Posteriors integrated numerically on a grid in d = 1, 2 or 3 dimensions.

Given an unnormalised log density log q(z) (for example `bayes.LogPosterior`), the grid
posterior tabulates q on a regular grid z_k with spacing h_i per axis and integrates with
the trapezoid rule (product weights w_k = prod_i h_i c_i, c = 1/2 on the outermost
points, 1 inside), in log space so nothing underflows:

    log p(D) = log int q(z) dz  ~  logsumexp_k (log q(z_k) + log w_k)          (eq 1's denominator)
    p(z_k)   = exp(log q(z_k) - log p(D))
    E[z]     ~ sum_k w_k p(z_k) z_k,  Cov[z] ~ sum_k w_k p(z_k) (z_k - E z)(z_k - E z)^T

Bounds are adaptive: a coarse grid around `center` is widened until the region where
log q > max log q - `tail` (default 30 nats: density below e^-30 ~ 1e-13 of the peak is
dropped) touches no face, then tightened to that region plus one coarse cell.

Error estimate: an upper bound on |actual error| of log p(D), every mean entry and every
covariance entry, the sum of three parts (`GridPosterior.error_parts`):

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

For d = 1 the evidence is cross-checked with adaptive quadrature (scipy.integrate.quad) on
bounds three times as wide (`quad_log_evidence`, `quad_error`).

Refused: d > 3 (n^d points: use the Laplace approximation instead), log densities that are NaN
or +inf, grids that do not contain the mass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import quad
from scipy.special import logsumexp

from ._validate import as_float_array

MAX_DIMENSION = 3
DEFAULT_POINTS = {1: 801, 2: 161, 3: 49}
# The odd half grid keeps (n - 1) / 2 points per axis: at least 4, or the error estimate is blind
# (with n = 5 the scan measured actual errors up to 300x the estimate).
MIN_POINTS = 11
_COARSE_POINTS = {1: 65, 2: 41, 3: 21}
# Error model constants, justified by benchmarks/grid_error_scan.py (module docstring).
_RICHARDSON_SAFETY = 4.0
# Resolution: |second difference of log q| <= 4, i.e. spacing <= 2 conditional sds (docstring).
_MAX_SECOND_DIFFERENCE = 4.0
# Points holding at least this fraction of the largest point mass are where resolution matters.
_SIGNIFICANT_MASS = 1e-6
_LOG_DENSITY_ULPS = 4.0
_SUM_ULPS = 20.0


@dataclass
class GridPosterior:
    """A normalised posterior tabulated on a d-dimensional grid (d <= 3).

    Attributes
    ----------
    axes : list of d arrays (n_i,), the grid coordinates per axis
    log_density : (n_1, ..., n_d) normalised log p(z) at the grid points
    log_weights : (n_1, ..., n_d) log of the trapezoid weights w_k
    log_evidence, log_evidence_error : log int q(z) dz and its estimated error
    mean, mean_error : (d,)
    cov, cov_error : (d, d)
    boundary_mass : probability mass in the outermost layer of cells
    quad_log_evidence, quad_error : d = 1 only, adaptive quadrature cross-check (else None)
    n_evaluations : number of log-density evaluations, including the bound search
    coarse : the all-even half grid's log_evidence, mean, cov
    error_parts : {'richardson', 'roundoff', 'tail', 'resolution'} -> (log Z, mean (d,), cov (d, d))
        parts of the error estimates (each estimate is their sum; module docstring)
    resolved : False when the spacing exceeds twice a conditional sd where the mass is (the
        estimates are then raised to the quantities' scales)
    """

    axes: list
    log_density: np.ndarray
    log_weights: np.ndarray
    log_evidence: float
    log_evidence_error: float
    mean: np.ndarray
    mean_error: np.ndarray
    cov: np.ndarray
    cov_error: np.ndarray
    boundary_mass: float
    quad_log_evidence: float | None = None
    quad_error: float | None = None
    n_evaluations: int = 0
    coarse: dict = field(default_factory=dict, repr=False)
    error_parts: dict = field(default_factory=dict, repr=False)
    resolved: bool = True

    @property
    def d(self) -> int:
        return len(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.log_density.shape

    @property
    def spacing(self) -> np.ndarray:
        """h : (d,)."""
        return np.array([_spacing(a) for a in self.axes])

    @property
    def bounds(self) -> np.ndarray:
        """(d, 2) lower and upper bound per axis."""
        return np.array([[a[0], a[-1]] for a in self.axes])

    def points(self) -> np.ndarray:
        """All grid points z_k : (K, d), K = prod n_i, in C order of `log_density`."""
        return _grid_points(self.axes)

    @property
    def density(self) -> np.ndarray:
        """p(z_k) : (n_1, ..., n_d)."""
        return np.exp(self.log_density)

    @property
    def masses(self) -> np.ndarray:
        """w_k p(z_k) : (n_1, ..., n_d), the probability of each point's cell; sums to 1."""
        return np.exp(self.log_density + self.log_weights)

    @property
    def mode(self) -> np.ndarray:
        """The grid point of highest density, (d,)."""
        index = np.unravel_index(np.argmax(self.log_density), self.shape)
        return np.array([a[i] for a, i in zip(self.axes, index, strict=True)])

    def marginal(self, axis: int):
        """The marginal density of z_axis: (coordinates (n,), density (n,)).

        p(z_i) = int p(z) dz_{-i}, by the trapezoid rule over the other axes.
        """
        if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not 0 <= axis < self.d:
            raise ValueError(f"axis: expected an integer in 0..{self.d - 1}, got {axis!r}")
        others = tuple(i for i in range(self.d) if i != axis)
        log_w_others = sum(
            np.log(_trapezoid_weights(a)).reshape([-1 if j == i else 1 for j in range(self.d)])
            for i, a in enumerate(self.axes) if i != axis
        )
        values = self.log_density + (log_w_others if others else 0.0)
        marginal = np.exp(logsumexp(values, axis=others)) if others else np.exp(values)
        return self.axes[axis].copy(), marginal

    # ----------------------------------------------------------- comparisons with q
    def _log_q(self, log_q: Callable) -> np.ndarray:
        values = np.asarray(log_q(self.points()), np.float64).reshape(self.shape)
        if np.any(np.isnan(values)) or np.any(values == np.inf):
            raise ValueError("log_q: returned NaN or +inf on the grid")
        return values

    def mass_of(self, log_q: Callable) -> float:
        """int_grid q(z) dz for a normalised log density log_q : (K, d) -> (K,)."""
        return float(np.exp(logsumexp(self._log_q(log_q) + self.log_weights)))

    def kl_to(self, log_q: Callable) -> float:
        """KL(p || q) = int p(z) (log p(z) - log q(z)) dz, p this grid posterior.

        log_q : normalised log density, (K, d) -> (K,).
        """
        lq = self._log_q(log_q)
        p = self.masses
        inside = p > 0
        if np.any(inside & (lq == -np.inf)):
            return float("inf")
        return float(np.sum(p[inside] * (self.log_density[inside] - lq[inside])))

    def kl_from(self, log_q: Callable) -> float:
        """KL(q || p) = int q(z) (log q(z) - log p(z)) dz over the grid.

        Exact only when q's mass lies in the grid: check `mass_of(log_q)`.
        """
        lq = self._log_q(log_q)
        q = np.exp(lq + self.log_weights)
        inside = q > 0
        if np.any(inside & (self.log_density == -np.inf)):
            return float("inf")
        return float(np.sum(q[inside] * (lq[inside] - self.log_density[inside])))

    def total_variation(self, log_q: Callable) -> float:
        """TV(p, q) = 1/2 int |p(z) - q(z)| dz over the grid."""
        lq = self._log_q(log_q)
        return float(0.5 * np.sum(np.exp(self.log_weights) * np.abs(self.density - np.exp(lq))))

    def summary(self) -> str:
        lines = [
            f"grid posterior, d = {self.d}, {self.log_density.size} points, bounds {self.bounds.tolist()}",
            f"log evidence {self.log_evidence:.10g} +- {self.log_evidence_error:.2g}",
            f"mean {np.array2string(self.mean, precision=6)} +- {np.array2string(self.mean_error, precision=2)}",
            f"boundary mass {self.boundary_mass:.2g}",
        ]
        if not self.resolved:
            lines.append("NOT RESOLVED: the spacing exceeds twice a conditional sd; raise n_points")
        if self.quad_log_evidence is not None:
            lines.append(f"quad cross-check: log evidence {self.quad_log_evidence:.10g} +- {self.quad_error:.2g}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- internals
def _grid_points(axes) -> np.ndarray:
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def _spacing(axis: np.ndarray) -> float:
    """h = (b - a) / (n - 1): relative error ~eps, where axis[1] - axis[0] loses eps |a| / h."""
    return float((axis[-1] - axis[0]) / (axis.size - 1))


def _trapezoid_weights(axis: np.ndarray) -> np.ndarray:
    h = _spacing(axis)
    w = np.full(axis.size, h)
    w[0] = w[-1] = 0.5 * h
    return w


def _log_trapezoid_weights(axes) -> np.ndarray:
    d = len(axes)
    total = np.zeros([a.size for a in axes])
    for i, a in enumerate(axes):
        total = total + np.log(_trapezoid_weights(a)).reshape([-1 if j == i else 1 for j in range(d)])
    return total


def _evaluate(log_density: Callable, points: np.ndarray) -> np.ndarray:
    values = np.asarray(log_density(points), dtype=np.float64)
    if values.shape != (points.shape[0],):
        raise ValueError(
            f"log_density: expected an array of shape ({points.shape[0]},) for points of shape "
            f"{points.shape}, got shape {values.shape}"
        )
    bad = np.isnan(values) | (values == np.inf)
    if np.any(bad):
        raise ValueError(
            f"log_density: non-finite value ({values[bad][0]}) at z = {points[bad][0].tolist()}; "
            "a log density must be finite or -inf"
        )
    return values


def _pairwise_sum(terms: np.ndarray) -> float:
    """sum_k terms_k of a contiguous 1-d array by numpy's pairwise summation (error bound below)."""
    return float(np.sum(np.ascontiguousarray(terms).ravel()))


def _moments(log_q: np.ndarray, axes):
    """(log Z, mean (d,), cov (d, d), masses (K,), centred (d, K)) of the trapezoid rule on this grid.

    Every sum runs along a contiguous axis, so numpy sums it pairwise (`_SUM_ULPS`).
    """
    log_w = _log_trapezoid_weights(axes)
    log_z = float(logsumexp(log_q + log_w))
    masses = np.exp(log_q + log_w - log_z).ravel()
    # Renormalise by the computed sum: a rounding of log Z (eps |log Z|) would otherwise scale the
    # mean by 1 + eps |log Z|, an error of eps |log Z| |mean| that no sum of positive terms needs.
    masses /= _pairwise_sum(masses)
    points = _grid_points(axes).T  # (d, K), rows contiguous
    mean = np.array([_pairwise_sum(masses * row) for row in points])
    centred = points - mean[:, None]
    d = len(axes)
    cov = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            cov[i, j] = cov[j, i] = _pairwise_sum(masses * centred[i] * centred[j])
    return log_z, mean, cov, masses, centred


def _richardson(log_q: np.ndarray, axes, log_z: float, mean: np.ndarray, cov: np.ndarray):
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
        sub_z, sub_mean, sub_cov, _, _ = _moments(log_q[index], [a[i] for a, i in zip(axes, index, strict=True)])
        if not any(parity):
            even = {"log_evidence": sub_z, "mean": sub_mean, "cov": sub_cov}
        diff_z = max(diff_z, abs(log_z - sub_z))
        diff_mean = np.maximum(diff_mean, np.abs(mean - sub_mean))
        diff_cov = np.maximum(diff_cov, np.abs(cov - sub_cov))
    return diff_z, diff_mean, diff_cov, even


def _max_second_difference(log_q: np.ndarray, masses: np.ndarray) -> float:
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
    log_w = _log_trapezoid_weights(axes).ravel()
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


def _boundary_mass(log_p: np.ndarray, log_w: np.ndarray) -> float:
    """Probability in the outermost layer of points (index 0 or n_i - 1 along some axis), summed
    directly (1 - interior would lose it to cancellation below ~1e-16)."""
    on_face = np.zeros(log_p.shape, bool)
    for axis in range(log_p.ndim):
        index = [slice(None)] * log_p.ndim
        index[axis] = [0, -1]
        on_face[tuple(index)] = True
    return float(np.sum(np.exp(log_p + log_w)[on_face]))


def _find_bounds(log_density, center, scale, tail, n_coarse, max_iter=40):
    """Widen/zoom a coarse grid until the region {log q > max - tail} lies strictly inside."""
    d = center.size
    lo, hi = center - 8 * scale, center + 8 * scale
    evaluations = 0
    for _ in range(max_iter):
        axes = [np.linspace(lo[i], hi[i], n_coarse) for i in range(d)]
        values = _evaluate(log_density, _grid_points(axes)).reshape((n_coarse,) * d)
        evaluations += values.size
        peak = values.max()
        if not np.isfinite(peak):
            raise ValueError("log_density: is -inf at every point of the search grid around center")
        keep = values >= peak - tail
        changed = False
        new_lo, new_hi = lo.copy(), hi.copy()
        for i in range(d):
            along = keep.any(axis=tuple(j for j in range(d) if j != i))
            first, last = np.flatnonzero(along)[[0, -1]]
            width = hi[i] - lo[i]
            if first == 0 or last == n_coarse - 1:
                new_lo[i] -= width if first == 0 else 0.0
                new_hi[i] += width if last == n_coarse - 1 else 0.0
                changed = True
                continue
            new_lo[i], new_hi[i] = axes[i][first - 1], axes[i][last + 1]
            if last - first < n_coarse // 4:
                changed = True  # the mass occupies few coarse cells: zoom in and look again
        lo, hi = new_lo, new_hi
        if np.any(hi - lo > 1e8 * (1 + np.abs(center))):
            break
        if not changed:
            return lo, hi, evaluations
    raise ValueError(
        f"grid: could not find bounds that contain the posterior mass (log density within {tail} nats of its "
        f"maximum still reaches the faces after widening to {np.stack([lo, hi], 1).tolist()}); the density may be "
        "improper or far from `center`"
    )


def _quad_log_evidence(log_density, lo, hi, mode, shift):
    width = hi - lo

    def integrand(t):
        return float(np.exp(_evaluate(log_density, np.array([[t]]))[0] - shift))

    value, abserr = quad(integrand, lo - width, hi + width, points=[mode], epsabs=0.0, epsrel=1e-11, limit=500)
    if value <= 0:
        raise ValueError("log_density: adaptive quadrature found no mass (the integrand vanished)")
    return float(np.log(value) + shift), float(abserr / value)


# ----------------------------------------------------------------------------- public
def grid_posterior(log_density: Callable, center, scale=1.0, *, bounds=None, n_points: int | None = None,
                   tail: float = 30.0, boundary_tol: float = 1e-6, quad_check: bool = True) -> GridPosterior:
    """Normalise an unnormalised log density numerically on an adaptive grid (d <= 3).

    Parameters
    ----------
    log_density : callable (K, d) -> (K,), log q(z) up to a constant (e.g. a LogPosterior)
    center : (d,) a point near the mode (e.g. the MAP)
    scale : float or (d,), the expected posterior width per axis (e.g. Laplace standard
        deviations); the search starts at center +- 8 scale and adapts
    bounds : optional (d, 2) fixed bounds (no adaptation; checked for boundary mass)
    n_points : odd number >= 11 of points per axis, default 801 / 161 / 49 for d = 1 / 2 / 3
    tail : nats below the peak that the adaptive bounds must contain
    boundary_tol : largest probability mass allowed in the outermost cells
    quad_check : for d = 1, also integrate with scipy.integrate.quad

    Returns
    -------
    GridPosterior with the normalised log density, log evidence, mean, covariance,
    their Richardson error estimates (see the module docstring) and the boundary mass.

    Raises
    ------
    ValueError : d > 3, even n_points, non-finite log density, mass not contained.
    """
    if not callable(log_density):
        raise TypeError(f"log_density: expected a callable (K, d) -> (K,), got {type(log_density).__name__}")
    center = as_float_array(center, "center").astype(np.float64).reshape(-1)
    d = center.size
    if d > MAX_DIMENSION:
        raise ValueError(
            f"center: numerical integration on a grid is limited to d <= {MAX_DIMENSION} parameters "
            f"(n^d points), got d = {d}; use a Subspace with at most 3 free parameters or the Laplace "
            "approximation (ewc_ref.laplace)"
        )
    if d == 0:
        raise ValueError("center: expected at least one dimension")
    scale = as_float_array(scale, "scale").astype(np.float64)
    scale = np.broadcast_to(scale, (d,)).copy() if scale.ndim == 0 else scale
    if scale.shape != (d,) or np.any(scale <= 0):
        raise ValueError(f"scale: expected a number > 0 or {d} numbers > 0, got {scale.tolist()}")
    n = DEFAULT_POINTS[d] if n_points is None else n_points
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < MIN_POINTS or n % 2 == 0:
        raise ValueError(f"n_points: expected an odd integer >= {MIN_POINTS} (the error estimate uses every second "
                         f"point), got {n!r}")
    tail, boundary_tol = float(tail), float(boundary_tol)
    if not tail > 0:
        raise ValueError(f"tail: expected a number of nats > 0, got {tail}")
    if not 0 < boundary_tol < 1:
        raise ValueError(f"boundary_tol: expected a number in (0, 1), got {boundary_tol}")

    evaluations = 0
    if bounds is None:
        lo, hi, evaluations = _find_bounds(log_density, center, scale, tail, _COARSE_POINTS[d])
    else:
        bounds = as_float_array(bounds, "bounds", ndim=2).astype(np.float64)
        if bounds.shape != (d, 2) or np.any(bounds[:, 1] <= bounds[:, 0]):
            raise ValueError(f"bounds: expected shape ({d}, 2) with lower < upper per row, got {bounds.tolist()}")
        lo, hi = bounds[:, 0], bounds[:, 1]

    axes = [np.linspace(lo[i], hi[i], n) for i in range(d)]
    log_q = _evaluate(log_density, _grid_points(axes)).reshape((n,) * d)
    evaluations += log_q.size
    if not np.isfinite(log_q.max()):
        raise ValueError("log_density: is -inf at every grid point")

    log_z, mean, cov, masses, centred = _moments(log_q, axes)
    diff_z, diff_mean, diff_cov, even = _richardson(log_q, axes, log_z, mean, cov)
    log_w = _log_trapezoid_weights(axes)
    log_p = log_q - log_z
    boundary = _boundary_mass(log_p, log_w)
    if boundary > boundary_tol:
        raise ValueError(
            f"grid: {boundary:.3g} of the posterior mass lies in the outermost cells (threshold boundary_tol = "
            f"{boundary_tol:.3g}): the grid {np.stack([lo, hi], 1).tolist()} does not contain the mass; widen "
            "`bounds` or let them adapt (bounds=None)"
        )
    round_z, round_mean, round_cov = _roundoff(log_q, axes, log_z, mean, cov, masses, centred)
    # The truncated tail: the mass beyond the bounds is taken to be at most the outermost layer's
    # mass once per layer of the grid (boundary * n), lying at most one box width from the mean.
    tail_mass = boundary * n
    reach = hi - lo
    parts = {
        "richardson": (_RICHARDSON_SAFETY * diff_z, _RICHARDSON_SAFETY * diff_mean, _RICHARDSON_SAFETY * diff_cov),
        "roundoff": (round_z, round_mean, round_cov),
        "tail": (tail_mass, tail_mass * reach, tail_mass * (np.outer(reach, reach) + np.abs(cov))),
    }
    resolved = _max_second_difference(log_q, masses) <= _MAX_SECOND_DIFFERENCE
    spread = np.sqrt(np.abs(np.diag(cov))) + reach / (n - 1)
    parts["resolution"] = (0.0, np.zeros(d), np.zeros((d, d))) if resolved else (
        1 + abs(log_z), spread, np.outer(spread, spread))
    log_z_err, mean_err, cov_err = (sum(part[q] for part in parts.values()) for q in range(3))

    result = GridPosterior(
        axes=axes, log_density=log_p, log_weights=log_w, log_evidence=log_z, log_evidence_error=float(log_z_err),
        mean=mean, mean_error=mean_err, cov=cov, cov_error=cov_err, boundary_mass=boundary,
        n_evaluations=evaluations, coarse=even, error_parts=parts, resolved=bool(resolved),
    )
    if d == 1 and quad_check:
        result.quad_log_evidence, result.quad_error = _quad_log_evidence(
            log_density, lo[0], hi[0], float(result.mode[0]), float(log_q.max())
        )
    return result
