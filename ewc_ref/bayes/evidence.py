"""The Laplace log evidence of a whole MLP, as laplace-torch's ``log_marginal_likelihood`` computes it.

The model's weights theta* are taken as the MAP (laplace-torch does the same: it never
re-optimises), the prior is isotropic N(0, I / alpha), and the log posterior's curvature at
theta* is N C + alpha I, C a curvature of the MEAN loss (``fisher``): the likelihood is SUMMED
over the N examples (derivations/03, eq 8). Laplace's approximation of the evidence is

    log p(D) ~ log p(D | theta*) + log p(theta*) + P/2 log 2 pi - 1/2 log det Prec
             = log p(D | theta*) - alpha/2 |theta*|^2 - 1/2 (log det Prec - P log alpha),

    Prec = N C + alpha I  (P, P),   log p(D | theta*) = -sum_n l_n.

The P/2 log 2 pi of the prior and of the Gaussian integral cancel in the second line.
``log det Prec`` by structure (the prior added exactly in every one):

=========  ===============================================================================
diag       sum_i log(N c_i + alpha), c = diag C
full       2 sum_i log L_ii, Prec = L L^T (Cholesky)
kfac       per Linear layer, lG, lA the eigenvalues of N G and A:
           sum_ij log(lG_i lA_j + alpha) (laplace-torch's 'kron': eigenvalues of the Kronecker
           factors); kfac_bias='separate' adds the bias block N G + alpha I: sum_i log(lG_i + alpha)
=========  ===============================================================================

A precision that is not positive definite (an indefinite Hessian at a point that is not a
minimum, alpha too small to cover it) has no Gaussian: ``NotPositiveDefinite`` gives its smallest
eigenvalue, where laplace-torch returns NaN or a number from a negative determinant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg

from .._validate import check_choice, finite_or_refused, first_non_finite, most_extreme_input
from ..curvature.estimate import fisher_unchecked
from ..curvature.structures import KFAC_BIASES
from ..jsonio import JsonResult
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data, per_example_losses_unchecked
from ..model.mlp import MLP

EVIDENCE_ESTIMATORS = ("exact", "empirical", "hessian")


class NotPositiveDefinite(ValueError):
    """The posterior precision N C + alpha I has an eigenvalue <= 0 (``smallest_eigenvalue``)."""

    def __init__(self, smallest_eigenvalue: float, estimator: str, structure: str, prior_precision: float):
        self.smallest_eigenvalue = float(smallest_eigenvalue)
        super().__init__(
            f"prior_precision: the posterior precision N C + alpha I ({estimator}, {structure}, alpha = "
            f"{prior_precision:g}) is not positive definite: smallest eigenvalue {smallest_eigenvalue:.6g}"
        )


@dataclass(frozen=True)
class LaplaceEvidence(JsonResult):
    """The Laplace log evidence and its parts (module docstring); ``to_dict`` is the CLI's JSON."""

    log_evidence: float
    log_likelihood: float
    log_prior: float
    log_det_precision: float
    prior_precision: float
    estimator: str
    structure: str
    kfac_bias: str | None
    n: int
    n_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def _log_det_diag(diagonal: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """(log det, smallest eigenvalue) of diag(N c) + alpha I; c : (P,)."""
    eigenvalues = n * diagonal + alpha
    return float(np.sum(np.log(np.maximum(eigenvalues, np.finfo(float).tiny)))), float(eigenvalues.min())


def _log_det_full(matrix: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """(log det, smallest eigenvalue or nan) of N C + alpha I; C : (P, P). Cholesky; eigenvalues only on failure."""
    precision = n * matrix + alpha * np.eye(matrix.shape[0])
    try:
        chol = scipy.linalg.cholesky(precision, lower=True)
    except np.linalg.LinAlgError:
        return -math.inf, float(scipy.linalg.eigvalsh(precision, subset_by_index=[0, 0])[0])
    return 2.0 * float(np.sum(np.log(np.diagonal(chol)))), math.nan


def _log_det_kfac(layers: list, has_bias: list, n: int, alpha: float, kfac_bias: str) -> tuple[float, float]:
    """(log det, smallest eigenvalue) of blockdiag((N G_l) (x) A_l [, N Gb_l]) + alpha I.

    layers : the kfac Curvature's data, (A_l, G_l) joined (A_l with the bias column) or
    (A_l, G_l, Gb_l) separate (A_l : (in, in); Gb_l the bias block, None without a bias).
    """
    total, smallest = 0.0, math.inf
    for factors, bias in zip(layers, has_bias, strict=True):
        A, G = factors[0], factors[1]
        eig_G = np.linalg.eigvalsh(n * G)
        blocks = [np.outer(eig_G, np.linalg.eigvalsh(A)).ravel() + alpha]
        if bias and kfac_bias == "separate":
            blocks.append(np.linalg.eigvalsh(n * factors[2]) + alpha)
        for eigenvalues in blocks:
            smallest = min(smallest, float(eigenvalues.min()))
            total += float(np.sum(np.log(np.maximum(eigenvalues, np.finfo(float).tiny))))
    return total, smallest


#: structure -> (log det, smallest eigenvalue or nan) of N C + alpha I for a Curvature C (module docstring table)
LOG_DET_TABLE = {
    "diag": lambda c, n, alpha: _log_det_diag(c.data, n, alpha),
    "full": lambda c, n, alpha: _log_det_full(c.data, n, alpha),
    "kfac": lambda c, n, alpha: _log_det_kfac(c.data, c.layer_has_bias, n, alpha, c.kfac_bias),
}
EVIDENCE_STRUCTURES = tuple(LOG_DET_TABLE)


@finite_or_refused
def laplace_evidence(model: MLP, lik: Likelihood, x, y, prior_precision: float, estimator: str = "exact",
                     structure: str = "diag", kfac_bias: str | None = None,
                     chunk_size: int | None = None, progress: bool = False) -> LaplaceEvidence:
    """Laplace log evidence log p(D) at the model's weights with the prior N(0, I / prior_precision).

    Parameters
    ----------
    model, lik : the network (its weights taken as the MAP) and its likelihood
    x : (N, d_in); y : labels for `lik`
    prior_precision : alpha > 0, the isotropic prior precision
    estimator : 'exact' (GGN = Fisher), 'empirical' or 'hessian': the curvature C of the mean loss
    structure : 'diag', 'full' or 'kfac' (laplace-torch's 'diag', 'full', 'kron')
    kfac_bias : structure='kfac' only: 'joined' (bias column in A, ewc_ref's default) or
        'separate' (laplace-torch's 'kron', BackPACK, curvlinops' default); default joined
    chunk_size : rows per streamed chunk of ``fisher``
    progress : report the curvature's progress on stderr

    Returns
    -------
    LaplaceEvidence with log_evidence = log_likelihood + log_prior + P/2 log 2 pi - 1/2 log_det_precision

    Raises
    ------
    ValueError / TypeError naming the argument; NotPositiveDefinite (a ValueError) when
    N C + alpha I has an eigenvalue <= 0, with the smallest one.

    Notes
    -----
    Module docstring; derivations/03 eq (8) and the evidence under it. laplace-torch 0.3's
    ``log_marginal_likelihood`` with the same alpha equals ``log_evidence`` (its Kron uses separate bias
    blocks: pass kfac_bias='separate'); tests/bayes/test_evidence.py checks the committed numbers.
    """
    x, y = check_model_data(model, lik, x, y)
    alpha = _check_prior_precision(prior_precision)
    check_choice(estimator, "estimator", EVIDENCE_ESTIMATORS)
    check_choice(structure, "structure", EVIDENCE_STRUCTURES)
    if kfac_bias is not None:
        check_choice(kfac_bias, "kfac_bias", KFAC_BIASES)
        if structure != "kfac":
            raise ValueError(f"kfac_bias: only meaningful with structure='kfac', got structure={structure!r}")
    elif structure == "kfac":
        kfac_bias = "joined"
    if structure == "kfac" and estimator == "hessian":
        raise ValueError("estimator: 'hessian' has no Kronecker factors; use structure='diag' or 'full', or "
                         "estimator 'exact' or 'empirical' with kfac")
    n, p = x.shape[0], model.n_params
    curvature = _curvature(model, lik, x, y, estimator, structure, kfac_bias, chunk_size, progress)
    if first_non_finite(curvature.data, "C") is not None:
        inputs = {"model": model.theta, "x": x, **({"lik": lik.sigma} if hasattr(lik, "sigma") else {})}
        driver = most_extreme_input(inputs)
        raise ValueError(f"{driver.split()[0]}: the {estimator} curvature is not finite (NaN or inf): overflow, most "
                         f"likely driven by {driver}; no evidence to report")
    log_det, smallest = LOG_DET_TABLE[structure](curvature, n, alpha)
    if not smallest > 0 and not math.isnan(smallest) or not math.isfinite(log_det):
        raise NotPositiveDefinite(smallest, estimator, structure, alpha)
    theta = model.theta.astype(np.float64)
    log_likelihood = -float(np.sum(per_example_losses_unchecked(model, lik, x, y), dtype=np.float64))
    log_prior = -0.5 * alpha * float(theta @ theta) + 0.5 * p * math.log(alpha) - 0.5 * p * math.log(2 * math.pi)
    log_evidence = log_likelihood + log_prior + 0.5 * p * math.log(2 * math.pi) - 0.5 * log_det
    _check_finite_parts(log_likelihood, log_prior, log_det, log_evidence, alpha, theta, x)
    return LaplaceEvidence(log_evidence, log_likelihood, log_prior, log_det, alpha, estimator, structure,
                           kfac_bias, n, p)


def _check_finite_parts(log_likelihood, log_prior, log_det, log_evidence, alpha, theta, x) -> None:
    """ValueError naming the first part of the evidence that overflowed and the input that drove it."""
    with np.errstate(over="ignore", invalid="ignore"):
        norm2 = float(theta @ theta)
    largest_x, largest_theta = float(np.max(np.abs(x))), float(np.max(np.abs(theta), initial=0.0))
    drivers = {
        "log_likelihood": f"model: the weights (largest |theta| {largest_theta:.3g}) and x (largest |x| {largest_x:.3g})",
        "log_prior": (f"model: the weights (|theta|^2 = {norm2:.3g})" if not math.isfinite(norm2)
                      else f"prior_precision: alpha = {alpha:.3g} times |theta|^2 = {norm2:.3g}"),
        "log_det_precision": f"prior_precision: alpha = {alpha:.3g} with N = {x.shape[0]} times the curvature",
        "log_evidence": f"prior_precision: alpha = {alpha:.3g} and the weights (largest |theta| {largest_theta:.3g})",
    }
    parts = {"log_likelihood": log_likelihood, "log_prior": log_prior, "log_det_precision": log_det,
             "log_evidence": log_evidence}
    for name, value in parts.items():
        if not math.isfinite(value):
            driver, _, detail = drivers[name].partition(": ")
            raise ValueError(f"{driver}: the Laplace {name} is {value} (overflow), driven by {detail}; "
                             "no finite evidence to report")


def _check_prior_precision(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"prior_precision: expected a number > 0, got {type(value).__name__}")
    alpha = float(value)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"prior_precision: expected a finite number > 0, got {value}")
    return alpha


def _curvature(model, lik, x, y, estimator, structure, kfac_bias, chunk_size, progress):
    """The curvature of the mean loss, in float64 (log determinants of P terms need it)."""
    model64 = model if model.dtype == np.float64 else model.with_theta(model.theta.astype(np.float64))
    x64 = np.asarray(x, dtype=np.float64)
    return fisher_unchecked(model64, lik, x64, y, estimator, structure, chunk_size=chunk_size,
                            progress=f"laplace: {estimator} {structure}" if progress else False,
                            kfac_bias=kfac_bias if structure == "kfac" else None)
