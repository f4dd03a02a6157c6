"""Fitting THEIRS ~= c F and naming c: the least-squares scale, the factors buggy code produces,
the round-off threshold and the minibatch sizes worth trying (diagnosis module docstring, eq 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.mlp import MLP

#: Relative residual ||T - cF|| / ||T|| accepted as round-off, by the precision THEIRS was computed in.
#: float64: two correct float64 computations differ by summation order, ~(depth + log2 N) eps64 ~ 1e-13
#: relative; 1e-8 leaves 5 orders of headroom and is still 4 orders below the closest genuinely
#: different matrices of the catalogue (tests/test_diagnose.py). float32: eps32 = 6e-8; a torch
#: float32 Fisher of the docs example differs from ours by 6e-7 (docs/verify-a-pytorch-ewc.md),
#: 1e-4 leaves a factor ~170 for deeper nets and larger N and still separates N/(N-1) (1/N >= 5e-4 for
#: N <= 2000 is absorbed by the scale, not the residual) and neighbouring batch sizes (>= 1e-2).
ROUNDOFF_TOL = {"float64": 1e-8, "float32": 1e-4}


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


@dataclass(frozen=True)
class ScaleFactor:
    """A factor THEIRS / F that a known convention or bug produces: value, expression, words."""

    value: float
    expression: str  # arithmetic in N, C, K, B, S (JSON "scale_factor")
    words: str  # the convention or bug it comes from


def scale_factors(n: int, batch_size: int | None = None, n_outputs: int | None = None,
                  likelihood: str | None = None, sigma: float = 1.0, n_batches: int | None = None) -> list[ScaleFactor]:
    """The factors conventions and bugs produce, SIMPLEST FIRST (the order statistical verdicts prefer).

    THEIRS = factor x ewc_ref's mean over N. torch's reductions over C outputs (derived in
    tests/fixtures/libraries/README.md): MSELoss(mean) = 2 s^2/(N C) sum_n l_n + const,
    BCEWithLogitsLoss(mean) = 1/(N C) sum_n l_n, so their Hessian / GGN is 2 s^2/C and 1/C x ours,
    a squared per-example gradient of the mean loss (BackPACK SumGradSquared) N a^2 x ours.
    """
    factors = [ScaleFactor(1.0, "1", "x 1: a mean over the N examples (ewc_ref's convention; "
                                     "torch CrossEntropyLoss(reduction='mean'))")]
    if n > 1:
        factors += [
            ScaleFactor(float(n), "N", f"x N = {n}: the 1/N average is missing: a sum over the N examples "
                                       "(a loss with reduction='sum'; laplace-torch's curvature)"),
            ScaleFactor(1.0 / n, "1/N", f"/ N = {n}: divided by N twice, or each per-example gradient of the MEAN "
                                        "loss squared, (g_n/N)^2, and summed (BackPACK SumGradSquared)"),
        ]
    factors += [ScaleFactor(2.0, "2", "x 2: a factor 1/2 missing (e.g. the lambda/2 of the penalty folded in)"),
                ScaleFactor(0.5, "1/2", "x 1/2: a factor 1/2 folded in (e.g. the lambda/2 of the penalty)")]
    c, s2 = n_outputs, sigma**2
    if likelihood == "gaussian" and c:
        sig = "" if s2 == 1.0 else "*sigma^2"
        factors += [
            ScaleFactor(2.0 * s2 / c, f"2{sig}/C", f"x 2 s^2/C = {2 * s2 / c:.6g}: torch MSELoss(reduction='mean') over "
                                                   f"C = {c} outputs (its GGN or Hessian, e.g. BackPACK DiagGGNExact/DiagHessian)"),
            ScaleFactor(4.0 * s2**2 / c, f"4{sig}{'^2' if sig else ''}/C",
                        f"x 4 s^4/C = {4 * s2**2 / c:.6g}: the empirical Fisher of torch MSELoss(reduction='mean') over "
                        f"C = {c} outputs (e.g. curvlinops EFLinearOperator)"),
            ScaleFactor(4.0 * s2**2 / (n * c**2), f"4{sig}{'^2' if sig else ''}/(N*C^2)",
                        f"x 4 s^4/(N C^2) = {4 * s2**2 / (n * c**2):.6g}: per-example gradients of torch MSELoss(mean) "
                        f"squared, (2 s^2 g_n/(N C))^2 summed (BackPACK SumGradSquared), C = {c}"),
        ]
    if likelihood == "bernoulli" and c:
        factors += [
            ScaleFactor(1.0 / c, "1/C", f"/ C = {c}: torch BCEWithLogitsLoss(reduction='mean') over C outputs "
                                        "(its GGN or empirical Fisher, e.g. curvlinops)"),
            ScaleFactor(1.0 / (n * c**2), "1/(N*C^2)", f"/ (N C^2) = 1/{n * c**2}: per-example gradients of torch "
                                                       "BCEWithLogitsLoss(mean) squared, (g_n/(N C))^2 summed (BackPACK SumGradSquared)"),
        ]
    if batch_size is not None and batch_size > 1:
        b, k = batch_size, n_batches or -(-n // batch_size)  # n_batches: drop_last or recorded batches
        factors += [
            ScaleFactor(float(k), "K", f"x K = {k}: squared minibatch gradients summed over the K minibatches, not averaged"),
            ScaleFactor(float(b) ** 2, "B^2", f"x B^2 = {b}^2: the gradient of the minibatch SUM (not mean) was squared"),
            ScaleFactor(float(k) * b**2, "K*B^2", f"x K B^2 = {k} x {b}^2: minibatch sums squared and summed over minibatches"),
            ScaleFactor(1.0 / k, "1/K", f"/ K = {k}: divided by the number of minibatches twice"),
            ScaleFactor(float(b), "B", f"x B = {b}: multiplied by the batch size"),
            ScaleFactor(1.0 / b, "1/B", f"/ B = {b}: divided by the batch size once more"),
            ScaleFactor(float(n) / k, "N/K", f"x N/K = {n}/{k}: divided by N instead of K after summing"),
            ScaleFactor(float(k) / n, "K/N", f"x K/N = {k}/{n}: squared minibatch gradients summed and divided by N "
                                             "(len(dataset)) instead of K (len(loader))"),
        ]
        if k > 1:
            factors.append(ScaleFactor(k / (k - 1), "K/(K-1)", f"x K/(K-1) = {k}/{k - 1}: divided by K - 1 instead of K"))
    if n > 1:
        factors += [
            ScaleFactor(n / (n - 1), "N/(N-1)", f"x N/(N-1) = {n}/{n - 1}: divided by N - 1 instead of N"),
            ScaleFactor((n - 1) / n, "(N-1)/N", f"x (N-1)/N = {n - 1}/{n}: divided by N + ... (N/(N-1) too many)"),
            ScaleFactor(float(n) ** 2, "N^2", f"x N^2 = {n}^2: the gradient of the summed loss, squared per example and summed"),
            ScaleFactor(1.0 / n**2, "1/N^2", f"/ N^2 = {n}^2: divided by N three times"),
        ]
    return factors


def match_scale(scale: float, factors: list[ScaleFactor], rtol: float, simplest_first: bool = False):
    """(factor or None, words): the factor within relative `rtol` of `scale`.

    Deterministic fits (rtol ~ round-off) take the closest factor; statistical ones
    (``simplest_first``, rtol = the noise band) the FIRST in the simplicity order of
    ``scale_factors`` inside the band, so x 1 wins whenever it is within the noise.
    No factor within the band: None and "no simple factor" (never the closest as if it matched).
    """
    if not math.isfinite(scale) or scale <= 0:
        return None, f"x {scale:.12g}: not a positive multiple (THEIRS is not a curvature of this kind)"
    inside = [f for f in factors if abs(f.value / scale - 1) <= rtol]  # f in [c (1 - rtol), c (1 + rtol)]
    if inside:
        best = inside[0] if simplest_first else min(inside, key=lambda f: abs(math.log(scale / f.value)))
        words = best.words
        if best.value != 1.0 or abs(scale - 1) > 1e-12:
            words += f" (c = {scale:.12g})"
        return best, words
    closest = min(factors, key=lambda f: abs(math.log(scale / f.value)))
    return None, f"x {scale:.12g}: no simple factor of N, C, B or 2 (closest: {closest.words.split(':')[0]})"


def describe_scale(scale: float, n: int, batch_size: int | None = None, rtol: float = 1e-6) -> str:
    """The scale in words, matched against ``scale_factors`` within relative `rtol` (``match_scale``).

    `rtol` should reflect the uncertainty of the fitted scale (round-off for a deterministic
    fit, the Monte Carlo standard error for mc): N/(N-1) differs from 1 by 1/(N-1) only.
    """
    return match_scale(scale, scale_factors(n, batch_size), rtol)[1]


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


