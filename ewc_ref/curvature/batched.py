"""The ``batched`` estimator: squared gradients of the minibatch-MEAN loss over consecutive minibatches.

    F_B = 1/K sum_k gbar_k gbar_k^T,  gbar_k = 1/|b_k| sum_{n in b_k} g_n,  K = ceil(N / B)      (L1)

over the k-th run b_k of B consecutive rows (the last, partial run is a batch of its own). The
gradient SUM of a run is linear in its rows, so it can be formed in pieces:

* ``minibatch_pieces`` (used by FisherAccumulator): within one chunk of rows, the gradient sum of
  every minibatch piece in one backward pass (a one-hot weighting of the rows); pieces of one
  minibatch split across chunks or accumulators are added when they meet.
* ``batched_fishers``: F_B for many B at once from one pass over the per-example gradients,
  with the prefix sums s_m = sum_{n < m} g_n: sum_{n in [a, b)} g_n = s_b - s_a, so every B
  costs K subtractions of (P,) vectors.
* ``batched_fisher_gemm`` (used by diagnose to confirm a batch size): F_B for one B with the
  minibatch gradient sums of a Linear layer as one batched GEMM, sum_{n in b_k} delta_n a_n^T =
  Delta_k^T A_k, so no per-example gradient is ever formed (cost ~ one backward pass).
* ``batched_screen`` (used by diagnose to find B): F_B on a few tested entries for EVERY B in
  1..N from the prefix sums of those entries' per-example gradients (sum over B of K = N/B is
  N ln N subtractions of (M,) vectors).

``batch_bounds`` is the one definition of the partition (L1) every path uses.

The naive twin of both is ``naive.naive_fisher(estimator='batched')``: one gradient of the
mean loss per minibatch.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_positive_int
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from . import budget, label_kernels


def batch_bounds(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (K,), ends (K,)) of the K = ceil(N / B) runs of (L1): [kB, min(N, (k + 1) B))."""
    starts = np.arange(0, n, batch_size)
    return starts, np.minimum(starts + batch_size, n)


def minibatch_pieces(model: MLP, lik: Likelihood, x_chunk: np.ndarray, y_chunk, position: int, batch_size: int):
    """Gradient sums of the minibatch pieces in rows [position, position + n) of the data.

    Returns (index (k,), sums (k, P), rows (k,)): global minibatch index, the gradient SUM of
    that minibatch's rows inside this chunk, and how many of its rows the chunk holds.
    """
    f, cache = model.forward(x_chunk)
    batch_of_row = np.arange(position, position + x_chunk.shape[0]) // batch_size
    index = np.arange(batch_of_row[0], batch_of_row[-1] + 1)
    onehot = (batch_of_row[None, :] == index[:, None]).astype(f.dtype)  # (k, n)
    sums = model.backward(cache, onehot[:, :, None] * lik.grad(f, y_chunk)[None])  # (k, P)
    return index, sums, onehot.sum(axis=1).astype(int)


def _chunk_rows(model: MLP, width: int) -> int:
    return max(1, budget.BATCHED_CHUNK_BYTES // max(1, width * model.n_params))


def batched_fishers(model: MLP, lik: Likelihood, x, y, batch_sizes, structure: str = "diag",
                    chunk_size: int | None = None) -> dict[int, np.ndarray]:
    """``batched`` Fishers (L1) for many minibatch sizes B from one pass over per-example gradients.

    Parameters
    ----------
    model, lik, x, y : the network, its likelihood and the data, rows in minibatch order
    batch_sizes : the B to compute, each 1 <= B <= N
    structure : 'diag' or 'full'
    chunk_size : rows of per-example gradients held at once (default: BATCHED_CHUNK_BYTES)

    Returns
    -------
    {B: (P,) diagonal} for structure='diag', {B: (P, P)} for 'full'.
    The naive twin is ``ewc_ref.fisher(..., estimator='batched', batch_size=B)`` per B.
    """
    x, y = check_model_data(model, lik, x, y)
    structure = check_choice(structure, "structure", ("diag", "full"))
    n = x.shape[0]
    sizes = [check_positive_int(b, "batch_sizes", upper=n) for b in batch_sizes]
    chunk = check_positive_int(chunk_size, "chunk_size") if chunk_size is not None else _chunk_rows(model, 1)
    return batched_fishers_unchecked(model, lik, x, y, sizes, structure, chunk)


def batched_fishers_unchecked(model: MLP, lik: Likelihood, x, y, sizes: list, structure: str, chunk: int) -> dict:
    """batched_fishers on trusted input (x, y from check_model_data; sizes, structure and chunk checked)."""
    n, p = x.shape[0], model.n_params
    dtype = np.result_type(x, model.theta)
    acc = {b: np.zeros(p, dtype) for b in sizes} if structure == "diag" else {b: [] for b in sizes}
    last_prefix = {b: np.zeros(p, dtype) for b in sizes}  # s at the last batch boundary passed
    last_boundary = dict.fromkeys(sizes, 0)
    prefix = np.zeros(p, dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        f, cache = model.forward(x[start:stop])
        S = prefix + np.cumsum(model.per_sample_grads(cache, lik.grad(f, y[start:stop])), axis=0)  # S[r] = s_{start+r+1}
        for b in sizes:
            ends = np.arange((start // b + 1) * b, stop + 1, b)
            if stop == n and (ends.size == 0 or ends[-1] != n):
                ends = np.append(ends, n)
            if ends.size == 0:
                continue
            at_ends = S[ends - start - 1]
            starts = np.concatenate([[last_boundary[b]], ends[:-1]])
            gbar = np.diff(np.vstack([last_prefix[b][None], at_ends]), axis=0) / (ends - starts)[:, None]
            if structure == "diag":
                acc[b] += np.einsum("kp,kp->p", gbar, gbar)
            else:
                acc[b].append(gbar)
            last_prefix[b], last_boundary[b] = at_ends[-1], int(ends[-1])
        prefix = S[-1]
    out = {}
    for b in sizes:
        k = -(-n // b)
        gbar = None if structure == "diag" else np.vstack(acc[b])
        out[b] = acc[b] / k if structure == "diag" else gbar.T @ gbar / k
    return out


def batched_fisher_gemm(model: MLP, lik: Likelihood, x, y, batch_size: int, structure: str = "diag",
                        batches_per_chunk: int | None = None) -> np.ndarray:
    """``batched`` Fisher (L1) for one B by batched GEMMs (trusted input: x, y from check_model_data).

    For Linear layer l the gradient MEAN of minibatch k is Delta_k^T A_k / |b_k| (weight) and
    sum_n Delta_k[n] / |b_k| (bias), with Delta_k : (B, out) the back-propagated errors and
    A_k : (B, in) the layer inputs of its rows: one batched GEMM over the full minibatches of a
    chunk (views, no copy; the 1/|b_k| folded into Delta), the partial last one on its own.
    Cost ~ one forward and one backward pass; memory (batches per chunk) x P <= budget.CHUNK_BYTES.
    Naive twin: ``naive.naive_fisher(estimator='batched')`` (and ``batched_fishers``).

    Returns (P,) for structure='diag', (P, P) for 'full'.
    """
    n, p, b = x.shape[0], model.n_params, batch_size
    starts, ends = batch_bounds(n, b)
    k_total = len(starts)
    per_chunk = batches_per_chunk or max(1, budget.CHUNK_BYTES // (8 * max(p, b * sum(model.layer_sizes))))
    dtype = np.result_type(x, model.theta)
    out = np.zeros(p, dtype) if structure == "diag" else np.zeros((p, p), dtype)
    for k0 in range(0, k_total, per_chunk):
        k1 = min(k_total, k0 + per_chunk)
        lo, hi = int(starts[k0]), int(ends[k1 - 1])
        f, cache = model.forward(x[lo:hi])
        deltas = model.backward_deltas(cache, lik.grad(f, y[lo:hi]))
        full = (hi - lo) // b  # whole minibatches in this chunk; a partial one can only be the last
        groups = [(0, full, b)] if full else []
        if full * b < hi - lo:
            groups.append((full * b, 1, hi - lo - full * b))
        for row0, count, size in groups:  # `count` minibatches of `size` rows from row row0 of the chunk
            means = np.empty((count, p), dtype) if structure == "full" else None
            for l, delta in enumerate(deltas):
                d = delta[row0:row0 + count * size].reshape(count, size, -1) / size
                a = cache.inputs[l][row0:row0 + count * size].reshape(count, size, -1)
                # a contiguous (k, out, B) operand keeps matmul on BLAS (a transposed view falls back to a slow loop)
                weight = np.matmul(np.ascontiguousarray(d.transpose(0, 2, 1)), a)  # (k, out, in) minibatch means
                bias = d.sum(axis=1) if model.has_bias[l] else None
                if structure == "diag":
                    out[model.weight_slices[l]] += np.einsum("koi,koi->oi", weight, weight).ravel()
                    if bias is not None:
                        out[model.bias_slices[l]] += np.einsum("ko,ko->o", bias, bias)
                else:
                    means[:, model.weight_slices[l]] = weight.reshape(count, -1)
                    if bias is not None:
                        means[:, model.bias_slices[l]] = bias
            if structure == "full":
                out += means.T @ means
    return out / k_total


def batched_screen(grad_entries: np.ndarray, theirs_entries: np.ndarray, sizes) -> dict[int, tuple[float, float]]:
    """Fit THEIRS ~= c F_B on M tested diagonal entries for every B in `sizes` (diagnose's screen).

    Parameters
    ----------
    grad_entries : (N, M) per-example gradients g_n restricted to the tested entries, rows in order
    theirs_entries : (M,) THEIRS on the same entries
    sizes : the batch sizes B to screen

    Returns
    -------
    {B: (c, relative error)} of the least-squares scale fit of ``verify.diagnosis`` on the M entries, with
    F_B[i] = 1/K sum_k (1/|b_k| sum_{n in b_k} g_ni)^2 from the prefix sums of `grad_entries`.
    The B are taken in groups whose minibatches number at most SCREEN_ROWS, each group by
    ``label_kernels.minibatch_mean_squares`` (sum over B of K = N/B is N ln N rows of M entries
    in all). Memory (N + 1) x M + SCREEN_ROWS x M. Twin: ``batched_screen_loop``.
    """
    n, m = grad_entries.shape
    prefix = np.zeros((n + 1, m))
    np.cumsum(grad_entries, axis=0, out=prefix[1:])
    t = np.asarray(theirs_entries, np.float64)
    tt = float(t @ t)
    sizes = np.asarray(list(sizes), dtype=np.intp)
    counts = -(-n // sizes)  # K per B
    out = {}
    first = 0
    while first < sizes.size:
        last = first + max(1, int(np.searchsorted(np.cumsum(counts[first:]), SCREEN_ROWS, side="right")))
        group = sizes[first:last]
        f_b = label_kernels.minibatch_mean_squares(prefix, group, n)  # (|group|, M)
        ff = np.einsum("bm,bm->b", f_b, f_b)
        c = np.divide(f_b @ t, ff, out=np.zeros_like(ff), where=ff > 0)
        err = np.linalg.norm(t - c[:, None] * f_b, axis=1) / np.sqrt(tt) if tt > 0 else np.ones_like(ff)
        for b, cb, eb, fb in zip(group.tolist(), c.tolist(), err.tolist(), ff.tolist(), strict=True):
            out[b] = (cb, eb) if fb > 0 and tt > 0 else (0.0, 1.0)
        first = last
    return out


#: Minibatch rows (of M entries) the screen holds at once: 2^12 x 256 entries = 8 MiB, which
#: stays in cache better than 2^14 (0.14 s against 0.16 s for every B at N = 10^4, M = 256).
SCREEN_ROWS = 2**12


def batched_screen_loop(grad_entries: np.ndarray, theirs_entries: np.ndarray, sizes) -> dict[int, tuple[float, float]]:
    """batched_screen one B at a time (its naive twin)."""
    n = grad_entries.shape[0]
    prefix = label_kernels.prefix_sums(grad_entries)  # (N + 1, M), prefix[0] = 0
    t = np.asarray(theirs_entries, np.float64)
    tt = float(t @ t)
    out = {}
    for b in sizes:
        starts, ends = batch_bounds(n, b)
        gbar = (prefix[ends] - prefix[starts]) / (ends - starts)[:, None]
        f_b = np.einsum("km,km->m", gbar, gbar) / len(starts)
        ff = float(f_b @ f_b)
        if ff == 0.0 or tt == 0.0:
            out[b] = (0.0, 1.0)
            continue
        c = float(t @ f_b) / ff
        out[b] = (c, float(np.linalg.norm(t - c * f_b) / np.sqrt(tt)))
    return out
