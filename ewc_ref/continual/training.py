"""Minibatch SGD (with optional momentum) on the explicit MLP, restricted to a "head view".

Head view: the multi-head / shared-head design
----------------------------------------------
The network always has C = 10 outputs. A task uses a subset of them, ``columns`` (K,) (its
*head*: the task's two classes in task-incremental learning, the classes seen so far in
class-incremental, all ten in domain-incremental; ewc_ref.continual.datasets). For a task we use the
sub-network whose output is

    f_head(x) = f(x)[:, columns]   (N, K),

i.e. the same MLP with the last layer's rows (weights and biases) restricted to ``columns``
(:func:`head_view`). Its categorical likelihood is the softmax over the K active logits, with
labels re-indexed to positions 0..K-1 in ``columns``. Consequently, for every quantity of a task:

- loss: L(theta) = 1/N sum_n [logsumexp(f_head(x_n)) - f_head(x_n)[y_n]];
- gradient: that of the sub-network, mapped into the full (P,) vector; the rows of the last
  layer that are not in ``columns`` (other heads) get exactly zero;
- Fisher: the Fisher of the sub-network (any estimator/structure of ewc_ref.fisher), embedded
  in the full parameter space with zeros for the other heads' rows and their cross terms
  (:func:`embed_curvature`). So EWC never anchors an inactive head, and a head's Fisher is the
  one its own softmax defines.

:func:`head_loss_and_grad` computes the loss and gradient on the full model by zeroing the
inactive output columns of d l / d f before back-propagation; :func:`head_view` is its naive twin
(an explicit smaller MLP), and tests/continual/test_training.py checks that they agree to round-off.

Training (:func:`train_task`): fixed epochs, no early stopping. Each epoch draws one permutation
of the N examples from the given Generator and visits consecutive minibatches of size B (the
last one partial). Per minibatch b the objective is the minibatch MEAN loss plus the penalty,
J_b(theta) = 1/|b| sum_{n in b} l_n(theta) + Omega(theta), and the update is PyTorch's SGD:

    v <- mu v + grad J_b(theta),    theta <- theta - eta v       (mu = 0: plain SGD).

Everything is float64 and sequential, so a run is bit-identical given the seed.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_generator, check_positive_int
from ..model.likelihoods import Categorical
from ..model.mlp import MLP

_CATEGORICAL = Categorical()


# ----------------------------------------------------------------------------- head view
def check_columns(columns, n_outputs: int, name: str = "columns") -> np.ndarray:
    """Validate a head: distinct integer output indices in 0..n_outputs-1, at least one."""
    columns = np.asarray(columns)
    if columns.ndim != 1 or columns.size == 0 or columns.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected a non-empty 1-d array of integer output indices, got {columns!r}")
    if columns.min() < 0 or columns.max() >= n_outputs or np.unique(columns).size != columns.size:
        raise ValueError(f"{name}: expected distinct indices in 0..{n_outputs - 1}, got {columns.tolist()}")
    return columns.astype(np.intp)


def head_view(model: MLP, columns) -> tuple[MLP, np.ndarray]:
    """The sub-network with output f(x)[:, columns], and where its parameters sit in theta.

    Parameters
    ----------
    model : MLP with P parameters and C outputs
    columns : (K,) output indices

    Returns
    -------
    head : MLP, same hidden layers (copied), last layer restricted to rows ``columns``;
        P_head parameters
    index : (P_head,) int, positions in model.theta: head.theta == model.theta[index]
    """
    columns = check_columns(columns, model.n_outputs)
    last = model.n_layers - 1
    weights = [w.copy() for w in model.weights[:-1]] + [model.weights[last][columns]]
    biases = [None if b is None else b.copy() for b in model.biases[:-1]]
    biases.append(None if model.biases[last] is None else model.biases[last][columns])
    head = MLP(weights, biases, model.activation.name, module_names=model.module_names)
    n_in = model.shapes[last][1]
    pieces = [np.arange(model.layer_slices[l].start, model.layer_slices[l].stop) for l in range(last)]
    pieces.append((model.weight_slices[last].start + columns[:, None] * n_in + np.arange(n_in)).ravel())
    if model.bias_slices[last] is not None:
        pieces.append(model.bias_slices[last].start + columns)
    return head, np.concatenate(pieces)


class _Embedded:
    """E F_head E^T for the embedding E : R^{P_head} -> R^P that scatters into positions `index`."""

    def __init__(self, operator, index: np.ndarray, n_params: int):
        self.operator, self.index, self.n_params = operator, index, n_params

    def matvec(self, v: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_params, dtype=v.dtype)
        out[self.index] = self.operator.matvec(v[self.index])
        return out


def embed_curvature(curvature, index: np.ndarray, n_params: int):
    """Map a head's curvature back to the full parameter vector, zeros elsewhere.

    A (P_head,) diagonal becomes a (P,) diagonal; a (P_head, P_head) matrix a (P, P) matrix;
    an object with ``matvec`` an object whose matvec is E F_head E^T v.
    """
    if hasattr(curvature, "matvec") and not isinstance(curvature, np.ndarray):
        return _Embedded(curvature, index, n_params)
    curvature = np.asarray(curvature)
    if curvature.shape == index.shape:
        out = np.zeros(n_params, dtype=curvature.dtype)
        out[index] = curvature
        return out
    if curvature.shape == index.shape * 2:
        out = np.zeros((n_params, n_params), dtype=curvature.dtype)
        out[np.ix_(index, index)] = curvature
        return out
    raise ValueError(f"curvature: expected shape {index.shape} or {index.shape * 2} for the head, got {curvature.shape}")


def _head_loss_and_grad(model: MLP, x, y, columns):
    f, cache = model.forward(x)
    f_head = f[:, columns]
    n = x.shape[0]
    df = np.zeros_like(f)
    df[:, columns] = _CATEGORICAL.grad(f_head, y) / n
    return float(_CATEGORICAL.nll(f_head, y).mean()), model.backward(cache, df)


def _check_head_data(model, x, y, columns):
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__}")
    columns = check_columns(columns, model.n_outputs)
    x = model.check_input(x)
    if x.shape[0] == 0:
        raise ValueError(f"x: expected at least one example, got shape {x.shape}")
    y = _CATEGORICAL.check_labels(y, x.shape[0], columns.size, "y")
    return x, y, columns


def head_loss_and_grad(model: MLP, x, y, columns) -> tuple[float, np.ndarray]:
    """Mean categorical loss of the head ``columns`` and its gradient in the full (P,) vector.

    Parameters
    ----------
    x : (N, D); y : (N,) labels as positions 0..K-1 in ``columns``; columns : (K,)

    Returns
    -------
    loss : 1/N sum_n [logsumexp(f(x_n)[columns]) - f(x_n)[columns[y_n]]]
    grad : (P,), zero in the last-layer rows outside ``columns``
    """
    return _head_loss_and_grad(model, *_check_head_data(model, x, y, columns))


def head_accuracy(model: MLP, x, y, columns) -> float:
    """Fraction of examples whose argmax over the logits ``columns`` is y (a position in columns).

    Labels y = -1 (a class outside the head, e.g. a class-incremental task not yet seen) count
    as wrong: they can never be predicted.
    """
    f = model.predict(x)[:, check_columns(columns, model.n_outputs)]
    return float(np.mean(np.argmax(f, axis=1) == np.asarray(y)))


def head_fisher(model: MLP, x, y, columns, estimator: str = "exact", structure: str = "diag", rng=None, **options):
    """The curvature of the head ``columns`` (its sub-network), embedded in the full parameter space.

    Calls ewc_ref.fisher on :func:`head_view` with the categorical likelihood and returns its
    diagonal ``.diagonal`` embedded as a (P,) vector for structure='diag', otherwise an object with
    ``matvec`` (E F_head E^T). Parameters as ewc_ref.fisher; y are positions in ``columns``.
    """
    x, y, columns = _check_head_data(model, x, y, columns)
    head, index = head_view(model, columns)
    curvature = _fisher(head, x, y, estimator=estimator, structure=structure, rng=rng, **options)
    if structure == "diag":
        return embed_curvature(np.asarray(curvature.diagonal), index, model.n_params)
    return embed_curvature(curvature, index, model.n_params)


def _fisher(model, x, y, **kwargs):
    from ..curvature.estimate import (
        fisher,  # on first use: keeps `import ewc_ref.continual.training` light
    )

    return fisher(model, _CATEGORICAL, x, y, **kwargs)


# ----------------------------------------------------------------------------- training
def train_task(
    model: MLP,
    x,
    y,
    columns,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.0,
    penalty=None,
    rng=None,
    progress=None,
) -> list[float]:
    """Train `model` in place on one task by minibatch SGD: minibatch mean head loss + penalty.

    Parameters
    ----------
    model : MLP, updated in place (model.theta)
    x : (N, D); y : (N,) positions in ``columns``; columns : (K,) the head
    epochs : number of passes over the data (fixed, no early stopping)
    batch_size : B, last minibatch of an epoch partial
    lr : eta > 0; momentum : mu in [0, 1)
    penalty : None or an object with ``value_and_grad(theta) -> (float, (P,))`` (ewc_ref.continual.penalty.Penalty)
    rng : numpy Generator or seed; one ``rng.permutation(N)`` per epoch
    progress : None or callable(epoch, epochs, mean_objective) called after each epoch

    Returns
    -------
    history : per epoch, the mean over minibatches of J_b(theta) (loss + penalty) seen during it
    """
    x, y, columns = _check_head_data(model, x, y, columns)
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: expected a finite number > 0, got {lr}")
    momentum = float(momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1), got {momentum}")
    if penalty is not None and not hasattr(penalty, "value_and_grad"):
        raise TypeError(f"penalty: expected None or an object with value_and_grad, got {type(penalty).__name__}")
    rng = as_generator(rng)
    _check_penalty_step(penalty, lr)
    # A Penalty validated its inputs once; its private twin skips the per-step checks.
    penalty_fn = None if penalty is None else getattr(penalty, "_value_and_grad", penalty.value_and_grad)
    return _train_task(model, x, y, columns, epochs, batch_size, lr, momentum, penalty_fn, rng, progress)


class TrainingDiverged(ValueError):
    """The objective became NaN or inf: the step size is too large for the curvature.

    Gradient descent on a quadratic with curvature lambda F_i is stable only if
    eta lambda F_i < 2 (and likewise for the loss curvature), so a large lambda needs a small lr.
    """


def _check_penalty_step(penalty, lr: float) -> None:
    """Refuse a step size for which gradient descent on a diagonal penalty alone diverges.

    Along coordinate i the penalty is lambda/2 F_i (theta_i - theta*_i)^2 and a gradient step
    multiplies theta_i - theta*_i by (1 - lr lambda F_i): it grows without bound iff
    lr lambda F_i > 2 (the loss only adds curvature near a minimum). For a sum of penalties F is
    their summed diagonal.
    """
    if penalty is None or not hasattr(penalty, "curvature_diagonal"):
        return
    diagonal = penalty.curvature_diagonal()
    if diagonal is None or diagonal.size == 0:
        return
    stiffness = lr * penalty.lam * float(np.max(diagonal))
    if stiffness > 2.0:
        raise TrainingDiverged(
            f"lambda: gradient descent on the penalty is unstable: lr * lambda * max_i F_i = {stiffness:.3g} > 2 "
            f"(lr {lr:g}, lambda {penalty.lam:g}, max F {float(np.max(diagonal)):.3g}); use lambda < "
            f"{2.0 / (lr * float(np.max(diagonal))):.3g} or a smaller learning rate"
        )


def _train_task(model, x, y, columns, epochs, batch_size, lr, momentum, penalty_fn, rng, progress):
    n = x.shape[0]
    velocity = np.zeros_like(model.theta)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(n)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            with np.errstate(over="ignore", invalid="ignore"):
                loss, grad = _head_loss_and_grad(model, x[batch], y[batch], columns)
                if penalty_fn is not None:
                    value, penalty_grad = penalty_fn(model.theta)
                    loss += value
                    grad += penalty_grad
            if not np.isfinite(loss):
                raise TrainingDiverged(
                    f"lr: training diverged (objective {loss}) in epoch {epoch + 1}; gradient descent needs "
                    f"lr * lambda * max F < 2: lower the lambda or the learning rate ({lr})"
                )
            velocity = momentum * velocity + grad if momentum else grad
            model.theta -= lr * velocity  # in place: the layer views see the update
            total += loss
            batches += 1
        history.append(total / batches)
        if progress is not None:
            progress(epoch + 1, epochs, history[-1])
    return history


def evaluate(model: MLP, scenario, after: int) -> np.ndarray:
    """Row `after` of the accuracy matrix: accuracy on every task's test set after training task `after`.

    Returns (T,) with entry j = accuracy on task j using scenario.test_columns(after, j).
    """
    from .datasets import head_labels

    row = np.empty(scenario.n_tasks)
    for j, task in enumerate(scenario.tasks):
        columns = scenario.test_columns(after, j)
        row[j] = head_accuracy(model, task.x_test, head_labels(task.y_test, columns), columns)
    return row
