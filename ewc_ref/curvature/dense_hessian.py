"""The dense forms of the Hessian, H = 1/N sum_n d^2 l_n / d theta^2, and its residual, from R-operator passes.

``hessian``, ``hessian_diag_by_hvp`` and ``hessian_blocks`` apply the Hessian-vector product of
``second_order`` (whose module docstring writes out every R-forward and R-backward equation) to
batches of unit vectors e_i, keeping all of H e_i, only e_i^T H e_i, or the per-layer blocks.
``hessian_diag_by_hvp`` is the naive twin of ``diag_hessian.hessian_diag`` (one backward recursion,
about one exact diagonal Fisher instead of P Hessian-vector products).
``hessian_residual`` is the second term of (L1) there (a label local to ``second_order``), 1/N sum_n sum_c r_nc d^2 f_c / d theta^2,
by a second-order forward pass over pairs of unit vectors, without the loss and without any
backward pass. Dense P x P results are refused above ``budget.MAX_DENSE_BYTES``.

Public functions validate their arguments and name the one that is wrong; their twins compute on
trusted arrays: ``hessian_unchecked`` and ``hessian_blocks_unchecked`` (public, because
``FisherAccumulator`` streams them for estimator='hessian' after validating x and y once) and the
private `_` ones used only here.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_int, finite_or_refused
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP, ForwardCache
from . import budget
from .diag_hessian import hessian_diag  # noqa: F401  (its home before diag_hessian.py; tests import it here)
from .second_order import hvp_with_state, layer_directions, loss_state


# ----------------------------------------------------------------------------- dense forms
def _chunk_rows(model: MLP, n: int, chunk_size: int | None) -> int:
    """Unit vectors per batched pass: the R-op's (K, N, width) arrays and the (K, P) unit vectors
    and products both near budget.CHUNK_NUMBERS, so a P x P result needs P^2 plus O(CHUNK_NUMBERS)
    (without the K * P bound a small N made K = P: three more P x P arrays, issue #26)."""
    if chunk_size is not None:
        return chunk_size
    width, P = max(model.layer_sizes), model.n_params
    return int(max(1, min(P, budget.CHUNK_NUMBERS // max(1, n * width), budget.CHUNK_NUMBERS // P)))


def _unit_chunks(model: MLP, indices: range, chunk: int):
    """Yield (rows, E) with E : (len(rows), P) the unit vectors e_i for i in rows."""
    for start in range(indices.start, indices.stop, chunk):
        rows = range(start, min(start + chunk, indices.stop))
        E = np.zeros((len(rows), model.n_params), dtype=model.dtype)
        E[np.arange(len(rows)), np.asarray(rows)] = 1.0
        yield rows, E


def _check_dense_size(numbers: int, what: str) -> None:
    """Refuse (naming `model`, whose size is the cause) to allocate `numbers` float64 values
    beyond MAX_DENSE_BYTES, read at call time so that it can be raised."""
    needed, limit = 8 * numbers, budget.MAX_DENSE_BYTES  # one limit for every dense matrix
    if needed > limit:
        raise ValueError(
            f"model: {what} needs {needed / 2**30:.3g} GiB as float64, above the limit "
            f"ewc_ref.curvature.budget.MAX_DENSE_BYTES = {limit / 2**30:.3g} GiB; use hessian_diag "
            f"or hessian_blocks, or a structured Fisher (ewc_ref.fisher(..., structure='diag', 'block' or "
            f"'kfac')), or raise MAX_DENSE_BYTES if the memory exists"
        )


def hessian_unchecked(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None,
                      into: np.ndarray | None = None, weight: float = 1.0) -> np.ndarray:
    """`hessian` : (P, P) on trusted arguments (x, y validated and the memory checked by the caller).

    With `into` : (P, P), ``into += weight * H`` row chunk by row chunk and `into` is returned: a
    running sum (``FisherAccumulator``) then needs no second P x P array.
    """
    state = loss_state(model, lik, x, y)
    P = model.n_params
    if into is None:
        into = np.zeros((P, P), dtype=np.result_type(model.theta, state.delta_out))
    for rows, E in _unit_chunks(model, range(P), _chunk_rows(model, x.shape[0], chunk_size)):
        HE = hvp_with_state(model, state, E)                               # row i = (H e_i)^T
        if weight != 1.0:
            HE *= weight
        into[rows.start:rows.stop] += HE
    return into


def _hessian_diag_by_hvp(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    state = loss_state(model, lik, x, y)
    diag = np.empty(model.n_params, dtype=np.result_type(model.theta, state.delta_out))
    for rows, E in _unit_chunks(model, range(model.n_params), _chunk_rows(model, x.shape[0], chunk_size)):
        HE = hvp_with_state(model, state, E)
        diag[rows.start:rows.stop] = HE[np.arange(len(rows)), np.asarray(rows)]  # e_i^T H e_i
    return diag


def hessian_blocks_unchecked(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> list:
    """`hessian_blocks` : [(P_l, P_l)] on trusted arguments (x, y validated by the caller)."""
    state = loss_state(model, lik, x, y)
    chunk = _chunk_rows(model, x.shape[0], chunk_size)
    blocks = []
    for s in model.layer_slices:
        block = np.empty((s.stop - s.start,) * 2, dtype=np.result_type(model.theta, state.delta_out))
        for rows, E in _unit_chunks(model, range(s.start, s.stop), chunk):
            block[rows.start - s.start:rows.stop - s.start] = hvp_with_state(model, state, E)[:, s]
        blocks.append(block)
    return blocks


def _check_chunk_size(chunk_size) -> int | None:
    return None if chunk_size is None else check_positive_int(chunk_size, "chunk_size")


@finite_or_refused
def hessian(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """The dense Hessian of the mean loss, H = 1/N sum_n d^2 l_n / d theta^2 : (P, P).

    Built row by row from P Hessian-vector products with the unit vectors e_i, batched
    `chunk_size` at a time (default: about 8 MiB per intermediate array), reusing
    one forward and one backward pass. H is symmetric up to round-off (it is not
    symmetrised, so its asymmetry is a test of the R-op).

    Parameters
    ----------
    model, lik, x, y : as in `hessian_vector_product`
    chunk_size : unit vectors per batched pass, >= 1, or None

    Returns
    -------
    H : (P, P), flat parameter order (docs/file-format.md `hessian` estimator, `full` structure)

    Raises
    ------
    ValueError
        naming `model` when P x P float64 would exceed ewc_ref.curvature.budget.MAX_DENSE_BYTES (2 GiB); the message
        says which structured alternative to use.

    Notes
    -----
    Equations (6)-(8) of the report (N * H is the Laplace precision). Cost: P/K batched
    R-forward + R-backward passes, i.e. about 2 P forward passes, and P^2 numbers.
    """
    x, y = check_model_data(model, lik, x, y)
    chunk_size = _check_chunk_size(chunk_size)
    P = model.n_params
    _check_dense_size(P * P, f"the dense P x P Hessian for P = {P} parameters")
    return hessian_unchecked(model, lik, x, y, chunk_size)


# The name of the estimator 'hessian' with structure 'full' in earlier releases; `er.hessian` is this
# function now that the module is not called `hessian`.
hessian_full = hessian


def hessian_diag_by_hvp(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """diag(H) : (P,) by P Hessian-vector products: the naive twin of ``diag_hessian.hessian_diag``.

    Same P Hessian-vector products as `hessian`, keeping only e_i^T H e_i: memory
    O(chunk_size * P) instead of P^2, cost unchanged (about 2 P forward passes). `chunk_size`
    counts unit vectors per batched pass.
    """
    x, y = check_model_data(model, lik, x, y)
    return _hessian_diag_by_hvp(model, lik, x, y, _check_chunk_size(chunk_size))


@finite_or_refused
def hessian_blocks(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> list[np.ndarray]:
    """Per-layer diagonal blocks of H: a list with one (P_l, P_l) array per layer.

    Block l is H[s, s] for s = model.layer_slices[l] (the layer's weight row-major, then its
    bias), computed from the P_l products H e_i, i in s. Memory sum_l P_l^2; cost about
    2 P forward passes in total.
    """
    x, y = check_model_data(model, lik, x, y)
    chunk_size = _check_chunk_size(chunk_size)
    sizes = [s.stop - s.start for s in model.layer_slices]
    _check_dense_size(sum(p * p for p in sizes), f"the per-layer Hessian blocks of sizes {sizes}")
    return hessian_blocks_unchecked(model, lik, x, y, chunk_size)


# ----------------------------------------------------------------------------- residual
def _output_second_derivatives(model: MLP, cache: ForwardCache, U: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Second-order forward pass: u^T (d^2 f_c(x_n) / d theta^2) w for all pairs of directions.

    Differentiating the forward pass twice, along u (first, K1 directions) and w (K2
    directions), D_u q = d/ds q(theta + s u) and D_uw q = d/dt D_u q(theta + t w)::

        D_u z_l  = D_u a_{l-1} W_l^T + a_{l-1} U_l^T + u_b_l
        D_uw z_l = D_uw a_{l-1} W_l^T + D_u a_{l-1} W'_l^T + D_w a_{l-1} U_l^T
        D_u a_l  = phi'(z_l) * D_u z_l
        D_uw a_l = phi''(z_l) * D_u z_l * D_w z_l + phi'(z_l) * D_uw z_l

    with D a_0 = 0 (x is data) and (U_l, u_b_l), (W'_l, w_b_l) the layer-l parts of u and w
    (the bias enters linearly, so it has no second derivative). This is forward-over-forward
    differentiation: it shares no code with the R-backward pass of `hessian_vector_product`.

    Parameters
    ----------
    cache : model.forward(x)
    U : (K1, P), W : (K2, P)

    Returns
    -------
    T : (K1, K2, N, C), T[i, j, n, c] = U[i]^T (d^2 f_c(x_n) / d theta^2) W[j]
    """
    k1, k2 = U.shape[0], W.shape[0]
    n = cache.inputs[0].shape[0]
    dtype = np.result_type(U, W, model.theta)
    du_a = np.zeros((k1, 1, n, model.n_inputs), dtype=dtype)               # D_u a_0
    dw_a = np.zeros((1, k2, n, model.n_inputs), dtype=dtype)               # D_w a_0
    duw_a = np.zeros((k1, k2, n, model.n_inputs), dtype=dtype)             # D_uw a_0
    for l in range(model.n_layers):
        a_prev, weight = cache.inputs[l], model.weights[l]
        U_l, u_b = layer_directions(model, U, l)                          # (K1, out, in)
        W_l, w_b = layer_directions(model, W, l)                          # (K2, out, in)
        du_z = du_a @ weight.T + (a_prev @ np.swapaxes(U_l, -1, -2))[:, None]
        dw_z = dw_a @ weight.T + (a_prev @ np.swapaxes(W_l, -1, -2))[None, :]
        if u_b is not None:
            du_z = du_z + u_b[:, None, None, :]
            dw_z = dw_z + w_b[None, :, None, :]
        duw_z = duw_a @ weight.T + du_a @ np.swapaxes(W_l, -1, -2)[None, :] + dw_a @ np.swapaxes(U_l, -1, -2)[:, None]
        if l == model.n_layers - 1:
            return duw_z                                                   # f = z_L
        z, a, activation = cache.activation_caches[l]
        d1, d2 = activation.derivative(z, a), activation.second_derivative(z, a)
        du_a, dw_a, duw_a = d1 * du_z, d1 * dw_z, d2 * du_z * dw_z + d1 * duw_z
    raise AssertionError("unreachable: the loop returns at the last layer")


def _hessian_residual(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    f, cache = model.forward(x)
    n, P = x.shape[0], model.n_params
    weights = lik.grad(f, y) / n                                           # r_n / N : (N, C)
    eye = np.eye(P, dtype=model.dtype)
    # Each row chunk holds (K1, P, N, width) second derivatives.
    chunk = chunk_size or int(max(1, budget.CHUNK_NUMBERS // max(1, P * n * max(model.layer_sizes))))
    residual = np.empty((P, P), dtype=np.result_type(model.theta, weights))
    for start in range(0, P, chunk):
        stop = min(start + chunk, P)
        T = _output_second_derivatives(model, cache, eye[start:stop], eye)  # (K1, P, N, C)
        residual[start:stop] = np.einsum("ijnc,nc->ij", T, weights)
    return residual


@finite_or_refused
def hessian_residual(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """The residual H - GGN = 1/N sum_n sum_c r_nc d^2 f_c(x_n) / d theta^2 : (P, P).

    r_n = d l_n / d f_n : (C,) (the output gradient at the observed label) and
    d^2 f_c(x_n) / d theta^2 : (P, P) the Hessian of the c-th network output for example n,
    each entry e_i^T (.) e_j computed by the second-order forward pass of the network output
    alone (no loss, no backward pass; `_output_second_derivatives`). Independent of the
    R-backward pass of `hessian`, so GGN + residual == hessian is a real test of both.

    Zero for a network with one Linear layer (f linear in theta); zero in expectation over
    labels drawn from the model (E_y[r_n] = 0); nonzero in general, ReLU networks included.

    Parameters
    ----------
    model, lik, x, y : as in `hessian_vector_product`
    chunk_size : rows (unit vectors e_i) per batched pass, >= 1, or None

    Returns
    -------
    (P, P), symmetric up to round-off.

    Notes
    -----
    Second term of the decomposition (L1) in the docstring of ``second_order``. Cost: all P^2 pairs of
    unit directions through the second-order forward pass, about 3 P^2 forward passes' worth
    of arithmetic (batched): a reference for small models only. Memory check as in `hessian`.
    """
    x, y = check_model_data(model, lik, x, y)
    chunk_size = _check_chunk_size(chunk_size)
    P = model.n_params
    _check_dense_size(P * P, f"the dense P x P Hessian residual for P = {P} parameters")
    return _hessian_residual(model, lik, x, y, chunk_size)
