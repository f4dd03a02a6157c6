"""The exact Hessian of the mean loss, by Pearlmutter's R-operator written out layer by layer.

The mean training loss L(theta) = 1/N sum_n l_n (docs/file-format.md) has the Hessian

    H = d^2 L / d theta^2 = 1/N sum_n d^2 l_n / d theta^2                       (P, P)

the matrix of the second-order Taylor expansion of the loss (equivalently of the negative
log posterior) around a trained theta* in equations (6)-(8) of the report, and so the
precision N * H (+ prior precision) of the Laplace approximation. By the chain rule,
with f_n = f(x_n; theta) : (C,), J_n = d f_n / d theta : (C, P), r_n = d l_n / d f_n : (C,)
and Lambda_n = d^2 l_n / d f_n^2 : (C, C),

    H = 1/N sum_n J_n^T Lambda_n J_n  +  1/N sum_n sum_c r_nc d^2 f_c(x_n) / d theta^2
      =            GGN                +               residual                   (L1)

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

The dense forms built from these products (``hessian``, ``hessian_diag``, ``hessian_blocks``)
and the residual of (L1) live in ``dense_hessian``. The residual is computed independently
(`hessian_residual`), without the loss and without any backward pass: the second directional derivatives of the network output,
R_u{R_w{f}} = u^T (d^2 f / d theta^2) w, by a second-order forward pass over pairs of unit
vectors, contracted with r_n / N.

Public functions validate their arguments and name the one that is wrong; the private `_`
twins compute on trusted arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import as_float_array, finite_or_refused
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP, ForwardCache


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


def layer_directions(model: MLP, V: np.ndarray, l: int):
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
        V_l, v_b = layer_directions(model, V, l)                  # (K, out_l, in_l), (K, out_l)
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
            V_l, _ = layer_directions(model, V, l)
            z, a, activation = cache.activation_caches[l - 1]
            da = delta @ W_l                                                # (N, in) = d s / d a_{l-1}
            r_da = r_delta @ W_l + delta @ V_l                              # (K, N, in)
            r_z = r_cache.r_pre_activations[l - 1]                          # (K, N, in)
            r_delta = activation.second_derivative(z, a) * r_z * da + activation.derivative(z, a) * r_da
    return hv


# ----------------------------------------------------------------------------- products
@dataclass
class LossState:
    """What every product with the loss Hessian at (model, x, y) reuses: one forward and one
    backward pass. delta_out = r / N : (N, C), Lambda : (N, C, C), deltas[l] : (N, out_l)."""

    cache: ForwardCache
    delta_out: np.ndarray
    Lambda: np.ndarray
    deltas: list


def loss_state(model: MLP, lik: Likelihood, x: np.ndarray, y) -> LossState:
    """The forward and backward pass at (model, x, y) that `hvp_with_state` reuses; x, y trusted (validated by the caller)."""
    f, cache = model.forward(x)
    n = x.shape[0]
    delta_out = lik.grad(f, y) / n              # d L / d f_n for the MEAN loss: the 1/N is here
    return LossState(cache, delta_out, lik.hessian(f), model.backward_deltas(cache, delta_out))


def hvp_with_state(model: MLP, state: LossState, V: np.ndarray) -> np.ndarray:
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
    return restore(hvp_with_state(model, loss_state(model, lik, x, y), V))


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


@finite_or_refused
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


@finite_or_refused
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
    (P,) or (K, P): G v. G is the first term of the decomposition (L1) of the module docstring
    and equals the exact Fisher for the likelihoods here. Cost: 1 forward + 1 R-forward +
    1 backward pass.
    """
    x, y = check_model_data(model, lik, x, y)
    return _ggn_vector_product(model, lik, x, y, _check_vector(model, v))
