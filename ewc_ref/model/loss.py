"""The training loss and its gradients: l_n, the mean loss, per-example gradients.

Convention (docs/file-format.md): l_n = -log p(y_n | f(x_n; theta)) summed over output
dimensions, and the training loss is L(theta) = 1/N sum_n l_n (a mean).
"""

from __future__ import annotations

import numpy as np

from .._validate import finite_or_refused
from .likelihoods import Likelihood
from .mlp import MLP


def check_model_data(model: MLP, lik: Likelihood, x, y, x_name: str = "x", y_name: str = "y"):
    """Validate (model, lik, x, y) at the public edge; return trusted (x, y)."""
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__}")
    if not isinstance(lik, Likelihood):
        raise TypeError(f"lik: expected an ewc_ref Likelihood, got {type(lik).__name__}")
    x = model.check_input(x, x_name)
    if x.shape[0] == 0:
        raise ValueError(f"{x_name}: expected at least one example, got shape {x.shape}")
    y = lik.check_labels(y, x.shape[0], model.n_outputs, y_name)
    return x, y


# The *_unchecked functions are the part's compute: they trust (x, y) as returned by
# check_model_data, so callers that validated once (gradcheck, the naive twins) do not repeat it.
def per_example_losses_unchecked(model: MLP, lik: Likelihood, x, y) -> np.ndarray:
    """l_n : (N,) for trusted inputs."""
    return lik.nll(model.forward(x)[0], y)


def loss_and_grad_unchecked(model: MLP, lik: Likelihood, x, y):
    """(L, grad L : (P,)) for trusted inputs; L is a 0-d array."""
    f, cache = model.forward(x)
    n = x.shape[0]
    return lik.nll(f, y).mean(), model.backward(cache, lik.grad(f, y) / n)


def per_sample_gradients_unchecked(model: MLP, lik: Likelihood, x, y) -> np.ndarray:
    """G : (N, P) for trusted inputs."""
    f, cache = model.forward(x)
    return model.per_sample_grads(cache, lik.grad(f, y))


@finite_or_refused
def per_example_losses(model: MLP, lik: Likelihood, x, y) -> np.ndarray:
    """l_n = -log p(y_n | f(x_n)), shape (N,)."""
    x, y = check_model_data(model, lik, x, y)
    return per_example_losses_unchecked(model, lik, x, y)


@finite_or_refused
def mean_loss(model: MLP, lik: Likelihood, x, y) -> float:
    """L(theta) = 1/N sum_n l_n."""
    x, y = check_model_data(model, lik, x, y)
    return float(per_example_losses_unchecked(model, lik, x, y).mean())


@finite_or_refused
def loss_and_grad(model: MLP, lik: Likelihood, x, y):
    """(L(theta), grad L(theta)) with grad : (P,) = 1/N sum_n g_n, one forward and one backward pass."""
    x, y = check_model_data(model, lik, x, y)
    loss, grad = loss_and_grad_unchecked(model, lik, x, y)
    return float(loss), grad


@finite_or_refused
def per_sample_gradients(model: MLP, lik: Likelihood, x, y) -> np.ndarray:
    """G : (N, P), G[n] = g_n = d l_n / d theta = J_n^T (d l_n / d f).

    Memory N*P; for large N use the streamed estimators of ewc_ref.fisher instead.
    """
    x, y = check_model_data(model, lik, x, y)
    return per_sample_gradients_unchecked(model, lik, x, y)
