"""Fitting THEIRS ~= c F and naming c: the least-squares scale, the factors buggy code produces,
the round-off threshold and the minibatch sizes worth trying (diagnosis module docstring, eq 1).
"""

from __future__ import annotations

import math

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
COMMON_BATCH_SIZES = (1, 8, 16, 32, 64, 100, 128, 256)


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


def scale_factors(n: int, batch_size: int | None = None) -> list[tuple[float, str]]:
    """The scale factors buggy or variant code produces, with their explanation."""
    factors = [(1.0, "x 1: a mean over the N examples, the convention of docs/file-format.md")]
    if n > 1:
        factors += [
            (float(n), f"x N = {n}: the 1/N average is missing (a sum over examples)"),
            (1.0 / n, f"/ N = {n}: divided by N twice"),
            (n / (n - 1), f"x N/(N-1) = {n}/{n - 1}: divided by N - 1 instead of N"),
            ((n - 1) / n, f"x (N-1)/N = {n - 1}/{n}: divided by N + ... (N/(N-1) too many)"),
            (float(n) ** 2, f"x N^2 = {n}^2: the gradient of the summed loss, squared per example and summed"),
            (1.0 / n**2, f"/ N^2 = {n}^2: divided by N three times"),
        ]
    factors += [(2.0, "x 2: a factor 1/2 missing (e.g. the lambda/2 of the penalty folded in)"),
                (0.5, "x 1/2: a factor 1/2 folded in (e.g. the lambda/2 of the penalty)")]
    if batch_size is not None and batch_size > 1:
        b, k = batch_size, -(-n // batch_size)
        factors += [
            (float(b) ** 2, f"x B^2 = {b}^2: the gradient of the minibatch SUM (not mean) was squared"),
            (float(k), f"x K = {k}: summed over the K minibatches instead of averaged"),
            (float(k) * b**2, f"x K B^2 = {k} x {b}^2: minibatch sums squared and summed over minibatches"),
            (1.0 / k, f"/ K = {k}: divided by the number of minibatches twice"),
            (float(b), f"x B = {b}: multiplied by the batch size"),
            (1.0 / b, f"/ B = {b}: divided by the batch size once more"),
            (float(n) / k, f"x N/K = {n}/{k}: divided by N instead of K after summing"),
            (float(k) / n, f"x K/N = {k}/{n}: averaged over N instead of the K minibatches"),
        ]
        if k > 1:
            factors.append((k / (k - 1), f"x K/(K-1) = {k}/{k - 1}: divided by K - 1 instead of K"))
    return factors


def describe_scale(scale: float, n: int, batch_size: int | None = None, rtol: float = 1e-6) -> str:
    """The scale in words, matched against ``scale_factors`` within relative `rtol`.

    `rtol` should reflect the uncertainty of the fitted scale (round-off for a deterministic
    fit, the Monte Carlo standard error for mc): N/(N-1) differs from 1 by 1/(N-1) only.
    """
    if not math.isfinite(scale) or scale <= 0:
        return f"x {scale:.12g}: not a positive multiple (THEIRS is not a curvature of this kind)"
    best = min(scale_factors(n, batch_size), key=lambda item: abs(math.log(scale / item[0])))
    if abs(scale / best[0] - 1) <= rtol:
        words = best[1]
        if best[0] != 1.0 or abs(scale - 1) > 1e-12:
            words += f" (c = {scale:.12g})"
        return words
    return f"x {scale:.12g}: no simple factor of N, B or 2 (closest: {best[1].split(':')[0]})"


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


def candidate_batch_sizes(n: int) -> list[int]:
    """Divisors of N, powers of two up to N and the common sizes, within [1, N], sorted."""
    sizes = {d for d in range(1, math.isqrt(n) + 1) if n % d == 0}
    sizes |= {n // d for d in sizes}
    sizes |= {2**k for k in range(n.bit_length()) if 2**k <= n}
    sizes |= {b for b in COMMON_BATCH_SIZES if b <= n}
    sizes.add(n)
    return sorted(sizes)
