"""numba kernels of diagnose (its one pass, verify/one_pass.py, and its screen of every B), each beside its NumPy twin.

The pass back-propagates a basis of K output vectors per row (for categorical, the gradient at
every label) and reads from the deltas delta : (K, n, out) of each layer; the screen reads the
prefix sums s : (N + 1, M) of per-example gradients on M entries:

======================  ======================================================  ===========================
kernel                  computes                                                NumPy twin
======================  ======================================================  ===========================
label_squares           s : (n, 3 out) = [delta_{y_n}^2 | sum_k w_nk delta_k^2   label_squares_numpy
                        | delta_{pred_n}^2]: the empirical, exact and pred       (a gather, an einsum)
                        squares, one read of delta
gather_entries          u[k, n, e] = delta[k, n, i_e] a[n, j_e] (a weight) or    gather_entries_numpy
                        delta[k, n, i_e] (j_e < 0, a bias): per-example          (fancy indexing)
                        gradients on a few entries
minibatch_mean_squares  F_B[e] = 1/K sum_k ((s[end_k, e] - s[start_k, e]) /      minibatch_mean_squares_numpy
                        |b_k|)^2 for every B of a group (batched.batched_screen) (a gather of prefix rows,
                                                                                a sparse segmented sum)
======================  ======================================================  ===========================

NumPy makes three passes and two (K, n, out) temporaries for the squares, gathers columns with
fancy indexing, and copies the prefix rows of every minibatch for the screen; the loops read
their input once. Compiled on first use with explicit signatures and ``cache=True`` (as
curvature.kernels, and like them used only for arrays of at least ``kernels.NUMBA_MIN_SIZE``
numbers or once numba is loaded); ``EWC_REF_NO_NUMBA=1`` selects the twins. Results equal the twins up to the
order of the additions (tests/verify/test_one_pass.py, tests/verify/test_diagnose_verdicts.py).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse

from .kernels import numba_pays


def label_squares_numpy(delta: np.ndarray, weights: np.ndarray, observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """s : (n, 3 out) = [delta[y_n, n]^2 | sum_k w[n, k] delta[k, n]^2 | delta[pred_n, n]^2].

    delta : (K, n, out); weights : (n, K); observed, predicted : (n,) indices into K.
    """
    rows = np.arange(delta.shape[1])
    return np.concatenate([np.square(delta[observed, rows]), np.einsum("nk,kno->no", weights, delta * delta),
                           np.square(delta[predicted, rows])], axis=1)


def gather_entries_numpy(delta: np.ndarray, a: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """u : (K, n, M) with u[k, n, e] = delta[k, n, i[e]] * a[n, j[e]], or delta[k, n, i[e]] where j[e] < 0."""
    u = delta[..., i] * np.where(j >= 0, a[:, np.maximum(j, 0)], 1.0)
    return u


def minibatch_mean_squares_numpy(prefix: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """(|sizes|, M): F_B on the M entries for each B, from prefix : (N + 1, M) (prefix[0] = 0)."""
    sizes = np.asarray(sizes, dtype=np.intp)
    k = -(-n // sizes)
    offsets = np.concatenate([[0], np.cumsum(k)[:-1]])  # first row of each B's minibatches
    width = np.repeat(sizes, k)
    starts = (np.arange(int(k.sum())) - np.repeat(offsets, k)) * width
    ends = np.minimum(starts + width, n)
    gbar = np.take(prefix, ends, axis=0)
    gbar -= np.take(prefix, starts, axis=0)
    gbar /= (ends - starts)[:, None]
    gbar *= gbar
    # the segmented sum over each B's minibatches as a sparse (|sizes|, rows) indicator product
    owner = sparse.csr_matrix((1.0 / np.repeat(k, k), np.arange(width.size), np.append(offsets, width.size)),
                              shape=(sizes.size, width.size))
    return owner @ gbar


@functools.cache
def _compiled():
    """Compile (or load from the on-disk cache) both kernels, float64."""
    import numba

    @numba.njit("void(float64[:, :, ::1], float64[:, ::1], int64[::1], int64[::1], float64[:, ::1])",
                cache=True, nogil=True, boundscheck=False)
    def squares(delta, weights, observed, predicted, out):  # pragma: no cover - compiled
        K, n, o = delta.shape
        for r in range(n):
            e, p = observed[r], predicted[r]
            for c in range(o):
                out[r, c] = delta[e, r, c] * delta[e, r, c]
                out[r, o + c] = 0.0
                out[r, 2 * o + c] = delta[p, r, c] * delta[p, r, c]
            for k in range(K):
                w = weights[r, k]
                for c in range(o):
                    v = delta[k, r, c]
                    out[r, o + c] += w * (v * v)

    @numba.njit("void(float64[:, :, ::1], float64[:, ::1], int64[::1], int64[::1], float64[:, :, ::1])",
                cache=True, nogil=True, boundscheck=False)
    def gather(delta, a, i, j, out):  # pragma: no cover - compiled
        K, n, _ = delta.shape
        m = i.shape[0]
        for r in range(n):
            for e in range(m):
                scale = a[r, j[e]] if j[e] >= 0 else 1.0
                for k in range(K):
                    out[k, r, e] = delta[k, r, i[e]] * scale

    @numba.njit("void(float64[:, ::1], int64[::1], int64, float64[:, ::1])", cache=True, nogil=True, boundscheck=False)
    def screen(prefix, sizes, n, out):  # pragma: no cover - compiled
        m = prefix.shape[1]
        for g in range(sizes.shape[0]):
            b = sizes[g]
            k = (n + b - 1) // b
            for start in range(0, n, b):
                end = min(start + b, n)
                count = end - start
                for e in range(m):
                    d = (prefix[end, e] - prefix[start, e]) / count
                    out[g, e] += d * d
            for e in range(m):
                out[g, e] /= k

    return squares, gather, screen


def label_squares(delta: np.ndarray, weights: np.ndarray, observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """label_squares_numpy by one numba loop over delta (float64; other dtypes use the twin)."""
    if not numba_pays(delta.size) or delta.dtype != np.float64:
        return label_squares_numpy(delta, weights, observed, predicted)
    out = np.empty((delta.shape[1], 3 * delta.shape[2]))
    _compiled()[0](_writeable(delta), _writeable(weights.astype(np.float64, copy=False)),
                   np.ascontiguousarray(observed, dtype=np.int64), np.ascontiguousarray(predicted, dtype=np.int64), out)
    return out


def gather_entries(delta: np.ndarray, a: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """gather_entries_numpy by one numba loop (float64; other dtypes use the twin). Products are bit-identical."""
    if not numba_pays(delta.size) or delta.dtype != np.float64 or a.dtype != np.float64:
        return gather_entries_numpy(delta, a, i, j)
    out = np.empty(delta.shape[:2] + (len(i),))
    _compiled()[1](_writeable(delta), _writeable(a), np.ascontiguousarray(i, dtype=np.int64),
                   np.ascontiguousarray(j, dtype=np.int64), out)
    return out


def _writeable(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writeable array (the kernels' signatures; a broadcast view is copied)."""
    return np.require(array, requirements=["C", "W"])


def minibatch_mean_squares(prefix: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """minibatch_mean_squares_numpy by one numba loop (no gathered copy of the prefix rows)."""
    if not numba_pays(prefix.size):
        return minibatch_mean_squares_numpy(prefix, sizes, n)
    out = np.zeros((len(sizes), prefix.shape[1]))
    _compiled()[2](_writeable(prefix.astype(np.float64, copy=False)), np.ascontiguousarray(sizes, dtype=np.int64),
                   int(n), out)
    return out
