"""Finite-difference checks of the analytic derivatives, shipped to users.

Central differences, d F / d theta_i ~ (F(theta + h e_i) - F(theta - h e_i)) / (2 h), always
in float64 (a float32 model is upcast, because float32 differences cannot resolve 1e-6).

Error model. The difference quotient differs from the derivative by two terms:

* truncation, h^2 / 6 |F'''(xi)| (Taylor's theorem with the Lagrange remainder): about
  1.7e-11 |F'''| at the default h = 1e-5;
* round-off, about eps_mach |F| / h: each of F(theta + h e_i) and F(theta - h e_i) carries an
  absolute error of a few eps_mach times the magnitude of the terms summed into F (the losses
  l_n, or the outputs f), and the difference divides it by 2 h: about 2.2e-11 |F| at h = 1e-5.

Neither term is proportional to the derivative. Round-off scales with the VALUE of F, so a
gradient that is small next to the loss (a model near a minimum: |grad| ~ 1e-6, |loss| ~ 1)
has a finite-difference error that is large next to the gradient although both are correct;
dividing by the gradient scale alone reported 4.9e-6 for a correct gradient (issue 12). The
checks therefore divide by the larger of the derivative's and the value's scale:

    error = max_i |a_i - n_i| / max(max|a|, max|n|, |F|)

with |F| the magnitude of the terms F sums: mean_n |l_n| for the mean loss, max_n |l_n| for the
per-example losses, max |f| for the network outputs. Round-off then contributes at most
~eps_mach / h ~ 2e-11 and truncation ~1.7e-11 |F'''| / scale. A tolerance of 1e-6 leaves over
four orders of magnitude for third derivatives larger than the scale and for round-off
amplified through the forward pass, and still fails a wrong gradient (an entry zeroed, a 1%
factor) unless that gradient is below ~1e-4 of the loss, which no central difference with
this h resolves anyway (tests/model/test_mlp.py has both the near-minimum case and the wrong ones).

The error is normwise, not entrywise: entrywise relative error is meaningless for entries that
are zero (dead ReLU units, absent inputs). Near a ReLU kink (|z| < h * scale) differences are
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


def relative_error(analytic: np.ndarray, numeric: np.ndarray, value_scale: float = 0.0) -> float:
    """max |a - n| / max(max |a|, max |n|, value_scale); 0 when the denominator is zero.

    `value_scale` is the magnitude of the differenced function's value (module docstring:
    the round-off of a central difference scales with it, not with the derivative).
    """
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"analytic and numeric: shapes differ, {analytic.shape} vs {numeric.shape}")
    scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0), float(value_scale))
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
    """Error of the analytic gradient of the mean loss against central differences, relative
    to max(gradient scale, mean_n |l_n|) (module docstring)."""
    x, y = check_model_data(model, lik, x, y)
    model, x = _as_float64(model, x)
    analytic = loss_and_grad_unchecked(model, lik, x, y)[1]
    numeric = numerical_jacobian(lambda t: loss_and_grad_unchecked(model.with_theta(t), lik, x, y)[0], model.theta, h)
    loss_scale = float(np.mean(np.abs(per_example_losses_unchecked(model, lik, x, y))))
    return relative_error(analytic, numeric, loss_scale)


def check_per_sample_gradients(model: MLP, lik: Likelihood, x, y, h: float = 1e-5) -> float:
    """Error of G : (N, P), g_n = d l_n / d theta, against central differences of l_n,
    relative to max(gradient scale, max_n |l_n|) (module docstring)."""
    x, y = check_model_data(model, lik, x, y)
    model, x = _as_float64(model, x)
    analytic = per_sample_gradients_unchecked(model, lik, x, y)
    numeric = numerical_jacobian(lambda t: per_example_losses_unchecked(model.with_theta(t), lik, x, y), model.theta, h)
    loss_scale = float(np.max(np.abs(per_example_losses_unchecked(model, lik, x, y))))
    return relative_error(analytic, numeric, loss_scale)


def check_jacobian(model: MLP, x, h: float = 1e-5) -> float:
    """Error of J : (N, C, P) against central differences of the outputs, relative to
    max(Jacobian scale, max |f|) (module docstring)."""
    x = model.check_input(x)
    model, x = _as_float64(model, x)
    numeric = numerical_jacobian(lambda t: model.with_theta(t).forward(x)[0], model.theta, h)
    output_scale = float(np.max(np.abs(model.forward(x)[0])))
    return relative_error(model.jacobian(x), numeric, output_scale)
