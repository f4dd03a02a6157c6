"""Finite-difference checks of the analytic derivatives, shipped to users.

Central differences, d F / d theta_i ~ (F(theta + h e_i) - F(theta - h e_i)) / (2 h),
have truncation error h^2 |F'''| / 6 and round-off error ~ eps_mach |F| / h; the
default h = 1e-5 balances them near 1e-10 in float64. Checks always run in
float64 (a float32 model is upcast), because float32 differences cannot
resolve 1e-6.

The error reported is normwise relative, max_i |a_i - n_i| / max(max|a|, max|n|):
entrywise relative error is meaningless for entries that are zero (dead ReLU
units, absent inputs). Near a ReLU kink (|z| < h * scale) differences are
invalid; `relu_margin` reports how close the closest pre-activation is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..model.likelihoods import Likelihood
from ..model.loss import (
    check_model_data,
    loss_and_grad_unchecked,
    per_example_losses_unchecked,
    per_sample_gradients_unchecked,
)
from ..model.mlp import MLP


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|); 0 when both are exactly zero."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"analytic and numeric: shapes differ, {analytic.shape} vs {numeric.shape}")
    scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(analytic - numeric)) / scale)


def numerical_jacobian(fun: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central-difference Jacobian of fun : (P,) -> array of shape S; returns (*S, P)."""
    theta = np.asarray(theta, dtype=np.float64)
    columns = []
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        columns.append((np.asarray(fun(theta + step)) - np.asarray(fun(theta - step))) / (2 * h))
    return np.stack(columns, axis=-1)


def _as_float64(model: MLP, x):
    return model.with_theta(model.theta.astype(np.float64)), np.asarray(x, np.float64)


def relu_margin(model: MLP, x) -> float:
    """Smallest |z| over all hidden pre-activations (inf for smooth activations)."""
    if model.activation.name != "relu" or model.n_layers == 1:
        return float("inf")
    _, cache = model.forward(model.check_input(x))
    return float(min(np.min(np.abs(z)) for z in cache.pre_activations[:-1]))


def check_gradients(model: MLP, lik: Likelihood, x, y, h: float = 1e-5) -> float:
    """Relative error of the analytic gradient of the mean loss against central differences."""
    x, y = check_model_data(model, lik, x, y)
    model, x = _as_float64(model, x)
    analytic = loss_and_grad_unchecked(model, lik, x, y)[1]
    numeric = numerical_jacobian(lambda t: loss_and_grad_unchecked(model.with_theta(t), lik, x, y)[0], model.theta, h)
    return relative_error(analytic, numeric)


def check_per_sample_gradients(model: MLP, lik: Likelihood, x, y, h: float = 1e-5) -> float:
    """Relative error of G : (N, P), g_n = d l_n / d theta, against central differences of l_n."""
    x, y = check_model_data(model, lik, x, y)
    model, x = _as_float64(model, x)
    analytic = per_sample_gradients_unchecked(model, lik, x, y)
    numeric = numerical_jacobian(lambda t: per_example_losses_unchecked(model.with_theta(t), lik, x, y), model.theta, h)
    return relative_error(analytic, numeric)


def check_jacobian(model: MLP, x, h: float = 1e-5) -> float:
    """Relative error of J : (N, C, P) against central differences of the outputs."""
    x = model.check_input(x)
    model, x = _as_float64(model, x)
    numeric = numerical_jacobian(lambda t: model.with_theta(t).forward(x)[0], model.theta, h)
    return relative_error(model.jacobian(x), numeric)
