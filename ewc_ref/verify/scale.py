"""Fitting THEIRS ~= c F and naming c: the least-squares scale, the factors buggy code produces,
the round-off threshold and the minibatch sizes worth trying (diagnosis module docstring, (D1)).
"""

from __future__ import annotations

import math

import numpy as np

from ..model.mlp import MLP
from .factors import STATISTICAL_MAX_COMPLEXITY, ScaleFactor, search_factors

__all__ = ["ROUNDOFF_TOL", "ScaleFactor", "describe_scale", "fit_scale", "match_scale", "roundoff_tolerance",
           "scale_factors"]

#: Relative residual ||T - cF|| / ||T|| accepted as round-off, by the precision THEIRS was computed in.
#: float64: two correct float64 computations differ by summation order, ~(depth + log2 N) eps64 ~ 1e-13
#: relative; 1e-8 leaves 5 orders of headroom and is still 4 orders below the closest genuinely
#: different matrices of the catalogue (tests/verify/test_diagnose.py). float32: eps32 = 6e-8; a torch
#: float32 Fisher of the docs example differs from ours by 6e-7 (docs/verify-a-pytorch-ewc.md),
#: 1e-4 leaves a factor ~170 for deeper nets and larger N and still separates N/(N-1) (1/N >= 5e-4 for
#: N <= 2000 is absorbed by the scale, not the residual) and neighbouring batch sizes (>= 1e-2).
ROUNDOFF_TOL = {"float64": 1e-8, "float32": 1e-4}


def fit_scale(theirs: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Least-squares c with THEIRS ~= c F and the relative residual ||T - c F|| / ||T||, (D1) of diagnosis.

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


def scale_factors(n: int, batch_size: int | None = None, n_outputs: int | None = None,
                  likelihood: str | None = None, sigma: float = 1.0, n_batches: int | None = None,
                  samples: int | None = None) -> list[ScaleFactor]:
    """The factors (verify/factors.py: products 2^a N^b C^c B^d K^e S^f by search), SIMPLEST FIRST.

    THEIRS = factor x ewc_ref's mean over N; the order is the one statistical verdicts prefer.
    """
    return search_factors(n, batch_size, n_outputs, likelihood, sigma, n_batches, samples)


def match_scale(scale: float, factors: list[ScaleFactor], rtol: float, simplest_first: bool = False,
                prefer: tuple = ()):
    """(factor or None, words): the factor within relative `rtol` of `scale`.

    Deterministic fits (rtol ~ round-off) take the closest value and, of equal values (N = K B
    exactly), a named convention first, then the simplest. Statistical ones (``simplest_first``,
    rtol = the noise band) take the first of `prefer` inside the band (the candidate's natural
    readings, factors.NATURAL), else the simplest factor of complexity <= STATISTICAL_MAX_COMPLEXITY
    inside it, so x 1 wins whenever it is within the noise. No factor within the band: None and
    "no simple factor" (never the closest as if it matched).
    """
    if not math.isfinite(scale) or scale <= 0:
        return None, f"x {scale:.12g}: not a positive multiple (THEIRS is not a curvature of this kind)"
    inside = [f for f in factors if abs(f.value / scale - 1) <= rtol]  # f in [c (1 - rtol), c (1 + rtol)]
    if simplest_first:
        inside = ([f for name in prefer for f in inside if f.expression == name]
                  + [f for f in inside if f.complexity <= STATISTICAL_MAX_COMPLEXITY])
    if inside:
        if simplest_first:
            best = inside[0]
        else:  # the closest value; of equal values a named convention, then the simplest expression
            closest = min(abs(math.log(scale / f.value)) for f in inside)
            equal = [f for f in inside if abs(math.log(scale / f.value)) <= closest + 1e-12]
            best = min(equal, key=lambda f: (not f.named, f.complexity))
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


