"""The exact Hessian of the mean loss, by Pearlmutter's R-operator written out layer by layer.

The mean training loss L(theta) = 1/N sum_n l_n (docs/file-format.md) has the Hessian

    H = d^2 L / d theta^2 = 1/N sum_n d^2 l_n / d theta^2                       (P, P)

the matrix of the second-order Taylor expansion of the loss (equivalently of the negative
log posterior) around a trained theta* in equations (6)-(8) of the report, and so the
precision N * H (+ prior precision) of the Laplace approximation. By the chain rule,
with f_n = f(x_n; theta) : (C,), J_n = d f_n / d theta : (C, P), r_n = d l_n / d f_n : (C,)
and Lambda_n = d^2 l_n / d f_n^2 : (C, C),

    H = 1/N sum_n J_n^T Lambda_n J_n  +  1/N sum_n sum_c r_nc d^2 f_c(x_n) / d theta^2
      =            GGN                +               residual                   (1)

The GGN equals the exact Fisher for the three likelihoods here. The residual vanishes when
the network is linear in theta (one Linear layer), and its expectation over labels drawn from
the model vanishes because E_y[r_n] = 0 (the Bartlett identity), but it is not zero in
general, not even for ReLU networks: phi'' = 0 kills only the curvature of the activation;
f = W_2 relu(W_1 x + b_1) + b_2 still has the cross term d^2 f_c / d W_2[c, j] d W_1[j, k]
= relu'(z_j) x_k.

Nothing here uses an autodiff engine. A direction v : (P,) is split like theta into per-layer
(V_l, v_b_l) (the shapes of W_l and b_l), and R{q} = d/dt q(theta + t v) at t = 0 denotes the
directional derivative of any intermediate quantity q (Pearlmutter 1994).

Forward pass (mlp.py), l = 1..L, a_0 = x, f = z_L::

    z_l = a_{l-1} W_l^T + b_l,   a_l = phi(z_l)

R-forward pass (forward-mode: the tangent of every intermediate), `r_forward`::

    R{a_0} = 0
    R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} V_l^T + v_b_l                       (N, out_l)
    R{a_l} = phi'(z_l) * R{z_l}                                             (N, out_l)
    R{f}   = R{z_L} = J v                                                   (N, C)

Backward pass of s = sum_n s_n(f_n) (mlp.py), with delta_L = d s / d f : (N, C)::

    delta_l   = phi'(z_l) * (delta_{l+1} W_{l+1})
    dW_l      = delta_l^T a_{l-1},   db_l = sum_n delta_l

R-backward pass (the R-op of every line above, product rule), `_r_backward`::

    R{delta_L} = R{d s / d f}                (= Lambda (J v) / N for the mean loss)
    R{delta_l} = phi''(z_l) * R{z_l} * (delta_{l+1} W_{l+1})
               + phi'(z_l) * (R{delta_{l+1}} W_{l+1} + delta_{l+1} V_{l+1})
    R{dW_l}    = R{delta_l}^T a_{l-1} + delta_l^T R{a_{l-1}}                 (out_l, in_l)
    R{db_l}    = sum_n R{delta_l}                                           (out_l,)

and H v = (R{dW_1}, R{db_1}, ..., R{dW_L}, R{db_L}) in flat parameter order. Cost of one
Hessian-vector product: 1 forward + 1 R-forward + 1 backward + 1 R-backward pass, about
four forward passes. Dropping every term that contains delta (the loss gradient) leaves
R{delta_L} = Lambda J v / N pushed through the plain backward pass: the GGN-vector product
(`ggn_vector_product`, 1 R-forward + 1 backward). Every direction may carry a leading
batch axis K (V : (K, P)), which the passes carry like the K pseudo-gradients of
model.backward_deltas, so P products cost P/K batched passes.

The residual of (1) is computed independently (`hessian_residual`), without the loss and
without any backward pass: the second directional derivatives of the network output,
R_u{R_w{f}} = u^T (d^2 f / d theta^2) w, by a second-order forward pass over pairs of unit
vectors, contracted with r_n / N.

Public functions validate their arguments and name the one that is wrong; the private `_`
twins compute on trusted arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import curvature
from ._validate import as_float_array, check_positive_int
from .likelihoods import Likelihood
from .loss import check_model_data
from .mlp import MLP, ForwardCache

# Largest dense (P, P) matrix, in bytes of float64, that `hessian` and `hessian_residual`
# will allocate (a module constant so that a user with more memory can raise it).

# Working memory (in float64 numbers) of one batch of K directions through the passes,
# K * N * (widest layer); it sets the default number of unit vectors per batch.
_CHUNK_NUMBERS = 2**20


# ----------------------------------------------------------------------------- R-forward
@dataclass
class RForwardCache:
    """Tangents of every intermediate of the forward pass along K directions.

    Attributes
    ----------
    r_inputs : list of (K, N, in_l) arrays; r_inputs[0] = R{x} = 0, r_inputs[l] = R{a_{l-1}}
    r_pre_activations : list of (K, N, out_l) arrays R{z_l}; the last one is R{f} = J v
    """

    r_inputs: list
    r_pre_activations: list

    @property
    def output(self) -> np.ndarray:
        """R{f} = J v : (K, N, C)."""
        return self.r_pre_activations[-1]


def _layer_directions(model: MLP, V: np.ndarray, l: int):
    """(V_l : (K, out_l, in_l), v_b_l : (K, out_l) or None): layer l's part of V : (K, P)."""
    out, inp = model.shapes[l]
    V_l = V[:, model.weight_slices[l]].reshape(V.shape[0], out, inp)
    v_b = None if model.bias_slices[l] is None else V[:, model.bias_slices[l]]
    return V_l, v_b


def r_forward(model: MLP, cache: ForwardCache, V: np.ndarray) -> RForwardCache:
    """R-forward pass: the tangent of every pre-activation and activation along V.

    Parameters
    ----------
    model : the network whose forward pass produced `cache`
    cache : ForwardCache from model.forward(x), x : (N, in_0)
    V : (K, P) directions in flat parameter order (trusted: no validation)

    Returns
    -------
    RForwardCache with R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} V_l^T + v_b_l and
    R{a_l} = phi'(z_l) * R{z_l}, each (K, N, width); its `output` is J v : (K, N, C).
    Cost: one forward pass per direction, no backward pass.
    """
    k, n = V.shape[0], cache.inputs[0].shape[0]
    r_a = np.zeros((k, n, model.n_inputs), dtype=np.result_type(V, model.theta))  # x is data
    r_cache = RForwardCache([], [])
    for l in range(model.n_layers):
        a_prev = cache.inputs[l]                                   # (N, in_l)
        V_l, v_b = _layer_directions(model, V, l)                  # (K, out_l, in_l), (K, out_l)
        r_z = r_a @ model.weights[l].T + a_prev @ np.swapaxes(V_l, -1, -2)
        if v_b is not None:
            r_z = r_z + v_b[:, None, :]
        r_cache.r_inputs.append(r_a)
        r_cache.r_pre_activations.append(r_z)                      # (K, N, out_l)
        if l < model.n_layers - 1:
            z, a, activation = cache.activation_caches[l]
            r_a = activation.derivative(z, a) * r_z                # (K, N, out_l)
    return r_cache


# ----------------------------------------------------------------------------- R-backward
def _r_backward(model: MLP, cache: ForwardCache, r_cache: RForwardCache, deltas: list,
                r_delta_out: np.ndarray, V: np.ndarray) -> np.ndarray:
    """R-backward pass: R{d s / d theta} for the scalar s whose output gradient produced `deltas`.

    Parameters
    ----------
    cache, r_cache : the forward and R-forward passes
    deltas : list of (N, out_l), delta_l = d s / d z_l from model.backward_deltas(cache, d s / d f)
    r_delta_out : (K, N, C) R{d s / d f}
    V : (K, P) the directions of r_cache

    Returns
    -------
    (K, P) array, row k = (d^2 s / d theta^2) V[k], in flat parameter order.
    """
    k = V.shape[0]
    hv = np.empty((k, model.n_params), dtype=np.result_type(r_delta_out, V, model.theta))
    r_delta = r_delta_out                                                   # R{delta_L}
    for l in range(model.n_layers - 1, -1, -1):
        a_prev, r_a_prev = cache.inputs[l], r_cache.r_inputs[l]             # (N, in), (K, N, in)
        delta = deltas[l]                                                   # (N, out)
        r_dW = np.swapaxes(r_delta, -1, -2) @ a_prev + delta.T @ r_a_prev   # (K, out, in)
        hv[:, model.weight_slices[l]] = r_dW.reshape(k, -1)
        if model.bias_slices[l] is not None:
            hv[:, model.bias_slices[l]] = r_delta.sum(axis=-2)              # (K, out)
        if l > 0:
            W_l = model.weights[l]
            V_l, _ = _layer_directions(model, V, l)
            z, a, activation = cache.activation_caches[l - 1]
            da = delta @ W_l                                                # (N, in) = d s / d a_{l-1}
            r_da = r_delta @ W_l + delta @ V_l                              # (K, N, in)
            r_z = r_cache.r_pre_activations[l - 1]                          # (K, N, in)
            r_delta = activation.second_derivative(z, a) * r_z * da + activation.derivative(z, a) * r_da
    return hv


# ----------------------------------------------------------------------------- products
@dataclass
class _LossState:
    """What every product with the loss Hessian at (model, x, y) reuses: one forward and one
    backward pass. delta_out = r / N : (N, C), Lambda : (N, C, C), deltas[l] : (N, out_l)."""

    cache: ForwardCache
    delta_out: np.ndarray
    Lambda: np.ndarray
    deltas: list


def _loss_state(model: MLP, lik: Likelihood, x: np.ndarray, y) -> _LossState:
    f, cache = model.forward(x)
    n = x.shape[0]
    delta_out = lik.grad(f, y) / n              # d L / d f_n for the MEAN loss: the 1/N is here
    return _LossState(cache, delta_out, lik.hessian(f), model.backward_deltas(cache, delta_out))


def _hvp_with_state(model: MLP, state: _LossState, V: np.ndarray) -> np.ndarray:
    """H V^T for V : (K, P), reusing the forward/backward pass in `state`; returns (K, P)."""
    n = state.cache.inputs[0].shape[0]
    r_cache = r_forward(model, state.cache, V)
    Jv = r_cache.output                                                      # (K, N, C)
    r_delta_out = np.einsum("nij,knj->kni", state.Lambda, Jv) / n            # R{r_n / N}
    return _r_backward(model, state.cache, r_cache, state.deltas, r_delta_out, V)


def _as_batch(v: np.ndarray):
    """(K, P) view of v : (P,) or (K, P), and a function restoring the input's leading shape."""
    if v.ndim == 1:
        return v[None, :], lambda out: out[0]
    return v, lambda out: out


def _hessian_vector_product(model: MLP, lik: Likelihood, x, y, v: np.ndarray) -> np.ndarray:
    V, restore = _as_batch(v)
    return restore(_hvp_with_state(model, _loss_state(model, lik, x, y), V))


def _ggn_vector_product(model: MLP, lik: Likelihood, x, y, v: np.ndarray) -> np.ndarray:
    V, restore = _as_batch(v)
    f, cache = model.forward(x)
    Jv = r_forward(model, cache, V).output                                   # (K, N, C)
    Lambda_Jv = np.einsum("nij,knj->kni", lik.hessian(f), Jv) / x.shape[0]   # (K, N, C)
    return restore(model.backward(cache, Lambda_Jv))                         # sum_n J_n^T (.)


def _check_vector(model: MLP, v, name: str = "v") -> np.ndarray:
    v = as_float_array(v, name)
    if v.ndim not in (1, 2) or v.shape[-1] != model.n_params:
        raise ValueError(
            f"{name}: expected shape ({model.n_params},) or (K, {model.n_params}) to match the model's "
            f"P = {model.n_params} parameters, got {v.shape}"
        )
    return v


def hessian_vector_product(model: MLP, lik: Likelihood, x, y, v) -> np.ndarray:
    """Exact Hessian-vector product of the mean loss, H v = 1/N sum_n (d^2 l_n / d theta^2) v.

    Pearlmutter's R-operator through the explicit MLP (module docstring): no matrix is formed.

    Parameters
    ----------
    model : MLP
    lik : Likelihood
    x : (N, in_0)
    y : labels for `lik`
    v : (P,) or (K, P) direction(s) in flat parameter order

    Returns
    -------
    (P,) or (K, P): H v, row by row for a batch.

    Raises
    ------
    ValueError, TypeError
        naming `model`, `lik`, `x`, `y` or `v` when it is malformed or not finite.

    Notes
    -----
    H is the matrix of the Taylor expansion in equations (6)-(8) of the report; N * H is the
    Laplace precision. Cost: 1 forward + 1 R-forward + 1 backward + 1 R-backward pass
    (about 4 forward passes), each carrying all K directions at once.
    """
    x, y = check_model_data(model, lik, x, y)
    return _hessian_vector_product(model, lik, x, y, _check_vector(model, v))


def ggn_vector_product(model: MLP, lik: Likelihood, x, y, v) -> np.ndarray:
    """GGN-vector product G v = 1/N sum_n J_n^T Lambda_n J_n v, no Jacobian formed.

    One R-forward pass gives J_n v : (K, N, C) for every example; multiplying by
    Lambda_n = d^2 l_n / d f_n^2 : (N, C, C) and dividing by N gives the output "gradient"
    that one ordinary backward pass turns into sum_n J_n^T (.) : (K, P).

    Parameters
    ----------
    model, lik, x, y : as in `hessian_vector_product`
    v : (P,) or (K, P)

    Returns
    -------
    (P,) or (K, P): G v. G is the first term of the decomposition (1) of the module docstring
    and equals the exact Fisher for the likelihoods here. Cost: 1 forward + 1 R-forward +
    1 backward pass.
    """
    x, y = check_model_data(model, lik, x, y)
    return _ggn_vector_product(model, lik, x, y, _check_vector(model, v))


# ----------------------------------------------------------------------------- dense forms
def _chunk_rows(model: MLP, n: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    width = max(model.layer_sizes)
    return int(max(1, min(model.n_params, _CHUNK_NUMBERS // max(1, n * width))))


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
    needed, limit = 8 * numbers, curvature.MAX_DENSE_BYTES  # one limit for every dense matrix
    if needed > limit:
        raise ValueError(
            f"model: {what} needs {needed / 2**30:.3g} GiB as float64, above the limit "
            f"ewc_ref.curvature.MAX_DENSE_BYTES = {limit / 2**30:.3g} GiB; use hessian_diag "
            f"or hessian_blocks, or a structured Fisher (ewc_ref.fisher(..., structure='diag', 'block' or "
            f"'kfac')), or raise MAX_DENSE_BYTES if the memory exists"
        )


def _hessian(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    state = _loss_state(model, lik, x, y)
    P = model.n_params
    H = np.empty((P, P), dtype=np.result_type(model.theta, state.delta_out))
    for rows, E in _unit_chunks(model, range(P), _chunk_rows(model, x.shape[0], chunk_size)):
        H[rows.start:rows.stop] = _hvp_with_state(model, state, E)          # row i = (H e_i)^T
    return H


def _hessian_diag(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    state = _loss_state(model, lik, x, y)
    diag = np.empty(model.n_params, dtype=np.result_type(model.theta, state.delta_out))
    for rows, E in _unit_chunks(model, range(model.n_params), _chunk_rows(model, x.shape[0], chunk_size)):
        HE = _hvp_with_state(model, state, E)
        diag[rows.start:rows.stop] = HE[np.arange(len(rows)), np.asarray(rows)]  # e_i^T H e_i
    return diag


def _hessian_blocks(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> list:
    state = _loss_state(model, lik, x, y)
    chunk = _chunk_rows(model, x.shape[0], chunk_size)
    blocks = []
    for s in model.layer_slices:
        block = np.empty((s.stop - s.start,) * 2, dtype=np.result_type(model.theta, state.delta_out))
        for rows, E in _unit_chunks(model, range(s.start, s.stop), chunk):
            block[rows.start - s.start:rows.stop - s.start] = _hvp_with_state(model, state, E)[:, s]
        blocks.append(block)
    return blocks


def _check_chunk_size(chunk_size) -> int | None:
    return None if chunk_size is None else check_positive_int(chunk_size, "chunk_size")


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
        naming `model` when P x P float64 would exceed ewc_ref.curvature.MAX_DENSE_BYTES (2 GiB); the message
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
    return _hessian(model, lik, x, y, chunk_size)


# Importing this module binds `ewc_ref.hessian` to the module itself, so the package cannot
# also export a function of that name: at package level the dense Hessian is `hessian_full`
# (the docs/file-format.md estimator 'hessian' with structure 'full').
hessian_full = hessian


def hessian_diag(model: MLP, lik: Likelihood, x, y, chunk_size: int | None = None) -> np.ndarray:
    """diag(H) : (P,), H_ii = 1/N sum_n d^2 l_n / d theta_i^2, exactly.

    Same P Hessian-vector products as `hessian`, keeping only e_i^T H e_i: memory
    O(chunk_size * P) instead of P^2, cost unchanged (about 2 P forward passes). Note that
    diag(H) can have negative entries, unlike every Fisher diagonal.
    """
    x, y = check_model_data(model, lik, x, y)
    return _hessian_diag(model, lik, x, y, _check_chunk_size(chunk_size))


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
    return _hessian_blocks(model, lik, x, y, chunk_size)


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
        U_l, u_b = _layer_directions(model, U, l)                          # (K1, out, in)
        W_l, w_b = _layer_directions(model, W, l)                          # (K2, out, in)
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
    chunk = chunk_size or int(max(1, _CHUNK_NUMBERS // max(1, P * n * max(model.layer_sizes))))
    residual = np.empty((P, P), dtype=np.result_type(model.theta, weights))
    for start in range(0, P, chunk):
        stop = min(start + chunk, P)
        T = _output_second_derivatives(model, cache, eye[start:stop], eye)  # (K1, P, N, C)
        residual[start:stop] = np.einsum("ijnc,nc->ij", T, weights)
    return residual


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
    Second term of the decomposition (1) in the module docstring. Cost: all P^2 pairs of
    unit directions through the second-order forward pass, about 3 P^2 forward passes' worth
    of arithmetic (batched): a reference for small models only. Memory check as in `hessian`.
    """
    x, y = check_model_data(model, lik, x, y)
    chunk_size = _check_chunk_size(chunk_size)
    P = model.n_params
    _check_dense_size(P * P, f"the dense P x P Hessian residual for P = {P} parameters")
    return _hessian_residual(model, lik, x, y, chunk_size)
