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
covariance entry, the sum of a Richardson, a round-off, a truncated-tail and a resolution part; the model and
its measured calibration are in the docstring of ``trapezoid`` (the rule and its error bound).

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

from .._validate import as_float_array
from . import trapezoid

MAX_DIMENSION = 3
DEFAULT_POINTS = {1: 801, 2: 161, 3: 49}
# The odd half grid keeps (n - 1) / 2 points per axis: at least 4, or the error estimate is blind
# (with n = 5 the scan measured actual errors up to 300x the estimate).
MIN_POINTS = 11
_COARSE_POINTS = {1: 65, 2: 41, 3: 21}


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
        return np.array([trapezoid.spacing(a) for a in self.axes])

    @property
    def bounds(self) -> np.ndarray:
        """(d, 2) lower and upper bound per axis."""
        return np.array([[a[0], a[-1]] for a in self.axes])

    def points(self) -> np.ndarray:
        """All grid points z_k : (K, d), K = prod n_i, in C order of `log_density`."""
        return trapezoid.grid_points(self.axes)

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
            np.log(trapezoid.trapezoid_weights(a)).reshape([-1 if j == i else 1 for j in range(self.d)])
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


def _find_bounds(log_density, center, scale, tail, n_coarse, max_iter=40):
    """Widen/zoom a coarse grid until the region {log q > max - tail} lies strictly inside."""
    d = center.size
    lo, hi = center - 8 * scale, center + 8 * scale
    evaluations = 0
    for _ in range(max_iter):
        axes = [np.linspace(lo[i], hi[i], n_coarse) for i in range(d)]
        values = _evaluate(log_density, trapezoid.grid_points(axes)).reshape((n_coarse,) * d)
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
    center, scale, n, tail, boundary_tol = _check_grid_arguments(log_density, center, scale, n_points, tail, boundary_tol)
    d = center.size
    evaluations = 0
    if bounds is None:
        lo, hi, evaluations = _find_bounds(log_density, center, scale, tail, _COARSE_POINTS[d])
    else:
        bounds = as_float_array(bounds, "bounds", ndim=2).astype(np.float64)
        if bounds.shape != (d, 2) or np.any(bounds[:, 1] <= bounds[:, 0]):
            raise ValueError(f"bounds: expected shape ({d}, 2) with lower < upper per row, got {bounds.tolist()}")
        lo, hi = bounds[:, 0], bounds[:, 1]

    axes = [np.linspace(lo[i], hi[i], n) for i in range(d)]
    log_q = _evaluate(log_density, trapezoid.grid_points(axes)).reshape((n,) * d)
    evaluations += log_q.size
    if not np.isfinite(log_q.max()):
        raise ValueError("log_density: is -inf at every grid point")

    log_z, mean, cov, masses, centred = trapezoid.moments(log_q, axes)
    diff_z, diff_mean, diff_cov, even = trapezoid.richardson(log_q, axes, log_z, mean, cov)
    log_w = trapezoid.log_trapezoid_weights(axes)
    log_p = log_q - log_z
    boundary = trapezoid.boundary_mass(log_p, log_w)
    if boundary > boundary_tol:
        raise ValueError(
            f"grid: {boundary:.3g} of the posterior mass lies in the outermost cells (threshold boundary_tol = "
            f"{boundary_tol:.3g}): the grid {np.stack([lo, hi], 1).tolist()} does not contain the mass; widen "
            "`bounds` or let them adapt (bounds=None)"
        )
    parts = trapezoid.error_parts(log_q, axes, (log_z, mean, cov, masses, centred), (diff_z, diff_mean, diff_cov),
                         boundary * n, hi - lo)
    resolved = trapezoid.max_second_difference(log_q, masses) <= trapezoid.MAX_SECOND_DIFFERENCE
    spread = np.sqrt(np.abs(np.diag(cov))) + (hi - lo) / (n - 1)
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


def _check_grid_arguments(log_density, center, scale, n_points, tail, boundary_tol):
    """grid_posterior's public edge: (center (d,), scale (d,), n, tail, boundary_tol), or raise naming the argument."""
    if not callable(log_density):
        raise TypeError(f"log_density: expected a callable (K, d) -> (K,), got {type(log_density).__name__}")
    center = as_float_array(center, "center").astype(np.float64).reshape(-1)
    d = center.size
    if d > MAX_DIMENSION:
        raise ValueError(
            f"center: numerical integration on a grid is limited to d <= {MAX_DIMENSION} parameters "
            f"(n^d points), got d = {d}; use a Subspace with at most 3 free parameters or the Laplace "
            "approximation (ewc_ref.bayes.laplace)"
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
    return center, scale, n, tail, boundary_tol
