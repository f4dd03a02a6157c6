"""Fast kernels of the curvature accumulator, each beside its naive NumPy twin.

Every curvature of ewc_ref.curvature.estimators (except ``batched`` and ``hessian``) is a weighted sum of
outer products of per-example gradients, and for a Linear layer z = a W^T + b the gradient of
example n along backward vector k is an outer product (module docstring of estimators.py)::

    dW_nk = delta_nk a_n^T    (out, in)        db_nk = delta_nk    (out,)

with delta : (K, n, out) the back-propagated errors and a : (n, in) the layer input. The kernels
below turn these factors into the four structures without ever looping over examples in Python:

===================  ==================================================  ===========================
kernel               computes                                            naive twin
===================  ==================================================  ===========================
backward_deltas      delta_l for K backward vectors, one GEMM per layer  MLP.backward_deltas
gated_square_sum     s = w phi'^2 sum_k da_k^2 and da *= phi' in place,  the NumPy passes
                     one numba pass over the K-fold da                   (gated_square_sum_numpy)
diag_second_moment   sum_{n,k} w dW_nk^2 = (sum_k w delta_nk^2)^T a^2     per-example gradients, squared
                     (one GEMM), sum_{n,k} w db_nk^2                     and summed
fill_per_sample      rows k*n + j of G : (K n, P) <- [vec(dW_jk), db_jk]  the NumPy broadcast
grads                (numba; writes straight into G, no (K,n,out,in)     (fill_per_sample_grads_numpy)
                     temporary)
gram                 G^T G (BLAS syrk: only one triangle is computed)    sum_n g_n g_n^T by einsum
gram_update          total += G^T G in place on the lower triangle, in   gram_naive added to total
                     strips of rows (a blocked syrk), then mirror_lower
kfac_factors         A = sum_n abar_n abar_n^T, B = w sum_{n,k} d d^T     the same sums by einsum
===================  ==================================================  ===========================

Every fast path equals its twin up to floating-point summation order (tests/curvature/test_kernels.py).

numba is used where NumPy needs a large temporary (fill_per_sample_grads) or several passes over
a K-fold array (gated_square_sum). Each kernel is imported and compiled on first use only, with
explicit signatures and ``cache=True``, so a second process loads the compiled kernel from disk
(importing numba costs a fresh process about 0.15 s once).
Set the environment variable ``EWC_REF_NO_NUMBA=1`` (before importing ewc_ref) to replace every
numba kernel by its NumPy twin, e.g. for debugging or on a platform without numba; results are
the same (fill_per_sample_grads only multiplies pairs of numbers, so G is bit-identical;
gated_square_sum rounds in another order, equal to ~1e-16 relative).
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
from scipy.linalg import blas as _blas

#: True unless the environment variable EWC_REF_NO_NUMBA is set to a true value (1, true, yes).
USE_NUMBA = os.environ.get("EWC_REF_NO_NUMBA", "").strip().lower() not in ("1", "true", "yes", "on")
#: A numba kernel runs on an array of at least this many numbers, or on any array once numba is
#: loaded. Importing numba and loading the cached kernels costs ~0.3 s once per process; a small
#: job (the 64-128-128-10 digits diag Fisher: 7 ms) would pay 50x its own time for a kernel that
#: saves ~1 ms, while a 784-256-256-10 job (chunks of ~10^6 numbers) repays it within a few calls.
NUMBA_MIN_SIZE = 2**20


def numba_pays(size: int) -> bool:
    """Whether a kernel on an array of `size` numbers runs in numba (USE_NUMBA, and big enough or numba already loaded)."""
    return USE_NUMBA and (size >= NUMBA_MIN_SIZE or "numba" in sys.modules)


# --------------------------------------------------------------------------- backward pass
def backward_deltas(weights: list, activation_caches: list, df: np.ndarray) -> list[np.ndarray]:
    """MLP.backward_deltas (its naive twin) with one GEMM per layer, on arrays only.

    For K backward vectors at once, df : (K, n, C), NumPy's ``delta @ W`` on a (K, n, out)
    stack runs K separate (n, out) x (out, in) products; stacking them as one (K n, out)
    matrix gives a single larger GEMM (1.5-4x faster on 784-256-256-10 with K = C = 10,
    benchmarks/BENCHMARKS.md). Then, as in mlp.py::

        delta_L = df,   delta_l = phi'(z_l) * (delta_{l+1} W_{l+1}),   l = L-1 .. 1

    and no input gradient for the first layer.

    Parameters
    ----------
    weights : list of (out_l, in_l), the model's weight matrices (``model.weights``)
    activation_caches : the forward pass's per-layer activation caches (``cache.activation_caches``)
    df : (K, n, C) backward vectors at the output

    Returns
    -------
    deltas : list of (..., n, out_l), as MLP.backward_deltas
    """
    from ..model.layers import activation_backward

    deltas = [None] * len(weights)
    delta = df
    for l in range(len(weights) - 1, -1, -1):
        deltas[l] = delta
        if l > 0:
            weight = weights[l]
            stacked = np.ascontiguousarray(delta).reshape(-1, delta.shape[-1])
            da = (stacked @ weight).reshape(*delta.shape[:-1], weight.shape[1])
            delta = activation_backward(da, activation_caches[l - 1])
    return deltas


# --------------------------------------------------------------------------- diagonal
def squared_delta_sum(delta: np.ndarray, weight: float) -> np.ndarray:
    """s_n = w sum_k delta_nk^2, elementwise over units.

    Parameters
    ----------
    delta : (K, n, out) back-propagated errors of one layer
    weight : w, the weight of each backward vector (1, or 1/S for mc)

    Returns
    -------
    s : (n, out)
    """
    if delta.shape[0] == 1:  # empirical, pred, mc with S = 1: no sum, one pass
        s = np.square(delta[0])
    else:
        s = np.einsum("kno,kno->no", delta, delta)
    if weight != 1.0:
        s *= weight
    return s


def gated_square_sum_numpy(da: np.ndarray, derivative: np.ndarray, weight: float, gate: bool) -> np.ndarray:
    """s = w phi'^2 sum_k da_k^2 : (n, m), and da *= phi' in place when `gate` (the NumPy twin).

    One hidden layer's step of squared_delta_sums: with da_k = delta_{l+1,k} W_{l+1} : (n, m) and
    derivative = phi'(z_l), delta_lk = phi' da_k, so w sum_k delta_lk^2 = phi'^2 (w sum_k da_k^2).

    Parameters
    ----------
    da : (K, n, m), overwritten by delta = phi' * da when `gate` (the next layer's input)
    derivative : (n, m) phi'(z_l)
    weight : w
    gate : whether delta is needed further down (every hidden layer but the first)

    Returns
    -------
    s : (n, m)
    """
    s = squared_delta_sum(da, weight)
    s *= derivative * derivative
    if gate:
        da *= derivative
    return s


@functools.cache
def _numba_gated_square_sum():
    """Compile (or load from the on-disk cache) the fused kernel, float64 and float32."""
    import numba

    signatures = [f"void({t}[:, :, ::1], {t}[:, ::1], {t}, boolean, {t}[:, ::1])" for t in ("float64", "float32")]

    @numba.njit(signatures, cache=True, nogil=True, boundscheck=False)
    def gated_square_sum(da, derivative, weight, gate, s):  # pragma: no cover - compiled
        K, n, m = da.shape
        for j in range(n):  # example by example: row j of every da_k and of s stays in cache
            s_j, d_j = s[j], derivative[j]
            s_j[:] = 0
            for k in range(K):
                row = da[k, j]
                for o in range(m):
                    v = row[o]
                    s_j[o] += v * v
                    if gate:
                        row[o] = v * d_j[o]
            for o in range(m):  # the twin's order of roundings: (sum * w) * phi'^2
                if weight != 1.0:
                    s_j[o] *= weight
                s_j[o] *= d_j[o] * d_j[o]

    return gated_square_sum


def gated_square_sum(da: np.ndarray, derivative: np.ndarray, weight: float, gate: bool) -> np.ndarray:
    """gated_square_sum_numpy by one numba pass over da (same signature, the same roundings; the sum
    over k in order, as NumPy's einsum does unless each da_k is a single number).

    NumPy makes three passes over the K-fold da (square and sum over k, then gate in place, plus
    phi'^2 over s); the loop reads and writes each entry of da once, example by example
    (3x faster on (9, 500, 256), benchmarks/BENCHMARKS.md). Falls back to the twin when
    EWC_REF_NO_NUMBA is set or the arrays are not C-contiguous float32/float64 of one dtype.
    """
    usable = (numba_pays(da.size) and da.dtype in (np.float64, np.float32) and derivative.dtype == da.dtype
              and da.flags.c_contiguous and derivative.flags.c_contiguous)
    if not usable:
        return gated_square_sum_numpy(da, derivative, weight, gate)
    s = np.empty(da.shape[1:], dtype=da.dtype)
    # w in the arrays' dtype, as NumPy's `s *= w` casts a Python float (the same roundings)
    _numba_gated_square_sum()(da, derivative, da.dtype.type(weight), bool(gate), s)
    return s


def squared_delta_sums(weights: list, activation_caches: list, df: np.ndarray, weight: float) -> list[np.ndarray]:
    """s_l = w sum_k delta_lk^2 : (n, out_l) for every layer, back-propagating only what is needed.

    The diagonal needs the squared deltas, never the deltas of the first layer themselves. With
    da_l = delta_{l+1} W_{l+1} (one stacked GEMM, as in backward_deltas) and delta_l = phi'(z_l) da_l,

        s_l = w sum_k (phi'(z_l) da_lk)^2 = phi'(z_l)^2 (w sum_k da_lk^2)

    so the K-fold product phi' * da is formed only where it is propagated further (in place, no new
    (K, n, out) array), and the first layer's never; both happen in one pass (gated_square_sum).
    Twin: squared_delta_sum over backward_deltas (equal up to the order of the roundings,
    tests/curvature/test_kernels.py).

    Parameters
    ----------
    weights, activation_caches : as backward_deltas
    df : (K, n, C) backward vectors at the output
    weight : w

    Returns
    -------
    s : list of (n, out_l)
    """
    sums = [None] * len(weights)
    delta = df
    sums[-1] = squared_delta_sum(delta, weight)
    for l in range(len(weights) - 1, 0, -1):
        weight_l = weights[l]
        stacked = np.ascontiguousarray(delta).reshape(-1, delta.shape[-1])
        da = (stacked @ weight_l).reshape(*delta.shape[:-1], weight_l.shape[1])
        stacked = delta = None  # delta_{l+1} is spent: freed before phi' and s exist (a lower peak)
        z, a, activation = activation_caches[l - 1]
        # phi'(z_l) : (n, out_l), once for the K vectors, freed when the kernel returns
        sums[l - 1] = gated_square_sum(da, activation.derivative(z, a), weight, gate=l > 1)
        delta = da  # delta_l (gated in place) when l > 1; unused after the first layer
    return sums


def diag_second_moment(delta: np.ndarray, a: np.ndarray, weight: float, has_bias: bool):
    """Diagonal of sum_{n,k} w g_nk g_nk^T for one Linear layer, without per-example gradients.

    With g_nk = [vec_row(delta_nk a_n^T), delta_nk] (estimators.py) the diagonal is

        weight part : sum_{n,k} w (delta_nk a_n^T)^2 = (sum_k w delta_nk^2)^T (a_n^2)
                      = S^T (a * a),  S : (n, out) = squared_delta_sum, one GEMM   (out, in)
        bias part   : sum_n S_n                                                    (out,)

    Parameters
    ----------
    delta : (K, n, out); a : (n, in); weight : w; has_bias : whether to return the bias part

    Returns
    -------
    weight_diag : (out, in); bias_diag : (out,) or None
    """
    s = squared_delta_sum(delta, weight)
    return s.T @ np.square(a), (s.sum(axis=0) if has_bias else None)


def diag_second_moment_naive(delta: np.ndarray, a: np.ndarray, weight: float, has_bias: bool):
    """Twin of diag_second_moment: build every per-example gradient, square, sum."""
    dW = delta[:, :, :, None] * a[None, :, None, :]  # (K, n, out, in) per-example weight gradients
    weight_diag = weight * (dW**2).sum(axis=(0, 1))
    bias_diag = weight * (delta**2).sum(axis=(0, 1)) if has_bias else None
    return weight_diag, bias_diag


# --------------------------------------------------------------------------- per-example gradients
def fill_per_sample_grads_numpy(G: np.ndarray, delta: np.ndarray, a: np.ndarray, column: int, has_bias: bool) -> None:
    """Write one layer's per-example gradients into columns of G (the NumPy broadcast twin).

    Parameters
    ----------
    G : (K n, P_total) output; row k n + j gets example j of backward vector k
    delta : (K, n, out); a : (n, in)
    column : first column of this layer's block (weight row-major, then bias)
    has_bias : whether the block ends with the out bias entries

    Notes
    -----
    G[k n + j, column + o in + i] = delta[k, j, o] a[j, i];  G[k n + j, column + out in + o] = delta[k, j, o].
    """
    K, n, n_out = delta.shape
    n_in = a.shape[1]
    rows = G.reshape(K, n, G.shape[1])
    block = rows[:, :, column : column + n_out * n_in]
    block.shape = (K, n, n_out, n_in)  # a view (raises rather than copy, so the write lands in G)
    np.multiply(delta[:, :, :, None], a[None, :, None, :], out=block)
    if has_bias:
        start = column + n_out * n_in
        rows[:, :, start : start + n_out] = delta


@functools.cache
def _numba_fill():
    """Compile (or load from the on-disk cache) the numba kernel, float64 and float32."""
    import numba

    signatures = [
        f"void({t}[:, ::1], {t}[:, :, ::1], {t}[:, ::1], int64, boolean)" for t in ("float64", "float32")
    ]

    @numba.njit(signatures, cache=True, nogil=True, boundscheck=False)
    def fill(G, delta, a, column, has_bias):  # pragma: no cover - compiled
        K, n, n_out = delta.shape
        n_in = a.shape[1]
        for k in range(K):
            for j in range(n):
                row = G[k * n + j]
                for o in range(n_out):
                    d = delta[k, j, o]
                    base = column + o * n_in
                    for i in range(n_in):
                        row[base + i] = d * a[j, i]
                if has_bias:
                    base = column + n_out * n_in
                    for o in range(n_out):
                        row[base + o] = delta[k, j, o]

    return fill


def fill_per_sample_grads(G: np.ndarray, delta: np.ndarray, a: np.ndarray, column: int, has_bias: bool) -> None:
    """fill_per_sample_grads_numpy by a numba loop (same signature, same result bit for bit).

    The NumPy broadcast multiplies into a strided view of G; the loop writes each row of G
    once, contiguously. Falls back to the twin when EWC_REF_NO_NUMBA is set or G is not a
    C-contiguous float32/float64 matrix.
    """
    if not numba_pays(G.size) or G.dtype not in (np.float64, np.float32) or not G.flags.c_contiguous:
        fill_per_sample_grads_numpy(G, delta, a, column, has_bias)
        return
    delta = np.ascontiguousarray(delta, dtype=G.dtype)
    a = np.ascontiguousarray(a, dtype=G.dtype)
    _numba_fill()(G, delta, a, int(column), bool(has_bias))


def per_sample_grads(deltas: list, inputs: list, has_bias: list, dtype=np.float64, layers=None) -> np.ndarray:
    """G : (K n, P) with the per-example gradients of the given layers side by side.

    Parameters
    ----------
    deltas : per layer (K, n, out_l); inputs : per layer (n, in_l); has_bias : per layer
    layers : indices of the layers to include (default all), in order

    Returns
    -------
    G : (K n, sum of the layers' parameter counts), row k n + j = g_jk restricted to the layers
    """
    layers = range(len(deltas)) if layers is None else layers
    sizes = [deltas[l].shape[-1] * (inputs[l].shape[1] + int(has_bias[l])) for l in layers]
    K, n = deltas[layers[0]].shape[:2]
    G = np.empty((K * n, sum(sizes)), dtype=dtype)
    column = 0
    for l, size in zip(layers, sizes, strict=True):
        fill_per_sample_grads(G, deltas[l], inputs[l], column, has_bias[l])
        column += size
    return G


# --------------------------------------------------------------------------- Gram matrices
def gram(G: np.ndarray) -> np.ndarray:
    """G^T G : (P, P) for G : (m, P), by a BLAS rank-m update of one triangle (syrk).

    NumPy's ``G.T @ G`` recognises the transposed operand and calls syrk itself, then copies
    the computed triangle into the other; this is that call (benchmarks/BENCHMARKS.md compares
    it with scipy.linalg.blas.dsyrk and with a general gemm).
    """
    return G.T @ G


def gram_syrk(G: np.ndarray) -> np.ndarray:
    """G^T G by scipy.linalg.blas.{d,s}syrk on the Fortran view G^T, then mirrored.

    Same result as gram (one triangle computed, then mirrored); kept to measure against it.
    """
    if G.dtype not in (np.float64, np.float32):
        return gram(G)
    syrk = _blas.dsyrk if G.dtype == np.float64 else _blas.ssyrk
    # G (C order, m x P) is G^T in Fortran order: syrk(trans=0) gives G^T G, no copy of G.
    upper = syrk(1.0, G.T, trans=0, lower=0)
    lower_part = np.tril_indices_from(upper, -1)
    upper[lower_part] = upper.T[lower_part]
    return upper


def gram_update(total: np.ndarray, G: np.ndarray, block: int = 512) -> None:
    """total += G^T G on the LOWER triangle of total, in place: no P x P temporary (a blocked syrk).

    Row strip by row strip of `block` rows: total[i:j, :j] += G[:, i:j]^T G[:, :j], one GEMM
    each on views of G and total (NumPy's BLAS; nothing is copied), so the only temporary is
    one (block, P) strip and about half the GEMM's flops are spent, as in syrk. Entries above
    the diagonal blocks are not touched; ``mirror_lower`` completes the matrix once at the end.
    This keeps structure='full' near one P x P matrix at its peak (benchmarks/BENCHMARKS.md).
    (scipy.linalg.blas.dsyrk with beta = 1 does the same without the strip, but SciPy's 32-bit
    OpenBLAS segfaults on a 2 GiB C = P x P, P = 16,360.) Twin: gram_naive added to total,
    compared on the lower triangle (tests/curvature/test_kernels.py).

    Parameters
    ----------
    total : (P, P) running sum (lower triangle and diagonal blocks are kept)
    G : (m, P) per-example gradients
    block : rows per strip
    """
    n = total.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        total[start:stop, :stop] += G[:, start:stop].T @ G[:, :stop]


def mirror_lower(total: np.ndarray, block: int = 1024) -> None:
    """Copy the lower triangle of the square `total` onto its upper one, in place, `block` rows at a time.

    total[i, j] <- total[j, i] for i < j, so total becomes exactly symmetric. Temporaries are one
    (block, P) strip, never P x P index arrays (np.triu_indices of P = 16,384 would take 2 GiB).
    """
    n = total.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        diagonal = total[start:stop, start:stop]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        total[start:stop, stop:] = total[stop:, start:stop].T


def gram_naive(G: np.ndarray) -> np.ndarray:
    """Twin of gram: sum_n g_n g_n^T written as an einsum over rows (no BLAS)."""
    return np.einsum("np,nq->pq", G, G, optimize=False)


# --------------------------------------------------------------------------- KFAC factors
def kfac_factors(delta: np.ndarray, a: np.ndarray, weight: float, has_bias: bool):
    """Sums of the two Kronecker factors of one Linear layer, one Gram matrix each.

        A_sum = sum_n abar_n abar_n^T = abar^T abar,  abar = [a, 1] with bias, else a   (in [+1], same)
        B_sum = w sum_{n,k} delta_nk delta_nk^T = w D^T D,  D = delta as (K n, out)      (out, out)

    (accumulator.py divides both by N.)
    """
    if has_bias:
        a = np.concatenate([a, np.ones((a.shape[0], 1), dtype=a.dtype)], axis=1)
    d = np.ascontiguousarray(delta).reshape(-1, delta.shape[-1])
    B = gram(d)
    if weight != 1.0:
        B *= weight
    return gram(a), B


def kfac_factors_naive(delta: np.ndarray, a: np.ndarray, weight: float, has_bias: bool):
    """Twin of kfac_factors: the outer-product sums written out by einsum."""
    if has_bias:
        a = np.concatenate([a, np.ones((a.shape[0], 1), dtype=a.dtype)], axis=1)
    A = np.einsum("ni,nj->ij", a, a, optimize=False)
    B = weight * np.einsum("kno,knp->op", delta, delta, optimize=False)
    return A, B
