"""THEIR PyTorch EWC penalty, named: evaluated by autograd at well-placed points, then ``er.diagnose_penalty``.

The NumPy core (verify/penalty_fit.py, continual/penalty_names.py) reads a penalty from its value
and gradient at M parameter vectors. Here those come from the user's own torch penalty, a callable
that takes the current module (or its parameters) and returns a scalar tensor, the way a training
loop adds it to the loss::

    def ewc_loss(net):                       # e.g. Avalanche's EWCPlugin.before_backward, as a function
        return lam * sum((F[n] * (p - anchor[n]) ** 2).sum() for n, p in net.named_parameters())

    d = ep.diagnose_penalty([net_after_task_1, state_dict_2], [loader_1, (x2, y2)], ewc_loss,
                            model=net, likelihood=nn.CrossEntropyLoss(), lam=lam)

The points (``penalty_points``, P the number of parameters, T past tasks, J directions):

    theta*_1 .. theta*_T                                the past optima           (T, P)
    (theta*_t + theta*_{t+1}) / 2,  t = 1 .. T - 1       their midpoints           (T - 1, P)
    theta*_T + s delta_j,  theta*_T + 2 s delta_j        lines, delta_j ~ N(0, I)  (2 J, P)

M = 2 T - 1 + 2 J >= 3 (the core's ``probe_points`` makes the lines). Every coordinate takes several
values, so (P2) of penalty_fit.py has M - 2 residuals to test quadraticity with, and each midpoint
and each line is a collinear, equally spaced triple, so the midpoint test tells a quadratic with
off-diagonal curvature from a non-quadratic penalty. The points are rounded to the module's dtype
(a float32 module is evaluated, and reported, at float32 points); value and gradient come back in
the flat order of the model file ``ep.save`` writes (docs/file-format.md, section 4). The round-off
threshold is float32's (1e-4) for a float32 module, else float64's (1e-8); a value rounded to float32
beside float64 gradients is judged at float32's round-off by the core (``ROUNDED_VALUE_TOL``).

The module is changed in place while the penalty is evaluated (its parameters copied in, so the
penalty sees the module it expects) and restored exactly afterwards, also on error: the parameter
values bit for bit, their ``.grad`` (a penalty may call backward), ``requires_grad``, buffers and
train/eval flags (``_restored``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_savez
from ..continual.penalty_names import diagnose_penalty as reference_diagnose_penalty
from ..continual.penalty_report import PenaltyDiagnosis
from ..model.mlp import MLP
from ..recorder import Recorder
from ..verify.penalty_fit import PENALTY_TOL, probe_points
from . import as_float64, is_array, likelihood_from, mlp_positions, model_rows, to_numpy
from .trace import TracedMLP, trace_mlp

#: What the penalty is called with: the module, dict(module.named_parameters()), list(module.parameters()).
TAKES = ("module", "named_parameters", "parameters")


def penalty_points(optima: list[np.ndarray], scale: float = 0.1, directions: int = 3, rng=0) -> np.ndarray:
    """(2 T - 1 + 2 J, P) points: the T optima (P,), their T - 1 consecutive midpoints, then the
    lines theta*_T + s delta_j, theta*_T + 2 s delta_j of ``probe_points(theta*_T, scale, J, rng)``."""
    midpoints = [0.5 * (a + b) for a, b in zip(optima[:-1], optima[1:], strict=True)]
    lines = probe_points(optima[-1], scale, directions, rng)[1:]  # its first row is theta*_T itself
    return np.stack([*optima, *midpoints, *lines])


def penalty_samples(models, penalty, *, model, takes: str = "module", scale: float = 0.1, directions: int = 3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """THEIR penalty's value and gradient by autograd at ``penalty_points`` of the past optima.

    Parameters
    ----------
    models : the past tasks' weights, oldest first: nn.Modules of `model`'s architecture or their
        state_dicts (tensors, arrays or Avalanche ParamData by parameter name); one alone is one task
    penalty : callable, THEIR penalty: ``penalty(model)`` (or its parameters, `takes`) -> a scalar
        tensor computed from them with autograd
    model : nn.Module the penalty is evaluated on (a chain of nn.Linear, as ``to_model`` reads);
        changed during the evaluation and restored exactly, also on error
    takes : 'module' (default), 'named_parameters' (a dict {name: parameter}) or 'parameters' (a
        list in ``parameters()`` order): what `penalty` is called with
    scale, directions, seed : s, J and the seed of the random directions delta_j of the lines

    Returns
    -------
    theta : (M, P) float64, the points (rounded to the module's dtype), M = 2 T - 1 + 2 J
    value : (M,) float64, penalty(theta_m)
    grad : (M, P) float64, its gradient; columns in the flat order of the model file ``ep.save``
        writes (docs/file-format.md, section 4), the layout of a penalty file (section 11)

    Raises
    ------
    TypeError / ValueError naming `models`, `model`, `penalty` (not callable; at a point: not a
    scalar tensor, not connected to the parameters, not finite), `takes`, `scale`, `directions`.
    """
    _check_penalty(penalty, takes, seed)
    _, current, optima, _ = _past_models(models, model)
    return _samples(penalty, model, takes, current, [m.theta.astype(np.float64) for m in optima],
                    scale, directions, seed)[:3]


def diagnose_penalty(models, data, penalty, *, model, likelihood, takes: str = "module", scale: float = 0.1,
                     directions: int = 3, seed: int = 0, **options) -> PenaltyDiagnosis:
    """Name THEIR torch penalty: anchor, curvature, combination over tasks and lambda (``er.diagnose_penalty``).

    Parameters
    ----------
    models : the past tasks' weights, oldest first (nn.Modules or state_dicts; ``penalty_samples``)
    data : one entry per past task, oldest first, each (x, y) tensors, a Recorder or a loader
        (``rows``), the rows in the order THEIR Fisher iterated over them. One task's entry may be
        given bare. A plain list is ALWAYS one entry per task, never one task's batches (ep.fisher's
        form): give a task's batches as a list inside the list, ``[[(x1, y1), (x2, y2)]]``; more
        (x, y) pairs than tasks are refused as ambiguous
    penalty : callable, THEIR penalty taking `model` (or its parameters, `takes`) -> a scalar tensor
    model : the nn.Module `penalty` is evaluated on; restored exactly afterwards, also on error
    likelihood : a name, a Likelihood or the torch loss their Fisher used; required
    takes, scale, directions, seed : as ``penalty_samples`` (which points, what the penalty takes)
    **options : ``er.diagnose_penalty``'s lam (THEIR lambda), gamma, batch_sizes, tol, rng, progress

    Returns
    -------
    PenaltyDiagnosis, the object ``er.diagnose_penalty`` and ``ewc-ref diagnose-penalty`` return
    (``.report()``, ``.to_dict()``), computed in float64 at the past weights.
    """
    _check_penalty(penalty, takes, seed)
    if likelihood is None:
        raise TypeError("likelihood: required (a name, an ewc_ref Likelihood or the torch loss, e.g. nn.CrossEntropyLoss())")
    lik = likelihood_from(likelihood)
    traced, current, optima, modules = _past_models(models, model)
    if isinstance(data, Recorder | torch.utils.data.DataLoader) or (
            isinstance(data, tuple) and len(data) == 2 and all(is_array(v) for v in data)):
        data = [data]
    if isinstance(data, Mapping) or not isinstance(data, list | tuple) or len(data) != len(optima):
        raise ValueError(_data_mismatch(data, len(optima)))
    # a state_dict has no forward of its own: the rows are checked on `model`, whose trace built its MLP
    task_rows = [model_rows(model, current, traced, rows_t) if module is None else model_rows(module, optimum, traced, rows_t)
                 for module, optimum, rows_t in zip(modules, optima, data, strict=True)]
    references = [as_float64(m) for m in optima]
    *samples, tol = _samples(penalty, model, takes, current, [m.theta for m in references], scale, directions, seed)
    options.setdefault("tol", tol)
    return reference_diagnose_penalty(references, lik, [(r.x, r.y) for r in task_rows], tuple(samples), **options)


def _data_mismatch(data, tasks: int) -> str:
    """The error for `data` that is not one entry per past task, naming the ambiguous list of batches."""
    if not isinstance(data, list | tuple) or isinstance(data, Mapping):
        return f"data: expected one (x, y), Recorder or loader per past task ({tasks}), got {type(data).__name__}"
    pairs = all(isinstance(d, tuple | list) and len(d) == 2 and all(is_array(v) for v in d) for d in data)
    if pairs and len(data) > tasks:
        return (f"data: expected one entry per past task ({tasks}), oldest first; got a plain list of {len(data)} (x, y) "
                "pairs, ambiguous (one task's batches, or one (x, y) per task?): a list is always one entry per task, "
                "so give a task's batches as a list inside the list, [[(x1, y1), (x2, y2), ...]], or as a Recorder "
                "or DataLoader")
    return f"data: expected one (x, y), Recorder or loader per past task ({tasks}), got {len(data)}"


def save_penalty(path, models, penalty, *, model, takes: str = "module", scale: float = 0.1, directions: int = 3,
                 seed: int = 0) -> float:
    """Write THEIR penalty file (theta, value, grad; docs/file-format.md, section 11) for ``ewc-ref
    diagnose-penalty``, at the points ``penalty_samples`` uses (atomic). Save the past models with
    ``ep.save`` and their data with ``ep.save_data``: the columns are in those model files' order.

    Returns the round-off threshold ``diagnose_penalty`` uses for these samples (``_samples``): 1e-4
    for a float32 module, else 1e-8 -- the command line's default for the file too (a float32 value
    of float64 gradients, a float32 accumulator, is recognised from the numbers, as here).
    """
    _check_penalty(penalty, takes, seed)
    _, current, optima, _ = _past_models(models, model)
    theta, value, grad, tol = _samples(penalty, model, takes, current, [m.theta.astype(np.float64) for m in optima],
                                       scale, directions, seed)
    atomic_savez(path, {"theta": theta, "value": value, "grad": grad})
    return tol


# ----------------------------------------------------------------------------- the past tasks
def _past_models(models, model) -> tuple[TracedMLP, MLP, list[MLP], list]:
    """(trace of `model`, its MLP, the past tasks' MLPs in its architecture, each past nn.Module or None)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected the torch nn.Module the penalty is evaluated on, got {type(model).__name__}")
    traced = trace_mlp(model)
    parameters = dict(model.named_parameters())
    dtypes = {p.dtype for p in parameters.values()}
    if not dtypes <= {torch.float32, torch.float64} or len(dtypes) != 1:
        raise ValueError(f"model: parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    current = _mlp(traced, {n: to_numpy(p) for n, p in parameters.items()})
    if isinstance(models, nn.Module | Mapping):
        models = [models]
    if not isinstance(models, list | tuple) or not models:
        raise TypeError("models: expected a list of the past tasks' nn.Modules or state_dicts, got "
                        + ("an empty list" if isinstance(models, list | tuple) else type(models).__name__))
    optima, modules = [], []
    for t, past in enumerate(models):
        if isinstance(past, nn.Module):
            theirs = trace_mlp(past)
            if theirs.activation != traced.activation or [n for n, _ in theirs.linears] != [n for n, _ in traced.linears]:
                raise ValueError(f"models[{t}]: its forward ({theirs.activation}, layers {[n for n, _ in theirs.linears]}) "
                                 f"differs from model's ({traced.activation}, layers {[n for n, _ in traced.linears]})")
            arrays, modules_t = {n: to_numpy(p) for n, p in past.named_parameters()}, past
        elif isinstance(past, Mapping):
            arrays, modules_t = {str(k): to_numpy(v) for k, v in past.items()}, None
        else:
            raise TypeError(f"models[{t}]: expected an nn.Module or a state_dict, got {type(past).__name__}")
        _check_arrays(arrays, parameters, f"models[{t}]")
        optima.append(_mlp(traced, arrays))
        modules.append(modules_t)
    return traced, current, optima, modules


def _check_arrays(arrays: dict, parameters: dict, where: str) -> None:
    """ValueError naming `where` unless `arrays` has exactly the parameters' names, shapes, finite floats."""
    missing, unknown = [n for n in parameters if n not in arrays], sorted(set(arrays) - set(parameters))
    wrong = [f"{n} {arrays[n].shape} (expected {tuple(p.shape)})" for n, p in parameters.items()
             if n in arrays and arrays[n].shape != tuple(p.shape)]
    if missing or unknown or wrong:
        raise ValueError(f"{where}: does not match model's parameters: missing {missing}, unknown {unknown}, "
                         f"wrong shapes {wrong}")
    for name, array in arrays.items():
        if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
            raise ValueError(f"{where}: {name} must hold finite float values, got dtype {array.dtype}")


def _mlp(traced: TracedMLP, arrays: dict) -> MLP:
    """The MLP of the traced architecture with the weights `arrays` {state_dict name: array}."""
    names = [name for name, _ in traced.linears]
    weights = [arrays[f"{name}.weight"] for name in names]
    biases = [None if linear.bias is None else arrays[f"{name}.bias"] for name, linear in traced.linears]
    return MLP(weights, biases, traced.activation, module_names=names)


# ----------------------------------------------------------------------------- the evaluation
def _check_penalty(penalty, takes, seed) -> None:
    if not callable(penalty):
        raise TypeError(f"penalty: expected a callable taking the module (or its parameters) and returning a scalar "
                        f"tensor, got {type(penalty).__name__}")
    if takes not in TAKES:
        raise ValueError(f"takes: expected one of {TAKES}, got {takes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed: expected an integer seed of the random directions, got {seed!r}")


def _samples(penalty, model, takes, current: MLP, optima: list[np.ndarray], scale, directions, seed):
    """(theta, value, grad, tol): the points rounded to the module's dtype, evaluated, in the MLP's flat order,
    and the round-off threshold of the gradients' precision, the module's dtype.

    A float32 value of a float64 module (Avalanche accumulates its penalty in ``torch.tensor(0).float()``)
    has float64 gradients and a value rounded to float32: the core judges such a value against
    float32's round-off by itself (verify/penalty_fit.py, ``ROUNDED_VALUE_TOL``), as it does for the
    same numbers read from a penalty file, so nothing is widened here.
    """
    dtype = next(model.parameters()).dtype
    points = penalty_points(optima, scale, directions, seed)
    points = points.astype(np.float32 if dtype == torch.float32 else np.float64).astype(np.float64)
    order = mlp_positions(current, [n for n, _ in model.named_parameters()], model)  # torch flat i = MLP flat order[i]
    values, torch_grads = _evaluate(penalty, model, takes, points[:, order])
    grads = np.empty_like(torch_grads)
    grads[:, order] = torch_grads
    return points, values, grads, PENALTY_TOL["float32" if dtype == torch.float32 else "float64"]


def _evaluate(penalty, module: nn.Module, takes: str, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value (M,), grad (M, P)) float64 of penalty at each row of points (M, P), in parameters() order."""
    params = list(module.parameters())
    sizes = [p.numel() for p in params]
    values, grads = np.empty(points.shape[0]), np.empty(points.shape)
    with _restored(module):
        for p in params:
            p.requires_grad_(True)
        for m, point in enumerate(points):
            pieces = torch.as_tensor(point, dtype=params[0].dtype, device=params[0].device).split(sizes)
            with torch.no_grad():  # in place: the penalty sees THIS module's parameters, at theta_m
                for p, piece in zip(params, pieces, strict=True):
                    p.copy_(piece.view_as(p))
            argument = {"module": module, "named_parameters": dict(module.named_parameters()),
                        "parameters": params}[takes]
            out = penalty(argument)
            values[m], grads[m] = _value_and_grad(out, params, m)
    return values, grads


def _value_and_grad(out, params: list, m: int) -> tuple[float, np.ndarray]:
    """The scalar `out` and d out / d params (P,) by autograd, or the error naming `penalty` and the point."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"penalty: expected it to return a scalar torch tensor, got {type(out).__name__} at point {m}")
    if out.numel() != 1:
        raise ValueError(f"penalty: expected a scalar tensor, got shape {tuple(out.shape)} at point {m}")
    if out.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"penalty: expected a float32 or float64 tensor, got {out.dtype} at point {m}")
    unconnected = ("penalty: returned a tensor not connected to the module's parameters at point "
                   f"{m} ({{why}}); compute it from the module or parameters it is given, not from copies or .data")
    if not out.requires_grad:
        raise ValueError(unconnected.format(why="requires_grad is False"))
    pieces = torch.autograd.grad(out.reshape(()), params, allow_unused=True)
    if all(g is None for g in pieces):
        raise ValueError(unconnected.format(why="its graph reaches none of them"))
    # a parameter the graph does not reach (a new head, left out) has gradient 0
    grad = torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(-1)
                      for p, g in zip(params, pieces, strict=True)]).detach().cpu().numpy().astype(np.float64)
    value = float(out.detach().cpu().reshape(()))
    if not (np.isfinite(value) and np.all(np.isfinite(grad))):
        raise ValueError(f"penalty: non-finite value or gradient at point {m} (value {value}, "
                         f"{int(np.sum(~np.isfinite(grad)))} non-finite gradient entries)")
    return value, grad


@contextmanager
def _restored(module: nn.Module):
    """Run the block, then put back every parameter value (bit for bit), .grad, requires_grad, buffer
    and train/eval flag of `module` as they were, whether the block returned or raised."""
    params = list(module.parameters())
    saved = [(p.detach().clone(), p.requires_grad, p.grad, None if p.grad is None else p.grad.detach().clone())
             for p in params]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    flags = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, (value, requires_grad, grad, grad_value) in zip(params, saved, strict=True):
                p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = grad  # the same tensor object as before, its values put back
                if grad is not None:
                    grad.copy_(grad_value)
            for b, value in buffers:
                b.copy_(value)
        for m, training in flags:
            m.training = training
