"""Forward/backward pairs for the two layer types of an MLP (cs231n style).

Every ``*_forward`` returns ``(out, cache)`` and every ``*_backward`` takes the
upstream gradient and that cache. Caches are plain tuples of arrays, so a reader
can stop after any layer and look at them.

Upstream gradients may carry extra *leading* axes, ``dout : (..., N, out)``:
this is how the exact Fisher back-propagates C "pseudo-gradients" (columns of
a factor of Lambda) in one pass, and how the MC Fisher back-propagates S
sampled labels, without copying the forward cache.
"""

from __future__ import annotations

import numpy as np

from .activations import Activation


def affine_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """z = x W^T + b.

    Parameters
    ----------
    x : (N, in)
    weight : (out, in)
    bias : (out,) or None

    Returns
    -------
    z : (N, out)
    cache : (x, weight)
    """
    z = x @ weight.T
    if bias is not None:
        z += bias  # z is the product's fresh array: no second (N, out) array
    return z, (x, weight)


def affine_backward(dz: np.ndarray, cache, has_bias: bool, input_grad: bool = True):
    """Gradients of a scalar sum_n s(z_n) through z = x W^T + b, summed over n.

    Parameters
    ----------
    dz : (..., N, out) upstream gradient d s / d z
    cache : (x : (N, in), weight : (out, in))
    has_bias : whether to return db
    input_grad : whether to compute dx (the first layer's is never needed)

    Returns
    -------
    dx : (..., N, in) = dz W, or None
    dW : (..., out, in) = sum_n dz_n x_n^T
    db : (..., out) = sum_n dz_n, or None
    """
    x, weight = cache
    dx = dz @ weight if input_grad else None
    dW = np.swapaxes(dz, -1, -2) @ x
    db = dz.sum(axis=-2) if has_bias else None
    return dx, dW, db


def affine_backward_per_sample(dz: np.ndarray, cache, has_bias: bool):
    """Per-example parameter gradients of z = x W^T + b (no sum over n).

    Parameters
    ----------
    dz : (..., N, out)
    cache : (x : (N, in), weight)

    Returns
    -------
    dW : (..., N, out, in) with dW[..., n] = dz_n x_n^T (an outer product per example)
    db : (..., N, out), or None
    """
    x, _ = cache
    dW = dz[..., :, :, None] * x[:, None, :]
    return dW, (dz if has_bias else None)


def activation_forward(z: np.ndarray, activation: Activation):
    """a = phi(z) elementwise. Returns a : (N, d) and cache (z, a, activation)."""
    a = activation.value(z)
    return a, (z, a, activation)


def activation_backward(da: np.ndarray, cache) -> np.ndarray:
    """dz = da * phi'(z), for da : (..., N, d)."""
    z, a, activation = cache
    return da * activation.derivative(z, a)
