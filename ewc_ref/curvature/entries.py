"""Per-example gradients on a few parameter entries, without forming the (N, P) matrix.

For Linear layer l, the gradient of example n along backward vector k is dW = delta_nk a_n^T,
db = delta_nk (estimators module docstring), so entry (i, j) of a weight is delta_nk[i] a_n[j]
and entry i of a bias is delta_nk[i]: M entries cost K N M products once the deltas are known,
against K N P for the full per-example gradients. ``diagnose`` uses it for its screens and
statistical tests, which look at M <= a few hundred entries of a P ~ 10^5 network.

Naive twin: ``MLP.per_sample_grads(cache, df)[..., cols]``.
"""

from __future__ import annotations

import numpy as np

from ..model.likelihoods import Likelihood
from ..model.mlp import MLP, ForwardCache
from . import budget


def entry_locations(model: MLP, cols: np.ndarray) -> list[tuple[np.ndarray, int, np.ndarray, np.ndarray | None]]:
    """Per layer: (positions in cols, layer l, output index i, input index j or None for a bias)."""
    cols = np.asarray(cols)
    located = []
    for l in range(model.n_layers):
        w = model.weight_slices[l]
        pos = np.flatnonzero((cols >= w.start) & (cols < w.stop))
        if pos.size:
            i, j = np.divmod(cols[pos] - w.start, model.shapes[l][1])
            located.append((pos, l, i, j))
        b = model.bias_slices[l]
        if b is not None:
            pos = np.flatnonzero((cols >= b.start) & (cols < b.stop))
            if pos.size:
                located.append((pos, l, cols[pos] - b.start, None))
    return located


def per_sample_grad_entries(model: MLP, cache: ForwardCache, df: np.ndarray, cols) -> np.ndarray:
    """G[..., n, e] = d s_n / d theta_{cols[e]}: per-example gradients on the entries `cols`.

    Parameters
    ----------
    cache : from model.forward on n rows
    df : (..., n, C) upstream gradient d s_n / d f_n (e.g. K backward vectors)
    cols : (M,) flat parameter indices

    Returns
    -------
    G : (..., n, M); equals ``model.per_sample_grads(cache, df)[..., cols]``
    """
    cols = np.asarray(cols, dtype=np.intp)
    deltas = model.backward_deltas(cache, df)
    G = np.empty(df.shape[:-1] + (cols.size,), dtype=np.result_type(df, model.theta))
    for pos, l, i, j in entry_locations(model, cols):
        G[..., pos] = deltas[l][..., i] if j is None else deltas[l][..., i] * cache.inputs[l][:, j]
    return G


def grad_entries(model: MLP, lik: Likelihood, x: np.ndarray, y: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, M) per-example gradients of the loss at the labels y on the flat entries `cols`.

    Row n is g_n[cols], g_n = d l(x_n, y_n) / d theta (``per_sample_grad_entries``), computed in row
    chunks sized so one chunk's activations or output stay within ``budget.CHUNK_BYTES``; x, y trusted.
    """
    n = x.shape[0]
    chunk = max(1, budget.CHUNK_BYTES // (8 * max(sum(model.layer_sizes), cols.size)))
    out = np.empty((n, cols.size))
    for start in range(0, n, chunk):
        f, cache = model.forward(x[start:start + chunk])
        out[start:start + chunk] = per_sample_grad_entries(model, cache, lik.grad(f, y[start:start + chunk]), cols)
    return out
