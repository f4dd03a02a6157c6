"""The diagonal of the Hessian by one backward recursion of curvature (as BackPACK's DiagHessian).

The diagonal of H = 1/N sum_n d^2 l_n / d theta^2 needs neither P Hessian-vector products (the
naive twin, ``dense_hessian.hessian_diag_by_hvp``) nor the dense H. With the notation of
``second_order`` (z_l = a_{l-1} W_l^T + b_l, a_l = phi(z_l), f = z_L, delta_l = d l_n / d z_l)
let H^z_l = d^2 l_n / d z_l^2 : (out_l, out_l) be the Hessian of one example's loss with respect
to the pre-activation of layer l. Because z_l is linear in (W_l, b_l),

    d^2 l_n / d W_l[o, i]^2 = H^z_l[o, o] a_{l-1, i}^2,     d^2 l_n / d b_l[o]^2 = H^z_l[o, o]      (L1)

so every layer's diagonal is one GEMM, s^T (a * a) with s_n = diag(H^z_l), as for the diagonal
Fisher (kernels.diag_second_moment). The chain rule through a_{l-1} = phi(z_{l-1}) gives the
backward recursion (Dangel, Harmeling & Hennig 2020, "Modular block-diagonal curvature"):

    H^z_L     = Lambda_n = Q_n Q_n^T                                     (likelihood, C x C)
    H^z_{l-1} = D W_l^T H^z_l W_l D  +  diag(phi''(z_{l-1}) * (delta_l W_l))                     (L2)
              =      GGN part      +       residual r_{l-1} : (out_{l-1},)

with D = diag(phi'(z_{l-1})). The first term keeps a factored form: if H^z_l = sum_k w_k u_k u_k^T
then D W^T H^z_l W D = sum_k w_k (D W^T u_k)(D W^T u_k)^T, i.e. each vector u_k is back-propagated
like a pseudo-gradient of the exact Fisher (w_k = 1 for the columns of Q). The residual is
diagonal, so it adds directly to diag(H^z_{l-1}); one layer further down it is no longer diagonal,

    D' W_{l-1}^T diag(r) W_{l-1} D' = sum_j r_j (D' W_{l-1}^T e_j)(D' W_{l-1}^T e_j)^T           (L3)

and becomes out_{l-1} new weighted vectors (w = r_j, signed) -- except when layer l-1 is the first,
where only the DIAGONAL of (L3) is needed, phi'(z)^2 * (r @ W^2), one GEMM. Hence the cost: the
rank of Lambda backward vectors of the exact Fisher, plus, for every hidden layer m >= 2 with a
curved activation (phi'' != 0), out_m vectors back-propagated below layer m - 1. For one or two
hidden layers no vector is added: the diagonal Hessian costs about one exact diagonal Fisher
(``cost_ratio``); ReLU and identity nets (phi'' = 0) have diag H = diag GGN.

Everything is summed over examples per chunk and divided by N by the caller (``FisherAccumulator``
streams it for estimator='hessian', structure='diag').
"""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_int, finite_or_refused
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from . import budget


@finite_or_refused
def hessian_diag(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """diag(H) : (P,), H_ii = 1/N sum_n d^2 l_n / d theta_i^2, exactly, by the recursion (L1)-(L3).

    Parameters
    ----------
    model, lik, x, y : as in ``hessian_vector_product``
    chunk_size : rows per streamed chunk, >= 1, or None (``rows_per_chunk``)

    Returns
    -------
    (P,) in flat parameter order (docs/file-format.md `hessian` estimator, `diag` structure)

    Notes
    -----
    Cost about ``cost_ratio(model, lik)`` exact diagonal Fishers (1 for ReLU nets and for one or two
    hidden layers), memory one chunk; its naive twin ``dense_hessian.hessian_diag_by_hvp`` takes P
    Hessian-vector products. diag(H) can have negative entries, unlike every Fisher diagonal.
    """
    x, y = check_model_data(model, lik, x, y)
    chunk_size = None if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    return _hessian_diag(model, lik, x, y, chunk_size)


def _hessian_diag(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """hessian_diag on trusted arrays: the sums of diag_hessian_sums over chunks of rows, / N."""
    n = x.shape[0]
    chunk = chunk_size or rows_per_chunk(model, lik)
    total = diag_hessian_sums(model, lik, x[:chunk], y[:chunk])
    for begin in range(chunk, n, chunk):
        total += diag_hessian_sums(model, lik, x[begin : begin + chunk], y[begin : begin + chunk])
    return total / n


def rows_per_chunk(model: MLP, lik: Likelihood) -> int:
    """Rows per chunk so that the back-propagated vectors (K x rows x widest layer) stay near budget.CHUNK_NUMBERS."""
    k = max([*backward_vectors(model, lik), model.n_outputs])
    return max(1, budget.CHUNK_NUMBERS // (k * max(model.layer_sizes)))


def diag_hessian_sums(model: MLP, lik: Likelihood, x: np.ndarray, y) -> np.ndarray:
    """sum_n diag(d^2 l_n / d theta^2) : (P,) over the rows of (x, y), by the recursion (L1)-(L3).

    Parameters
    ----------
    model, lik : the network and its likelihood (trusted)
    x : (n, d_in); y : labels for `lik` (trusted, validated by the caller)

    Returns
    -------
    (P,) in flat parameter order; divide by N for the diagonal of the mean loss's Hessian
    """
    f, cache = model.forward(x)
    delta = lik.grad(f, y)                                        # delta_L = d l_n / d f : (n, C)
    vectors = np.moveaxis(lik.hessian_factor(f), -1, 0)           # u_k : (K, n, C), Lambda = sum_k u_k u_k^T
    weights = np.ones(vectors.shape[:2], dtype=vectors.dtype)     # w_k per example : (K, n)
    residual = None                                               # diagonal part of H^z_l : (n, out_l)
    out = np.empty(model.n_params, dtype=np.result_type(f, model.theta))
    for l in range(model.n_layers - 1, -1, -1):
        s = np.einsum("kn,kno->no", weights, vectors * vectors)   # diag(H^z_l) per example : (n, out_l)
        if residual is not None:
            s += residual
        a = cache.inputs[l]
        out[model.weight_slices[l]] = (s.T @ (a * a)).ravel()     # (L1)
        if model.has_bias[l]:
            out[model.bias_slices[l]] = s.sum(axis=0)
        if l == 0:
            break
        weight = model.weights[l]                                 # W_l : (out_l, in_l)
        z, a_prev, activation = cache.activation_caches[l - 1]
        d1, d2 = activation.derivative(z, a_prev), activation.second_derivative(z, a_prev)
        stacked = np.ascontiguousarray(vectors).reshape(-1, vectors.shape[-1]) @ weight
        vectors = d1 * stacked.reshape(*vectors.shape[:2], weight.shape[1])   # D W^T u_k, (L2)
        below = None
        if residual is not None:
            if l - 1 == 0:  # the first layer needs only the diagonal of (L3)
                below = d1 * d1 * (residual @ (weight * weight))
            else:           # (L3) as out_l weighted vectors D W^T e_j, weight r_j
                unit_images = d1[None] * weight[:, None, :]       # (out_l, n, in_l)
                vectors = np.concatenate([vectors, unit_images])
                weights = np.concatenate([weights, residual.T])
        upstream = delta @ weight                                 # d l_n / d a_{l-1} : (n, in_l)
        residual = d2 * upstream if activation.curved else None   # r_{l-1} of (L2)
        if below is not None:
            residual = below if residual is None else residual + below
        delta = d1 * upstream
    return out


def backward_vectors(model: MLP, lik: Likelihood) -> list[int]:
    """K_l, the weighted vectors the recursion back-propagates from z_l to z_{l-1}, l = L..2 (upper bound).

    The rank of Lambda at the output, plus out_m for every residual of a curved activation at a
    hidden layer m that is materialised as vectors by (L3) (those two or more layers above the first).
    """
    k = lik.hessian_factor(np.zeros((1, model.n_outputs), dtype=model.dtype)).shape[-1]
    counts, residual_width = [], 0                                # width of the diagonal part r_l at z_l
    for l in range(model.n_layers - 1, 0, -1):
        counts.append(k)                                          # vectors propagated z_l -> z_{l-1}
        if residual_width and l - 1 > 0:
            k += residual_width                                   # (L3) materialised, carried from z_{l-1} on
        residual_width = model.shapes[l - 1][0] if model.activation.curved else 0
    return counts


def is_cheap(model: MLP, lik: Likelihood) -> bool:
    """Whether the diagonal Hessian costs at most budget.DIAG_HESSIAN_COST exact diagonal Fishers
    (``diagnose`` then includes the Hessian candidate of a diag THEIRS by default)."""
    return cost_ratio(model, lik) <= budget.DIAG_HESSIAN_COST


def cost_ratio(model: MLP, lik: Likelihood) -> float:
    """Multiply-adds of diag_hessian_sums over those of the exact diagonal Fisher, per example (>= 1).

    Both do one GEMM per layer for (L1) and back-propagate K vectors through W_l, l = L..2; the
    Hessian adds the vectors of (L3) and, when the first layer follows a curved activation, one
    GEMM with W_2^2. The Fisher's K is the rank of Lambda (estimators.ESTIMATOR_TABLE['exact']).
    """
    rank = lik.hessian_factor(np.zeros((1, model.n_outputs), dtype=model.dtype)).shape[-1]
    sizes = [out * inp for out, inp in model.shapes]              # (out_l, in_l) per Linear layer
    diag_gemms = sum(sizes)
    propagated = sizes[:0:-1]                                     # layers L..2, as backward_vectors
    fisher = diag_gemms + rank * sum(propagated)
    hessian = diag_gemms + sum(k * size for k, size in zip(backward_vectors(model, lik), propagated, strict=True))
    if model.n_layers > 2 and model.activation.curved:
        hessian += sizes[1]                                       # the diagonal of (L3) above the first layer
    return hessian / fisher
