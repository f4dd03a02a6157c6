"""The Laplace approximation, eqs (5)-(8), and how far it is from the true posterior.

Around the MAP z* (where the gradient of the log posterior vanishes) a second-order Taylor
expansion of the log posterior is

    (5)-(7)  log p(z | D) ~ log p(z* | D) + 1/2 (z - z*)^T [d^2 log p(z | D) / dz^2]_{z*} (z - z*)
             (the report's Taylor expansion (5); its first-order term is zero at the maximum, (6))
    (8)      p(z | D) ~ N(z; z*, Lambda^{-1}),
             Lambda = -d^2 log p(z | D) / dz^2 |_{z*} = N H(z*) + Lambda_prior

where H is the Hessian of the MEAN loss L = 1/N sum_n l_n (docs/file-format.md) and Lambda_prior the
prior's precision. Three precisions are offered (`kind`):

========== ===================================================================
hessian    N H + Lambda_prior (exact; negative Hessian of the log posterior)
ggn        N F + Lambda_prior, F = 1/N sum_n J_n^T Lambda_n J_n (GGN = exact Fisher)
fisher_diag diag(N F) + diag(Lambda_prior): the approximation EWC makes
========== ===================================================================

and Laplace's approximation of the evidence (eq 1's denominator):

    log p(D) ~ log p(D | z*) + log p(z*) + d/2 log 2 pi - 1/2 log det Lambda

`compare_to_grid(grid, gaussian)` measures the approximation against the numerically integrated
posterior (grid.py): KL both ways, total variation and moment errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.optimize import minimize

from .._validate import as_float_array, check_choice, finite_or_refused
from ..curvature.estimate import fisher_unchecked
from ..curvature.second_order import hessian_vector_product
from ..verify.gradcheck import numerical_jacobian
from .grid import GridPosterior
from .posterior import LOG_2PI, GaussianPrior, LogPosterior, PosteriorPrior, as_points

KINDS = ("hessian", "ggn", "fisher_diag")


class MAPNotFound(RuntimeError):
    """The optimiser did not reach a point where the gradient of the log posterior vanishes."""


@dataclass
class MAPResult:
    """z : (d,) the MAP; log_posterior : unnormalised log posterior there; grad_norm : max |grad|;
    tolerance : the grad_norm that counts as converged; n_iterations; message : the optimiser's."""

    z: np.ndarray
    log_posterior: float
    grad_norm: float
    tolerance: float
    converged: bool
    n_iterations: int
    message: str


# ----------------------------------------------------------------------------- curvature
def _short(z, shown: int = 4) -> str:
    """A point for a one-line message: all of it when d <= shown, else its first entries, d and norm."""
    z = np.ravel(np.asarray(z, dtype=float))
    if z.size <= shown:
        return str([float(f"{v:.6g}") for v in z])
    head = ", ".join(f"{v:.4g}" for v in z[:shown])
    return f"[{head}, ...] (d = {z.size}, |z| = {np.linalg.norm(z):.4g})"


def _log_likelihood_hessian(post: LogPosterior, z: np.ndarray) -> np.ndarray:
    """d^2 log p(D | theta(z)) / dz^2 : (d, d) = -N H(theta(z))[free, free].

    d exact Hessian-vector products (R-op, ewc_ref.curvature.second_order) with the unit vectors of the free
    parameters: H e_i, restricted to the free rows.
    """
    free = post.subspace.free_indices
    units = np.zeros((free.size, post.subspace.model.n_params))
    units[np.arange(free.size), free] = 1.0
    hvp = hessian_vector_product(post.subspace.model_at(z), post.lik, post.x, post.y, units)[:, free]
    return -post.n * 0.5 * (hvp + hvp.T)


def _log_likelihood_hessian_fd(post: LogPosterior, z: np.ndarray) -> np.ndarray:
    """Finite-difference twin of _log_likelihood_hessian: central differences of the analytic
    gradient, h = 1e-5 (truncation ~h^2 |g^(3)|, round-off ~eps |g| / h: ~1e-10 relative)."""
    hessian = numerical_jacobian(post.log_likelihood_grad, z, h=1e-5)
    return 0.5 * (hessian + hessian.T)


def _fisher_sum(post: LogPosterior, z: np.ndarray, structure: str = "full") -> np.ndarray:
    """N F(theta(z)) restricted to the free parameters, (d, d); F the exact Fisher (= GGN),
    a mean over examples (docs/file-format.md), so N F = sum_n J_n^T Lambda_n J_n. structure='diag'
    returns the diagonal matrix diag(N F) from the diagonal estimator."""
    free = post.subspace.free_indices
    F = fisher_unchecked(post.subspace.model_at(z), post.lik, post.x, post.y, estimator="exact", structure=structure)
    if structure == "diag":
        return post.n * np.diag(F.diagonal[free])
    return post.n * F.to_dense()[np.ix_(free, free)]


def _prior_precision(prior, z: np.ndarray, kind: str) -> np.ndarray:
    if isinstance(prior, GaussianPrior):
        return np.diag(np.diag(prior.precision)) if kind == "fisher_diag" else prior.precision.copy()
    if isinstance(prior, PosteriorPrior):
        return _posterior_precision(prior.log_posterior, z, kind)
    raise TypeError(f"prior: no curvature rule for {type(prior).__name__}")


def _posterior_precision(post: LogPosterior, z: np.ndarray, kind: str) -> np.ndarray:
    if kind == "hessian":
        data_part = -_log_likelihood_hessian(post, z)
    else:
        data_part = _fisher_sum(post, z, "diag" if kind == "fisher_diag" else "full")
    return data_part + _prior_precision(post.prior, z, kind)


@finite_or_refused
def posterior_precision(post: LogPosterior, z, kind: str = "hessian") -> np.ndarray:
    """Lambda : (d, d), the precision of the Laplace Gaussian at z (eq 8, table above).

    For a PosteriorPrior (eq 4) the prior's precision is task A's posterior precision of the
    same kind, so precisions add up over tasks as in EWC.
    """
    if not isinstance(post, LogPosterior):
        raise TypeError(f"post: expected an ewc_ref.LogPosterior, got {type(post).__name__}")
    check_choice(kind, "kind", KINDS)
    z = as_points(z, post.d)
    if z.ndim != 1:
        raise ValueError(f"z: expected one point of shape ({post.d},), got shape {z.shape}")
    return _posterior_precision(post, z, kind)


# ----------------------------------------------------------------------------- MAP
def find_map(post: LogPosterior, z0=None, *, gtol: float = 1e-9, maxiter: int = 2000, check: bool = True) -> MAPResult:
    """Maximise the log posterior with L-BFGS-B (analytic gradients), then polish with Newton steps.

    Converged when max_i |d log p / d z_i| <= gtol (1 + N): the gradient is a sum of N
    per-example terms, so the tolerance scales with N.

    Parameters
    ----------
    post : LogPosterior
    z0 : (d,) start, default the subspace's current values
    check : raise MAPNotFound when not converged (else return with converged=False)
    """
    if not isinstance(post, LogPosterior):
        raise TypeError(f"post: expected an ewc_ref.LogPosterior, got {type(post).__name__}")
    z0 = post.subspace.z0() if z0 is None else as_points(z0, post.d, "z0")
    if z0.ndim != 1:
        raise ValueError(f"z0: expected shape ({post.d},), got {z0.shape}")
    tolerance = float(gtol) * (1 + post.n)

    def objective(z):
        return -post(z), -post.grad(z)

    result = minimize(objective, z0, jac=True, method="L-BFGS-B",
                      options={"maxiter": maxiter, "gtol": 1e-3 * tolerance, "ftol": 1e-15, "maxcor": 20})
    z = np.asarray(result.x, np.float64)
    # Newton polish: L-BFGS-B stops on relative decrease; a few exact-curvature steps
    # reach round-off where the log posterior is locally concave.
    grad = post.grad(z)
    for _ in range(8):
        if np.max(np.abs(grad)) <= 1e-3 * tolerance:
            break
        try:
            step = np.linalg.solve(_posterior_precision(post, z, "hessian"), grad)
        except np.linalg.LinAlgError:
            break
        candidate = z + step
        candidate_grad = post.grad(candidate)
        if not np.max(np.abs(candidate_grad)) < np.max(np.abs(grad)) or not post(candidate) >= post(z) - 1e-12 * (1 + abs(post(z))):
            break
        z, grad = candidate, candidate_grad
    grad_norm = float(np.max(np.abs(grad)))
    value = float(post(z))
    converged = bool(np.isfinite(value) and grad_norm <= tolerance)
    out = MAPResult(z, value, grad_norm, tolerance, converged, int(result.nit), str(result.message))
    if check and not converged:
        raise MAPNotFound(
            f"MAP not found: max |gradient of the log posterior| = {grad_norm:.3g} > tolerance {tolerance:.3g} "
            f"after {result.nit} L-BFGS-B iterations ({result.message}); z = {_short(z)}"
        )
    return out


# ----------------------------------------------------------------------------- the Gaussian
class LaplaceGaussian(GaussianPrior):
    """N(z; mean, precision^{-1}) with Laplace's log evidence (eqs 7-8).

    A GaussianPrior (so ``logpdf``, ``grad``, ``cov`` are the same code) that also knows
    where it came from.

    Attributes
    ----------
    mean : (d,) the MAP
    precision : (d, d)
    log_joint : log p(D | z*) + log p(z*), the unnormalised log posterior at the MAP
    kind : which precision ('hessian', 'ggn', 'fisher_diag')
    """

    def __init__(self, mean, precision, log_joint: float, kind: str):
        self.log_joint, self.kind = float(log_joint), kind
        precision = np.asarray(precision, np.float64)
        try:
            super().__init__(mean, precision)
        except ValueError as error:
            if "positive definite" not in str(error):
                raise
            # The smallest eigenvalue alone, of a symmetrised copy overwritten in place: one P x P
            # array besides `precision` (issue #26: the full spectrum of 0.5 (A + A^T) took three).
            symmetric = precision + precision.T
            symmetric *= 0.5
            smallest = float(scipy.linalg.eigvalsh(symmetric, subset_by_index=[0, 0], overwrite_a=True,
                                                   check_finite=False)[0])
            raise ValueError(
                f"precision ({kind}): not positive definite (smallest eigenvalue {smallest:.3g}) at "
                f"z = {_short(mean)}: the point is not a maximum of the log posterior"
            ) from None

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    @property
    def log_evidence(self) -> float:
        """log p(D) ~ log p(D | z*) + log p(z*) + d/2 log 2 pi - 1/2 log det Lambda."""
        return self.log_joint + 0.5 * self.d * LOG_2PI - 0.5 * self.log_det_precision

    def marginal_logpdf(self, axis: int, values) -> np.ndarray:
        """log N(values; mean[axis], cov[axis, axis]) : the 1-D marginal along one axis."""
        values = np.asarray(values, np.float64)
        var = self.cov[axis, axis]
        return -0.5 * (values - self.mean[axis]) ** 2 / var - 0.5 * np.log(2 * np.pi * var)

    def as_prior(self) -> GaussianPrior:
        """This Gaussian as the prior of the next task (EWC's replacement of p(theta | A) in eq 4)."""
        return GaussianPrior(self.mean, self.precision)


def laplace_approximation(post: LogPosterior, z_map=None, kind: str = "hessian") -> LaplaceGaussian:
    """The Laplace Gaussian of `post` (eqs 5-8).

    Parameters
    ----------
    post : LogPosterior
    z_map : (d,) the MAP; default `find_map(post).z`
    kind : 'hessian', 'ggn' or 'fisher_diag' (module docstring)

    Raises
    ------
    ValueError : the precision is not positive definite (z_map is not a maximum)
    MAPNotFound : the MAP search failed
    """
    if not isinstance(post, LogPosterior):
        raise TypeError(f"post: expected an ewc_ref.LogPosterior, got {type(post).__name__}")
    check_choice(kind, "kind", KINDS)
    z = find_map(post).z if z_map is None else as_points(z_map, post.d, "z_map")
    if z.ndim != 1:
        raise ValueError(f"z_map: expected shape ({post.d},), got {z.shape}")
    precision = _posterior_precision(post, z, kind)
    return LaplaceGaussian(z.copy(), 0.5 * (precision + precision.T), float(post(z)), kind)


# ----------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """How far a Gaussian q is from the grid posterior p.

    kl_grid_gaussian : KL(p || q);  kl_gaussian_grid : KL(q || p) (over the grid)
    total_variation : 1/2 int |p - q|;  gaussian_mass_in_grid : int_grid q (KL(q || p) needs ~1)
    mean_error : ||E_q z - E_p z||_2;  mean_error_std : the same in units of p's std (max over axes)
    cov_relative_error : ||Cov_q - Cov_p||_F / ||Cov_p||_F
    log_evidence_error : Laplace log evidence - grid log evidence (when q is a LaplaceGaussian)
    """

    kl_grid_gaussian: float
    kl_gaussian_grid: float
    total_variation: float
    gaussian_mass_in_grid: float
    mean_error: float
    mean_error_std: float
    cov_relative_error: float
    log_evidence_error: float


def compare_to_grid(grid: GridPosterior, gaussian: LaplaceGaussian) -> Comparison:
    """Divergences and moment errors of a Laplace Gaussian against a grid posterior of the same d."""
    if not isinstance(grid, GridPosterior):
        raise TypeError(f"grid: expected an ewc_ref.GridPosterior, got {type(grid).__name__}")
    if not isinstance(gaussian, LaplaceGaussian):
        raise TypeError(f"gaussian: expected an ewc_ref.LaplaceGaussian, got {type(gaussian).__name__}")
    if grid.d != gaussian.d:
        raise ValueError(f"gaussian: has dimension {gaussian.d} but the grid posterior has d = {grid.d}")
    diff = gaussian.mean - grid.mean
    std = np.sqrt(np.diag(grid.cov))
    return Comparison(
        kl_grid_gaussian=grid.kl_to(gaussian.logpdf),
        kl_gaussian_grid=grid.kl_from(gaussian.logpdf),
        total_variation=grid.total_variation(gaussian.logpdf),
        gaussian_mass_in_grid=grid.mass_of(gaussian.logpdf),
        mean_error=float(np.linalg.norm(diff)),
        mean_error_std=float(np.max(np.abs(diff) / std)),
        cov_relative_error=float(np.linalg.norm(gaussian.cov - grid.cov) / np.linalg.norm(grid.cov)),
        log_evidence_error=float(gaussian.log_evidence - grid.log_evidence),
    )


def kl_gaussians(mean_p, cov_p, mean_q, cov_q) -> float:
    """KL(N(m_p, S_p) || N(m_q, S_q)) = 1/2 [tr(S_q^-1 S_p) + r^T S_q^-1 r - d + log det S_q - log det S_p]."""
    mean_p, mean_q = as_float_array(mean_p, "mean_p", ndim=1), as_float_array(mean_q, "mean_q", ndim=1)
    cov_p, cov_q = as_float_array(cov_p, "cov_p", ndim=2), as_float_array(cov_q, "cov_q", ndim=2)
    d = mean_p.size
    if mean_q.shape != (d,) or cov_p.shape != (d, d) or cov_q.shape != (d, d):
        raise ValueError(f"mean_q, cov_p, cov_q: expected shapes ({d},), ({d}, {d}), ({d}, {d}) to match mean_p")
    logdet_p, logdet_q = _logdet_spd(cov_p, "cov_p"), _logdet_spd(cov_q, "cov_q")
    r = mean_q - mean_p
    solve = np.linalg.solve(cov_q, np.column_stack([cov_p, r]))
    return float(0.5 * (np.trace(solve[:, :d]) + r @ solve[:, d] - d + logdet_q - logdet_p))


def _logdet_spd(cov: np.ndarray, name: str) -> float:
    """log det of a symmetric positive definite (d, d) matrix by Cholesky; ValueError naming `name` otherwise."""
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-300):
        raise ValueError(f"{name}: a covariance must be symmetric, got max |S - S^T| = {np.abs(cov - cov.T).max():.3g}")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: not positive definite (smallest eigenvalue {np.linalg.eigvalsh(cov)[0]:.3g})") from None
    return float(2.0 * np.log(np.diag(chol)).sum())
