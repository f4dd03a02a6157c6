"""The ``batched`` estimator: squared gradients of the minibatch-MEAN loss over consecutive minibatches.

    F_B = 1/K sum_k gbar_k gbar_k^T,  gbar_k = 1/|b_k| sum_{n in b_k} g_n,  K = ceil(N / B)      (1)

over the k-th run b_k of B consecutive rows (the last, partial run is a batch of its own). The
gradient SUM of a run is linear in its rows, so it can be formed in pieces:

* ``minibatch_pieces`` (used by FisherAccumulator): within one chunk of rows, the gradient sum of
  every minibatch piece in one backward pass (a one-hot weighting of the rows); pieces of one
  minibatch split across chunks or accumulators are added when they meet.
* ``batched_fishers`` (used by diagnose): F_B for many B at once from one pass over the
  per-example gradients, with the prefix sums s_m = sum_{n < m} g_n:
  sum_{n in [a, b)} g_n = s_b - s_a, so every B costs K subtractions of (P,) vectors.

The naive twin of both is ``naive.naive_fisher(estimator='batched')``: one gradient of the
mean loss per minibatch.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_positive_int
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from . import budget


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
    """``batched`` Fishers (1) for many minibatch sizes B from one pass over per-example gradients.

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
