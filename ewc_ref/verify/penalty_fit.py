"""Reading a penalty from the outside: recover W and the anchor a from values and gradients.

Every diagonal EWC penalty, whatever its combination over tasks, is one quadratic

    Omega(theta) = 1/2 sum_i W_i (theta_i - a_i)^2 + c,     grad Omega(theta) = W (theta - a)       (P1)

(a sum of quadratics is one quadratic: continual/penalty.py, ``merge_quadratics``). Given THEIR
penalty's value v_m and gradient g_m at M parameter vectors theta_m (theta : (M, P), value : (M,),
grad : (M, P)), each coordinate i is a straight line g_mi = W_i theta_mi + b_i with b_i = -W_i a_i,
fitted by least squares over the M points (two unknowns per coordinate):

    W_i = sum_m (theta_mi - tbar_i)(g_mi - gbar_i) / sum_m (theta_mi - tbar_i)^2,
    a_i = tbar_i - gbar_i / W_i,     r_mi = g_mi - gbar_i - W_i (theta_mi - tbar_i)                  (P2)

(tbar, gbar : (P,) the means over the points). The value is then checked up to the constant c by
integrating the fitted gradient from tbar (no division by W, so W_i = 0 costs nothing):

    v_m = k q_m + c,   q_m = sum_i [gbar_i d_mi + 1/2 W_i d_mi^2],   d_mi = theta_mi - tbar_i,       (P3)

with k = 1 for a value that is the integral of the gradient (k is fitted too when M >= 3, to say by
how much a hand-written value and gradient disagree).

How many points. Two unknowns per coordinate: M = 2 determines W and a exactly, with r = 0 whatever
the penalty is, so quadraticity is untestable from the gradients ("cannot tell"; the value check
(P3) can still refute it). M >= 3 leaves M - 2 residuals per coordinate, which are round-off for a
diagonal quadratic and O(1) relative for a non-quadratic one. A quadratic with off-diagonal curvature
(a full or K-FAC Fisher) also fails (P2) but is affine along any line: when three points are
collinear and equally spaced (theta_j = (theta_i + theta_k) / 2, as ``probe_points`` places them), any
quadratic has g_j = (g_i + g_k) / 2 exactly, and that midpoint test tells "quadratic, not diagonal"
from "not quadratic". Without such triples the verdict says it cannot tell these two apart.

Round-off. Residuals are relative, per coordinate (gradient) and per point (value), to the size of
the terms that were rounded: s_i = max_m (|g_mi| + |W_i theta_mi| + |b_i|). They pass below the
threshold ``PENALTY_TOL`` of the precision the gradients were computed in (float32 when every
value is a float32 number, as torch's default and ``.double()`` exports are). The value is judged
at its own precision: values that are all float32 numbers beside float64 gradients (a float32
accumulator, a ``.float()`` at the end) were rounded to float32 after the gradients' arithmetic,
and their residual (P3) is judged against float32's round-off ``ROUNDED_VALUE_TOL`` -- a few
roundings, not the 1e-4 of a whole float32 computation, so a value off by 1e-5 is still refuted.
The verdict says when this is what made the value consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._validate import as_float_array, as_generator
from ..io import read_npz
from ..jsonio import JsonResult

#: Relative residual accepted as round-off. float64: a correct penalty's gradient is a few
#: elementwise products (lambda, F, theta - a), each exact to eps64 = 1.1e-16 relative, and the
#: least-squares fit adds ~M eps; 1e-8 leaves 7 orders of headroom and is 6 orders below the
#: residuals of the non-quadratic penalties of the catalogue (tests/fixtures/penalties: >= 1e-3).
#: float32: eps32 = 6e-8 times the same few operations; 1e-4 keeps a factor 1000.
PENALTY_TOL = {"float64": 1e-8, "float32": 1e-4}

#: float32's unit round-off u = 2^-24 = 6.0e-8: one rounding to float32 moves a number by at most u relative.
FLOAT32_ROUNDOFF = 2.0**-24

#: Residual (P3) accepted for a value rounded to float32 beside float64 gradients. Each float32
#: rounding of the value moves it by <= u |v_m| <= u x the residual's denominator, and fitting c (the
#: mean of the M errors) at most doubles that: 2 u per rounding. 16 u = 9.5e-7 covers 8 roundings in
#: the worst case (more at the sqrt(K) rate of independent ones: Avalanche's accumulator, 12 float32
#: additions and a float32 lambda, measures 1.25 u), and stays 10x below a value off by 1e-5
#: relative, which must be refuted; the 1e-4 of PENALTY_TOL["float32"] (a whole float32
#: computation, gradients included) would accept it.
ROUNDED_VALUE_TOL = 16 * FLOAT32_ROUNDOFF

QUADRATIC_VERDICTS = ("diagonal quadratic", "quadratic, not diagonal", "not quadratic",
                      "not a diagonal quadratic", "value inconsistent", "cannot tell")


@dataclass
class PenaltyFit(JsonResult):
    """W and the anchor of THEIR penalty (P1), with the residuals that judge the fit.

    ``weights`` and ``anchor`` are (P,); ``anchor`` is NaN where W_i = 0 (no penalty there, any
    anchor) or where the points do not vary (``undetermined``).
    """

    weights: np.ndarray
    anchor: np.ndarray
    constant: float
    n_points: int
    precision: str
    tol: float
    quadratic: str  # one of QUADRATIC_VERDICTS
    reason: str
    grad_residual: float  # max over coordinates of max_m |r_mi| / s_i; nan when M = 2
    value_residual: float  # max_m |v_m - q_m - c| / max_m (|v_m| + sum_i |terms of q_m|)
    value_scale: float = 1.0  # k of (P3) fitted when M >= 3 (1 for a value that integrates the gradient)
    value_scale_residual: float = math.nan
    midpoint_triples: int = 0
    midpoint_residual: float = math.nan  # max over triples of |g_j - (g_i + g_k)/2| / max |g|
    undetermined: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    negative: int = 0  # coordinates with W_i < 0 beyond round-off: a penalty that pushes away
    value_precision: str = "float64"  # 'float32' when every value is a float32 number
    value_tol: float = math.nan  # the value's threshold: tol, or ROUNDED_VALUE_TOL for a float32 value of float64 gradients

    @property
    def value_rounded(self) -> bool:
        """True when the value passes only as a float32-rounded value of float64 gradients."""
        return self.tol < self.value_residual <= self.value_tol

    @property
    def curvature_known(self) -> bool:
        """True when W and a describe the penalty: a diagonal quadratic, or M = 2 with a consistent value."""
        return self.quadratic in ("diagonal quadratic", "cannot tell")

    def to_dict(self) -> dict:
        def finite(value):
            return value if math.isfinite(value) else None

        return {"quadratic": self.quadratic, "reason": self.reason, "n_points": self.n_points,
                "precision": self.precision, "tol": self.tol, "grad_residual": finite(self.grad_residual),
                "value_residual": finite(self.value_residual), "value_scale": finite(self.value_scale),
                "value_scale_residual": finite(self.value_scale_residual), "constant": finite(self.constant),
                "midpoint_triples": self.midpoint_triples, "midpoint_residual": finite(self.midpoint_residual),
                "undetermined": [int(i) for i in self.undetermined], "negative_weights": self.negative,
                "value_precision": self.value_precision, "value_tol": finite(self.value_tol)}


def penalty_precision(grad: np.ndarray) -> str:
    """'float32' when the gradients are float32 or float32 numbers written as float64, else 'float64'."""
    if grad.dtype == np.float32:
        return "float32"
    with np.errstate(over="ignore"):  # values beyond float32's range are float64 (the cast gives inf)
        return "float32" if np.array_equal(grad, grad.astype(np.float32).astype(grad.dtype)) else "float64"


def check_samples(theta, value, grad) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """theta (M, P), value (M,), grad (M, P) as float64, M >= 2, or ValueError naming the argument."""
    theta = as_float_array(theta, "theta", ndim=2)
    value = as_float_array(value, "value", ndim=1)
    grad = as_float_array(grad, "grad", ndim=2)
    m, p = theta.shape
    if m < 2:
        raise ValueError(f"theta: expected M >= 2 parameter vectors (rows), got {m}; a quadratic per coordinate "
                         "needs two points, and M >= 3 to test that it is one")
    if p < 1:
        raise ValueError("theta: expected P >= 1 parameters (columns), got 0")
    if grad.shape != theta.shape:
        raise ValueError(f"grad: expected shape {theta.shape} like theta, got {grad.shape}")
    if value.shape != (m,):
        raise ValueError(f"value: expected shape ({m},), one value per row of theta, got {value.shape}")
    return theta, value, grad


def fit_penalty(theta, value, grad, tol: float | None = None) -> PenaltyFit:
    """Recover the diagonal W and anchor a of grad Omega = W (theta - a) and judge the fit (module docstring).

    Parameters
    ----------
    theta : (M, P) the parameter vectors, M >= 2, in the flat order of docs/file-format.md section 4
    value : (M,) THEIR penalty Omega(theta_m)
    grad : (M, P) THEIR gradient grad Omega(theta_m)
    tol : relative residual accepted as round-off (default ``PENALTY_TOL`` of the gradients' precision)

    Returns
    -------
    PenaltyFit with W (P,), a (P,), c, the residuals of (P2), (P3), the midpoint test and the verdict.

    Raises
    ------
    ValueError naming `theta`, `value`, `grad` or `tol` (shapes, M < 2, non-finite values).
    """
    theta, value, grad = check_samples(theta, value, grad)
    precision, value_precision = penalty_precision(grad), penalty_precision(value)
    if tol is None:
        tol = PENALTY_TOL[precision]
    elif not (isinstance(tol, float | int) and 0 < tol < 1):
        raise ValueError(f"tol: expected a number in (0, 1), got {tol!r}")
    # a value rounded to float32 after float64 gradients cannot be judged below float32's round-off
    value_tol = max(float(tol), ROUNDED_VALUE_TOL) if (value_precision, precision) == ("float32", "float64") else float(tol)
    theta, value, grad = (np.asarray(a, dtype=np.float64) for a in (theta, value, grad))
    m = theta.shape[0]
    # an exact power of two brings the largest |grad| and |value| near 1, so that squares neither
    # overflow nor underflow (a penalty of 1e300 or 1e-300); W, b and c are scaled back exactly
    unit = power_of_two(max(float(np.max(np.abs(grad))), float(np.max(np.abs(value)))))
    grad, value = grad / unit, value / unit
    weights, offset, residual, spread = _fit_lines(theta, grad)
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(offset))):
        raise ValueError("theta: the fit overflows (|theta| too large for float64 squares); expected parameter values")
    undetermined = np.flatnonzero(spread == 0)
    scale = np.max(np.abs(grad) + np.abs(weights * theta) + np.abs(offset), axis=0)  # s_i : (P,)
    ratio = np.divide(np.max(np.abs(residual), axis=0), scale, out=np.zeros_like(scale), where=scale > 0)
    grad_residual = float(np.max(ratio)) if m >= 3 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        anchor = np.where(weights != 0, -offset / weights, np.nan)
    anchor[undetermined] = np.nan
    # W_i < 0 beyond round-off (|W_i| spread_i well above s_i tol): the penalty pushes theta away
    negative = int(np.sum(weights * np.sqrt(np.maximum(spread, 0)) < -10 * tol * np.maximum(scale, 1e-300)))
    constant, value_residual, k, k_residual = _check_value(theta, value, grad, weights)
    triples, mid_residual = _midpoint_test(theta, grad, tol)
    fit = PenaltyFit(weights * unit, anchor, constant * unit, m, precision, float(tol), "", "", grad_residual,
                     value_residual, k, k_residual, len(triples), mid_residual, undetermined, negative,
                     value_precision, value_tol)
    fit.quadratic, fit.reason = _verdict(fit, grad, residual, scale)
    twins = _repeated_points(theta, grad, tol)
    if twins:
        fit.quadratic, fit.reason = "not quadratic", (
            f"not a function of theta: points {twins[0][0]} and {twins[0][1]} are the same parameter vector with "
            f"gradients that differ by {twins[0][2]:.3g} relative ({len(twins)} such pair(s)): a stochastic penalty "
            "(a Fisher re-estimated at each call?) or rows of theta and grad out of step")
    elif undetermined.size == theta.shape[1]:
        fit.quadratic, fit.reason = "cannot tell", "every coordinate has the same value at all M points: nothing to fit"
    return fit


def power_of_two(x: float) -> float:
    """2^e with x / 2^e in [0.5, 1) (1 for x = 0 or not finite): an exact rescaling."""
    if not (math.isfinite(x) and x > 0):
        return 1.0
    return math.ldexp(1.0, math.frexp(x)[1])


def _repeated_points(theta, grad, tol) -> list[tuple[int, int, float]]:
    """(i, j, relative gradient difference) for identical rows theta_i = theta_j whose gradients differ beyond tol."""
    out = []
    for i in range(theta.shape[0]):
        for j in range(i + 1, theta.shape[0]):
            if np.array_equal(theta[i], theta[j]):
                size = float(np.max(np.abs(grad[[i, j]])))
                diff = float(np.max(np.abs(grad[i] - grad[j]))) / size if size > 0 else 0.0
                if diff > tol:
                    out.append((i, j, diff))
    return out


def _fit_lines(theta, grad):
    """(W, b, r, spread) of (P2) per coordinate: W, b (P,), residuals r (M, P), spread (P,) = sum_m d_mi^2."""
    tbar, gbar = theta.mean(axis=0), grad.mean(axis=0)
    d = theta - tbar
    spread = np.sum(d * d, axis=0)
    weights = np.divide(np.sum(d * (grad - gbar), axis=0), spread, out=np.zeros_like(spread), where=spread > 0)
    offset = gbar - weights * tbar
    residual = grad - gbar - weights * d
    return weights, offset, residual, spread


def _check_value(theta, value, grad, weights):
    """(c of (P1), relative residual of (P3) with k = 1, fitted k, its relative residual)."""
    tbar, gbar = theta.mean(axis=0), grad.mean(axis=0)
    d = theta - tbar
    terms = gbar * d + 0.5 * weights * d * d  # (M, P)
    q = terms.sum(axis=1)
    size = float(np.max(np.abs(value) + np.abs(terms).sum(axis=1)))
    size = size if size > 0 else 1.0
    constant = float(np.mean(value - q))
    residual = float(np.max(np.abs(value - q - constant))) / size
    k, k_residual = 1.0, math.nan
    if theta.shape[0] >= 3 and np.ptp(q) > 0:
        design = np.stack([q, np.ones_like(q)], axis=1)
        (k, c_k), *_ = np.linalg.lstsq(design, value, rcond=None)
        k_residual = float(np.max(np.abs(value - k * q - c_k))) / size
        k = float(k)
    # c of (P1) is Omega at the anchor, where d = -gbar / W and q = -1/2 gbar^2 / W
    at_anchor = -0.5 * float(np.sum(np.divide(gbar * gbar, weights, out=np.zeros_like(gbar), where=weights != 0)))
    return constant + at_anchor, residual, k, k_residual


def midpoint_triples(theta: np.ndarray, tol: float) -> list[tuple[int, int, int]]:
    """(i, j, k) with theta_j = (theta_i + theta_k) / 2 within `tol` relative (theta : (M, P), O(M^3))."""
    m = theta.shape[0]
    size = np.max(np.abs(theta), axis=1)
    out = []
    for i in range(m):
        for k in range(i + 1, m):
            mid = 0.5 * (theta[i] + theta[k])
            half = 0.5 * float(np.max(np.abs(theta[i] - theta[k])))
            if half == 0:
                continue
            for j in range(m):
                if j in (i, k):
                    continue
                if float(np.max(np.abs(theta[j] - mid))) <= tol * max(half, size[i], size[k]):
                    out.append((i, j, k))
    return out


def _midpoint_test(theta, grad, tol):
    """(triples, max relative |g_j - (g_i + g_k)/2| / max |g| of the triple); nan when there is none."""
    triples = midpoint_triples(theta, tol)
    worst = math.nan
    for i, j, k in triples:
        size = float(np.max(np.abs(grad[[i, j, k]])))
        r = float(np.max(np.abs(grad[j] - 0.5 * (grad[i] + grad[k])))) / size if size > 0 else 0.0
        worst = r if math.isnan(worst) else max(worst, r)
    return triples, worst


def _is_absolute_value(grad, tol) -> bool:
    """|g_mi| the same at every point for each coordinate, with sign changes: grad = w sign(theta - a)."""
    magnitude = np.abs(grad)
    top = np.max(magnitude, axis=0)
    if not np.any(top > 0):
        return False
    # an exact 0 is sign(0) at theta_i = a_i (torch's abs gradient there)
    same = np.all((np.abs(magnitude - top) <= tol * np.maximum(top, 1e-300)) | (magnitude == 0), axis=0)
    flips = np.any(grad > 0, axis=0) & np.any(grad < 0, axis=0)
    return bool(np.all(same) and np.any(flips))


def _value_words(fit: PenaltyFit) -> str:
    """How the value passed (P3): its residual, and when it passed only as a float32-rounded value, that."""
    r = fit.value_residual
    if not fit.value_rounded:
        return f"(residual {r:.3g})"
    return (f"up to float32 rounding: value rounded to float32 (residual {r:.3g} = {r / FLOAT32_ROUNDOFF:.2g} x float32's "
            f"round-off 2^-24, <= {fit.value_tol:.2g}, every value a float32 number); gradients float64")


def _value_mismatch(fit: PenaltyFit) -> str:
    """Why a value of float32 numbers beyond ROUNDED_VALUE_TOL is not called round-off ('' for other values)."""
    if fit.value_tol <= fit.tol:
        return ""
    return (f"; every value is a float32 number, but the residual is {fit.value_residual / FLOAT32_ROUNDOFF:.3g} x "
            f"float32's round-off 2^-24, beyond the {fit.value_tol:.2g} of a few roundings")


def _verdict(fit: PenaltyFit, grad, residual, scale) -> tuple[str, str]:
    """(quadratic verdict, reason with the numbers), the simplest explanation inside round-off."""
    tol, m = fit.tol, fit.n_points
    value_ok = fit.value_residual <= fit.value_tol
    mid = (f"; midpoint test on {fit.midpoint_triples} collinear triple(s): residual {fit.midpoint_residual:.3g}"
           if fit.midpoint_triples else "")
    if m == 2:
        if not value_ok:
            return "not quadratic", (f"the value differs from the integral of the gradient between the two points by "
                                     f"{fit.value_residual:.3g} relative (threshold {fit.value_tol:.3g}){_value_mismatch(fit)}: "
                                     "no quadratic has these values and gradients")
        return "cannot tell", ("M = 2 points: W and a are determined per coordinate and the value agrees "
                               f"{_value_words(fit)}, but a quadratic through two points always fits "
                               "the gradients: give M >= 3 points to test quadraticity")
    diag_ok = fit.grad_residual <= tol
    if diag_ok and value_ok:
        return "diagonal quadratic", (f"gradient affine per coordinate within round-off (residual {fit.grad_residual:.3g} "
                                      f"<= {tol:g}, M = {m}), value = the integral of the gradient + c "
                                      f"{_value_words(fit)}{mid}")
    if diag_ok:
        ratio = (f"; the value is {fit.value_scale:.6g} x the integral of the gradient (residual "
                 f"{fit.value_scale_residual:.3g})" if fit.value_scale_residual <= fit.value_tol else "")
        return "value inconsistent", (f"the gradient is a diagonal quadratic's (residual {fit.grad_residual:.3g}) but the "
                                      f"value is not its integral + c (residual {fit.value_residual:.3g} > "
                                      f"{fit.value_tol:.3g}){ratio}{_value_mismatch(fit)}: the value and the gradient "
                                      "are of different functions" + (" (or the value went through many float32 "
                                      "operations: tol=1e-4 accepts that)" if fit.value_tol > tol else ""))
    worst = f"gradient not affine per coordinate: residual {fit.grad_residual:.3g} > {tol:g} (M = {m})"
    if _is_absolute_value(grad, tol):
        return "not quadratic", (f"{worst}; |grad_i| is the same at every point and changes sign: an absolute value "
                                 "sum_i w_i |theta_i - a_i| (an L1 penalty), not a quadratic")
    if fit.midpoint_triples and fit.midpoint_residual > tol:
        return "not quadratic", (f"{worst}{mid} > {tol:g}: the gradient is not affine along a line, so no quadratic "
                                 "has it (a curvature that changes with theta, e.g. a Fisher recomputed at theta)")
    if fit.midpoint_triples:
        return "quadratic, not diagonal", (f"{worst}{mid} <= {tol:g}: affine along lines, so a quadratic with "
                                           "off-diagonal curvature (full, block or K-FAC F); only diagonal W are named")
    return "not a diagonal quadratic", (f"{worst}; no three points are collinear and equally spaced, so a quadratic "
                                        "with off-diagonal curvature cannot be told from a non-quadratic penalty "
                                        "(add midpoints, as probe_points does)")


def probe_points(center, scale: float = 0.1, directions: int = 3, rng=0) -> np.ndarray:
    """(2 J + 1, P) points: center, center + delta_j, center + 2 delta_j for J random directions.

    delta_j ~ scale N(0, I). Per coordinate 2J + 1 distinct values (2J - 1 residuals of (P2)) and J
    collinear equally spaced triples for the midpoint test.
    """
    center = as_float_array(center, "center", ndim=1).astype(np.float64)
    if not (isinstance(directions, int) and directions >= 1):
        raise ValueError(f"directions: expected an integer >= 1, got {directions!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    deltas = scale * as_generator(rng).standard_normal((directions, center.size))
    rows = [center] + [center + s * delta for delta in deltas for s in (1.0, 2.0)]
    return np.stack(rows)


def sample_penalty(penalty_fn, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta, value, grad) of a callable ``penalty_fn(theta (P,)) -> (value, grad (P,))`` at `points` (M, P)."""
    if not callable(penalty_fn):
        raise TypeError(f"penalty_fn: expected a callable theta -> (value, grad), got {type(penalty_fn).__name__}")
    points = as_float_array(points, "points", ndim=2)
    values, grads = [], []
    for m, point in enumerate(points):
        out = penalty_fn(point.copy())
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"penalty_fn: expected it to return (value, grad), got {type(out).__name__} at point {m}")
        values.append(float(out[0]))
        grad = as_float_array(np.asarray(out[1]), f"penalty_fn grad at point {m}", ndim=1)
        if grad.shape != (points.shape[1],):
            raise ValueError(f"penalty_fn: grad at point {m} has shape {grad.shape}, expected ({points.shape[1]},)")
        grads.append(grad)
    return points, np.array(values), np.stack(grads)


PENALTY_KEYS = ("theta", "value", "grad")


def read_penalty_samples(path, n_params: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta (M, P), value (M,), grad (M, P)) of a penalty file (docs/file-format.md section 11).

    Exactly the keys theta, value, grad; shapes checked from the headers before any data is read
    (P = `n_params` when given); finite float values. ValueError naming the file and key.
    """
    def check(headers):
        keys = set(headers)
        missing, unknown = sorted(set(PENALTY_KEYS) - keys), sorted(keys - set(PENALTY_KEYS))
        if missing or unknown:
            raise ValueError(f"{path}: expected exactly the keys theta, value, grad"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
        shapes = {key: headers[key].shape for key in PENALTY_KEYS}
        for key, ndim in (("theta", 2), ("value", 1), ("grad", 2)):
            if len(shapes[key]) != ndim or headers[key].dtype.kind != "f":
                raise ValueError(f"{path}: key {key!r} must be a {ndim}-d float array, got dtype {headers[key].dtype} "
                                 f"shape {shapes[key]}")
        m, p = shapes["theta"]
        if shapes["grad"] != (m, p):
            raise ValueError(f"{path}: key 'grad' must have the shape of 'theta' {(m, p)}, got {shapes['grad']}")
        if shapes["value"] != (m,):
            raise ValueError(f"{path}: key 'value' must have shape ({m},), one value per row of 'theta', got {shapes['value']}")
        if n_params is not None and p != n_params:
            raise ValueError(f"{path}: key 'theta' has P = {p} columns, expected the models' P = {n_params} "
                             "(flat parameter order, docs/file-format.md section 4)")
        if m < 2:
            raise ValueError(f"{path}: key 'theta' has M = {m} row(s); expected M >= 2 parameter vectors (M >= 3 to "
                             "test quadraticity)")

    arrays = read_npz(path, "penalty file", check=check)
    for key in PENALTY_KEYS:
        if not np.all(np.isfinite(arrays[key])):
            bad = int(arrays[key].size - np.count_nonzero(np.isfinite(arrays[key])))
            raise ValueError(f"{path}: key {key!r} contains {bad} non-finite value(s) (NaN or inf)")
    return arrays["theta"], arrays["value"], arrays["grad"]
