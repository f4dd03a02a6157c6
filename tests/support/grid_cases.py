"""Densities with closed-form normalisers and moments, to measure the grid posterior's
actual errors (tests/bayes/test_grid*.py, benchmarks/grid_error_scan.py).

Each `Case` carries an unnormalised log density log q : (K, d) -> (K,), a start for the bound
search (center, scale) and the exact log Z = log int q, mean E[z] : (d,) and Cov[z] : (d, d).

1-d families
    gamma_log(a)      z = log g, g ~ Gamma(a): log q = a z - e^z. Skewed (left tail e^{a z},
                      right tail doubly exponential); log Z = log Gamma(a), E z = digamma(a),
                      Var z = trigamma(a).
    student_t(nu)     log q = -(nu + 1)/2 log(1 + z^2 / nu); heavy (power-law) tails;
                      log Z = log(sqrt(nu pi) Gamma(nu/2) / Gamma((nu + 1)/2)), Var = nu / (nu - 2).
    flat_top(p)       log q = -(z / s)^p, p even: a nearly flat top with steep sides;
                      log Z = log(2 s Gamma(1 + 1/p)), Var = s^2 Gamma(3/p) / Gamma(1/p).
    gaussian(sd)      log q = -z^2 / (2 sd^2); log Z = log(sd sqrt(2 pi)).
Combinators
    product(*cases)   independent coordinates: log Z adds, mean concatenates, Cov block-diagonal.
    affine(case, A, c, const)  z = A u + c for u ~ case: log q_z(z) = log q_u(A^-1 (z - c)) + const,
                      log Z = log Z_u + log |det A| + const, E z = A E u + c, Cov z = A Cov u A^T.
                      With a lower-triangular A this makes correlated, skewed 2-d and 3-d cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, polygamma


@dataclass
class Case:
    name: str
    log_q: object  # callable (K, d) -> (K,)
    center: np.ndarray
    scale: np.ndarray
    log_z: float
    mean: np.ndarray
    cov: np.ndarray

    @property
    def d(self) -> int:
        return self.mean.size


def _one(name, log_q_1d, center, scale, log_z, mean, var) -> Case:
    return Case(name, lambda z: log_q_1d(z[:, 0]), np.array([center], float), np.array([scale], float),
                float(log_z), np.array([mean], float), np.array([[var]], float))


def gamma_log(a: float) -> Case:
    def log_q(z):
        with np.errstate(over="ignore"):  # far right of the search grid: e^z = inf, log q = -inf
            return a * z - np.exp(z)

    return _one(f"gamma_log(a={a:g})", log_q, np.log(a), 1 / np.sqrt(a),
                gammaln(a), polygamma(0, a), polygamma(1, a))


def student_t(nu: float) -> Case:
    log_z = 0.5 * np.log(nu * np.pi) + gammaln(nu / 2) - gammaln((nu + 1) / 2)
    return _one(f"student_t(nu={nu:g})", lambda z: -(nu + 1) / 2 * np.log1p(z**2 / nu), 0.0, 1.0,
                log_z, 0.0, nu / (nu - 2))


def flat_top(p: int, s: float = 1.0) -> Case:
    log_z = np.log(2 * s) + gammaln(1 + 1 / p)
    var = s**2 * np.exp(gammaln(3 / p) - gammaln(1 / p))
    return _one(f"flat_top(p={p})", lambda z: -((z / s) ** p), 0.0, s, log_z, 0.0, var)


def gaussian(sd: float) -> Case:
    return _one(f"gaussian(sd={sd:g})", lambda z: -0.5 * (z / sd) ** 2, 0.0, sd,
                np.log(sd * np.sqrt(2 * np.pi)), 0.0, sd**2)


def product(*cases: Case) -> Case:
    sizes = np.cumsum([0] + [c.d for c in cases])

    def log_q(z):
        return sum(c.log_q(z[:, lo:hi]) for c, lo, hi in zip(cases, sizes[:-1], sizes[1:], strict=True))

    d = sizes[-1]
    cov = np.zeros((d, d))
    for c, lo, hi in zip(cases, sizes[:-1], sizes[1:], strict=True):
        cov[lo:hi, lo:hi] = c.cov
    return Case(" x ".join(c.name for c in cases), log_q, np.concatenate([c.center for c in cases]),
                np.concatenate([c.scale for c in cases]), sum(c.log_z for c in cases),
                np.concatenate([c.mean for c in cases]), cov)


def affine(case: Case, A, c=None, const: float = 0.0, name: str | None = None) -> Case:
    A = np.atleast_2d(np.asarray(A, float))
    c = np.zeros(case.d) if c is None else np.asarray(c, float)
    A_inv = np.linalg.inv(A)

    def log_q(z):
        return case.log_q((z - c) @ A_inv.T) + const

    cov = A @ case.cov @ A.T
    # Start the search at the image of the base case's start, with the image's marginal widths.
    scale = np.sqrt(np.diag(A @ np.diag(case.scale**2) @ A.T))
    label = name or f"{A.tolist()} {case.name} + {np.round(c, 3).tolist()} (log q + {const:g})"
    return Case(label, log_q, A @ case.center + c, scale,
                case.log_z + np.log(abs(np.linalg.det(A))) + const, A @ case.mean + c, cov)


def shifted(case: Case, loc, const: float = 0.0) -> Case:
    """The same case moved to `loc` + its mean with log q offset by `const` (probes round-off)."""
    loc = np.broadcast_to(np.asarray(loc, float), (case.d,))
    return affine(case, np.eye(case.d), loc, const, name=f"{case.name} + {np.round(loc, 3).tolist()} "
                                                           f"(log q + {const:g})")


def actual_errors(grid, case: Case):
    """(|log Z error|, |mean error| (d,), |cov error| (d, d)) of a GridPosterior against the closed form."""
    return (abs(grid.log_evidence - case.log_z), np.abs(grid.mean - case.mean), np.abs(grid.cov - case.cov))


def estimate_scales(grid):
    """The scale each error estimate is measured against: (1 + |log Z|, sd : (d,), sd sd^T : (d, d))."""
    sd = np.sqrt(np.diag(grid.cov))
    return 1 + abs(grid.log_evidence), sd, np.outer(sd, sd)


def assert_estimates_small(grid, rel: float):
    """Every error estimate of a GridPosterior is below `rel` of its scale (estimate_scales).

    A test whose tolerance is the grid's own error estimate passes for any estimate that is large
    enough; this is the other half, so that an inflated estimate (x 1e6) fails.
    """
    z_scale, sd, cov_scale = estimate_scales(grid)
    assert grid.log_evidence_error <= rel * z_scale, (grid.log_evidence_error, z_scale, rel)
    assert np.all(grid.mean_error <= rel * sd), (grid.mean_error, sd, rel)
    assert np.all(grid.cov_error <= rel * cov_scale), (grid.cov_error, cov_scale, rel)
