"""numba kernels of diagnose (its one pass, verify/one_pass.py, its screen of every B and its simulated
shuffled loaders, verify/shuffled.py), each beside its NumPy twin.

The pass back-propagates a basis of K output vectors per row (for categorical, the gradient at
every label) and reads from the deltas delta : (K, n, out) of each layer; the screen reads the
prefix sums s : (N + 1, M) of per-example gradients g : (N, M) on M entries:

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
ordered_fits            (c, relative error) of THEIRS ~= c F for the three       ordered_fits_numpy
                        ordered variants of every B (loader.screen_arrays):      (minibatch_mean_squares,
                        F_B, the short batch dropped, kept with a SUM; no        the variants and the fits
                        (|B|, M) temporaries                                     as arrays, B in groups)
prefix_sums             s[0] = 0, s[r + 1] = s[r] + g[r]: the screen's prefix    np.cumsum (the same
                        sums, row by row (NumPy's cumsum along axis 0 walks      additions in the same
                        each column with a stride of M numbers: 5-10x slower)    order: bit-identical)
gathered_squares        D[s] = sum_n q[idx[n, s], n]: the bootstrap mc draws,    gathered_squares_numpy
                        a gather of S rows per example                           (a one-hot GEMM, K x the work)
partition_squares       sum_k (1/|b_k| sum_{n: batch[n] = k} g_n)^2 for one      partition_squares_numpy
                        partition of the rows (a simulated shuffled loader),    (a sparse indicator product)
                        streaming g in row order into the batch sums
======================  ======================================================  ===========================

NumPy makes three passes and two (K, n, out) temporaries for the squares, gathers columns with
fancy indexing, copies the prefix rows of every minibatch for the screen, multiplies by a dense
one-hot matrix for the draws and reads g's rows in random order for a partition; the loops read
their input once, in memory order. Compiled on first use with explicit signatures and ``cache=True`` (as
curvature.kernels, and like them used only for arrays of at least ``kernels.NUMBA_MIN_SIZE``
numbers or once numba is loaded); ``EWC_REF_NO_NUMBA=1`` selects the twins. Results equal the twins up to the
order of the additions (tests/verify/test_one_pass.py, tests/verify/test_diagnose_verdicts.py).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse

from . import budget
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


def gathered_squares_numpy(q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(S, M) sum_n q[idx[n, s], n, :] for q : (K, n, M), idx : (n, S) label indices: one GEMM with the one-hot labels."""
    k, n, m = q.shape
    onehot = np.zeros((idx.shape[1], k * n))
    onehot[np.arange(idx.shape[1])[None, :], idx * n + np.arange(n)[:, None]] = 1.0
    return onehot @ q.reshape(k * n, m)


def partition_squares_numpy(g: np.ndarray, batch: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(M,) sum_k (1/counts[k] sum_{n: batch[n] = k} g[n])^2 for g : (N, M), batch : (N,) batch index or -1
    (a row left out, drop_last), counts : (K,) the rows of each batch: a sparse (K, N) indicator product,
    each batch's rows summed in row order."""
    order = np.argsort(batch, kind="stable")[int(np.sum(batch < 0)):]  # the used rows by batch, in row order
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indicator = sparse.csr_matrix((np.ones(order.size), order, indptr), shape=(counts.size, g.shape[0]))
    gbar = (indicator @ g) / counts[:, None]
    return np.einsum("km,km->m", gbar, gbar)


def fits_numpy(t: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c, relative error) : (G,), (G,) of t ~= c f for each row of f : (G, M), c = <t, f> / <f, f>,
    error ||t - c f|| / ||t|| ((0, 1) where f or t is zero)."""
    ff = np.einsum("gm,gm->g", f, f)
    tt = float(t @ t)
    c = np.divide(f @ t, ff, out=np.zeros_like(ff), where=ff > 0)
    err = np.linalg.norm(t - c[:, None] * f, axis=1) / np.sqrt(tt) if tt > 0 else np.ones_like(ff)
    valid = (ff > 0) & (tt > 0)
    return np.where(valid, c, 0.0), np.where(valid, err, 1.0)


def ordered_fits_numpy(prefix: np.ndarray, sizes: np.ndarray, n: int, t: np.ndarray,
                       rows: int = 2**12) -> tuple[np.ndarray, np.ndarray]:
    """(c, error) : (|sizes|, 3), (|sizes|, 3) of ``fits_numpy`` for each B in `sizes` and the ordered variants
    '' (F_B of ``minibatch_mean_squares``), 'dropped' (S_B / (K - 1)) and 'kept, sum' ((B^2 S_B + r^2 L_B) / K),
    with r = N mod B, L_B = (1/r sum of the last r rows)^2 and S_B = K F_B - L_B (verify/loader.py,
    ``screen_ordered``); from prefix : (N + 1, M). The B in groups of at most `rows` minibatches."""
    sizes = np.asarray(sizes, dtype=np.intp)
    counts = -(-n // sizes)
    c_out, e_out = np.zeros((sizes.size, 3)), np.ones((sizes.size, 3))
    first = 0
    while first < sizes.size:
        last = first + max(1, int(np.searchsorted(np.cumsum(counts[first:]), rows, side="right")))
        group = sizes[first:last]
        f_b = minibatch_mean_squares(prefix, group, n)  # (|group|, M)
        k, r = counts[first:last], n % group
        short = ((prefix[n] - prefix[n - r]) / np.maximum(r, 1)[:, None]) ** 2  # zero where r = 0
        full = k[:, None] * f_b - short
        variants = (f_b, full / np.maximum(k - 1, 1)[:, None], (group[:, None] ** 2 * full + r[:, None] ** 2 * short) / k[:, None])
        for v, f in enumerate(variants):
            c_out[first:last, v], e_out[first:last, v] = fits_numpy(t, f)
        first = last
    return c_out, e_out


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

    @numba.njit("void(float64[:, :, ::1], float64[:, ::1], int64[::1], int64[::1], int64, float64[:, :, ::1])",
                cache=True, nogil=True, boundscheck=False)
    def gather(delta, a, i, j, offset, out):  # pragma: no cover - compiled
        K, n, _ = delta.shape
        m = i.shape[0]
        for k in range(K):  # out in memory order
            for r in range(n):
                for e in range(m):
                    out[k, r, offset + e] = delta[k, r, i[e]] * (a[r, j[e]] if j[e] >= 0 else 1.0)

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

    @numba.njit("void(float64[:, ::1], float64[:, ::1])", cache=True, nogil=True, boundscheck=False)
    def prefix(g, out):  # pragma: no cover - compiled
        n, m = g.shape
        for e in range(m):
            out[0, e] = 0.0
        for r in range(n):
            for e in range(m):
                out[r + 1, e] = out[r, e] + g[r, e]

    @numba.njit("void(float64[:, :, ::1], int64[:, ::1], float64[:, ::1])", cache=True, nogil=True, boundscheck=False)
    def gathered(q, idx, out):  # pragma: no cover - compiled
        _, n, m = q.shape
        for r in range(n):
            for s in range(idx.shape[1]):
                k = idx[r, s]
                for e in range(m):
                    out[s, e] += q[k, r, e]

    @numba.njit(["void(float64[:, ::1], int64[::1], float64[::1], int64, float64[::1])",
                 "void(float32[:, ::1], int64[::1], float64[::1], int64, float64[::1])"], cache=True, nogil=True,
                boundscheck=False)
    def partition(g, batch, counts, block, out):  # pragma: no cover - compiled
        n, m = g.shape
        k_total = counts.shape[0]
        acc = np.empty((min(block, k_total), m))
        for k0 in range(0, k_total, block):  # `block` batch sums at a time, one sequential read of g each
            k1 = min(k_total, k0 + block)
            acc[:] = 0.0
            for r in range(n):
                b = batch[r] - k0
                if b >= 0 and b < k1 - k0:
                    for e in range(m):
                        acc[b, e] += g[r, e]
            for b in range(k1 - k0):
                for e in range(m):
                    v = acc[b, e] / counts[k0 + b]
                    out[e] += v * v

    @numba.njit("void(float64[:, ::1], int64[::1], int64, float64[::1], float64[:, ::1], float64[:, ::1])",
                cache=True, nogil=True, boundscheck=False)
    def ordered(prefix, sizes, n, t, c_out, e_out):  # pragma: no cover - compiled
        m = prefix.shape[1]
        tt = 0.0
        for e in range(m):
            tt += t[e] * t[e]
        f = np.empty((3, m))
        for g in range(sizes.shape[0]):
            b = sizes[g]
            k = (n + b - 1) // b
            r = n % b
            for e in range(m):
                f[0, e] = 0.0
            for start in range(0, n, b):
                end = min(start + b, n)
                count = end - start
                for e in range(m):
                    d = (prefix[end, e] - prefix[start, e]) / count
                    f[0, e] += d * d
            for e in range(m):
                f[0, e] /= k
                short = ((prefix[n, e] - prefix[n - r, e]) / max(r, 1)) ** 2
                full = k * f[0, e] - short
                f[1, e] = full / max(k - 1, 1)
                f[2, e] = (b * b * full + r * r * short) / k
            for v in range(3):
                ff, ft = 0.0, 0.0
                for e in range(m):
                    ff += f[v, e] * f[v, e]
                    ft += f[v, e] * t[e]
                c_out[g, v], e_out[g, v] = 0.0, 1.0
                if ff > 0 and tt > 0:
                    c = ft / ff
                    q = 0.0
                    for e in range(m):
                        d = t[e] - c * f[v, e]
                        q += d * d
                    c_out[g, v], e_out[g, v] = c, np.sqrt(q) / np.sqrt(tt)

    return squares, gather, screen, prefix, gathered, partition, ordered


def label_squares(delta: np.ndarray, weights: np.ndarray, observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """label_squares_numpy by one numba loop over delta (float64; other dtypes use the twin)."""
    if not numba_pays(delta.size) or delta.dtype != np.float64:
        return label_squares_numpy(delta, weights, observed, predicted)
    out = np.empty((delta.shape[1], 3 * delta.shape[2]))
    _compiled()[0](_writeable(delta), _writeable(weights.astype(np.float64, copy=False)),
                   np.ascontiguousarray(observed, dtype=np.int64), np.ascontiguousarray(predicted, dtype=np.int64), out)
    return out


def gather_entries(delta: np.ndarray, a: np.ndarray, i: np.ndarray, j: np.ndarray, out: np.ndarray | None = None,
                   offset: int = 0) -> np.ndarray:
    """gather_entries_numpy by one numba loop (float64; other dtypes use the twin). Products are bit-identical.

    With `out` : (K, n, M_total) (C-contiguous float64), the M entries are written into its columns
    offset..offset + M - 1 (no copy of a separate result) and `out` is returned."""
    if not numba_pays(delta.size) or delta.dtype != np.float64 or a.dtype != np.float64 or (
            out is not None and not (out.flags.c_contiguous and out.dtype == np.float64)):
        if out is None:
            return gather_entries_numpy(delta, a, i, j)
        out[..., offset:offset + len(i)] = gather_entries_numpy(delta, a, i, j)
        return out
    out, offset = (np.empty(delta.shape[:2] + (len(i),)), 0) if out is None else (out, offset)
    _compiled()[1](_writeable(delta), _writeable(a), np.ascontiguousarray(i, dtype=np.int64),
                   np.ascontiguousarray(j, dtype=np.int64), int(offset), out)
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


def prefix_sums(g: np.ndarray) -> np.ndarray:
    """(N + 1, M) prefix sums s[0] = 0, s[r + 1] = s[r] + g[r] of g : (N, M), in float64 (bit-identical to np.cumsum)."""
    out = np.empty((g.shape[0] + 1, g.shape[1]))
    if not numba_pays(g.size):
        out[0] = 0.0
        np.cumsum(g, axis=0, out=out[1:])
        return out
    _compiled()[3](_writeable(g.astype(np.float64, copy=False)), out)
    return out


def gathered_squares(q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """gathered_squares_numpy by one numba loop (S M additions per example, not the one-hot GEMM's K S M)."""
    if not numba_pays(q.size) or q.dtype != np.float64:
        return gathered_squares_numpy(q, idx)
    out = np.zeros((idx.shape[1], q.shape[2]))
    _compiled()[4](_writeable(q), np.ascontiguousarray(idx, dtype=np.int64), out)
    return out


def partition_squares(g: np.ndarray, batch: np.ndarray, counts: np.ndarray,
                      block_bytes: int = budget.CHUNK_BYTES) -> np.ndarray:
    """partition_squares_numpy by one numba loop reading g in row order (float64), the batch sums
    `block_bytes` at a time (a sequential read of g per block: memory O(block), whatever K)."""
    if not numba_pays(g.size):
        return partition_squares_numpy(g.astype(np.float64, copy=False), batch, counts)
    out = np.zeros(g.shape[1])
    block = max(1, block_bytes // (8 * max(1, g.shape[1])))
    g = g if g.dtype in (np.float32, np.float64) else g.astype(np.float64)
    _compiled()[5](_writeable(g), np.ascontiguousarray(batch, dtype=np.int64),
                   np.ascontiguousarray(counts, dtype=np.float64), int(block), out)
    return out


def ordered_fits(prefix: np.ndarray, sizes: np.ndarray, n: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ordered_fits_numpy by one numba loop over the B (M numbers of scratch; equal up to the order of the additions)."""
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    if not numba_pays(prefix.size):
        return ordered_fits_numpy(prefix, sizes, n, t)
    c_out, e_out = np.empty((sizes.size, 3)), np.empty((sizes.size, 3))
    _compiled()[6](_writeable(prefix.astype(np.float64, copy=False)), sizes, int(n),
                   np.ascontiguousarray(t, dtype=np.float64), c_out, e_out)
    return c_out, e_out
