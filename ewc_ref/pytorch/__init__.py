"""The bridge from PyTorch: a torch module, loader and Fisher in, ewc_ref's reference answers out.

The only package of ewc_ref that imports torch (an import-linter contract keeps it so); install
it with ``pip install 'ewc_ref[torch]'``. Everything here converts at the edge and calls the
NumPy core::

    import ewc_ref.pytorch as ep
    loader = ep.Recorder(DataLoader(dataset, batch_size=64, shuffle=True))
    fisher = my_ewc_fisher(net, loader)                      # their loop iterates the recorder
    print(ep.diagnose(net, fisher, loader, likelihood=nn.CrossEntropyLoss()))

``to_model`` reads the network by tracing its forward with torch.fx (``trace_mlp``): a chain of
nn.Linear layers (with or without bias) with one hidden activation (nn.ReLU/Tanh/Sigmoid,
torch.relu/tanh/sigmoid, F.relu/tanh/sigmoid, x.relu()), nn.Identity and eval-mode Dropout
ignored, and a flatten of the input rows before the first layer (x.view(x.size(0), -1),
nn.Flatten, torch.flatten(x, 1)). The module names are kept: a custom module's ``fc1.weight`` or
``body.0.bias`` name its parameters everywhere. Anything else is refused naming the module or
operation and why. As a last guard every call that has data runs the module forward on the rows
and compares with the converted MLP (``check_forward``).

Precision: ``to_model`` keeps the module's dtype (float32 or float64); ``fisher`` and ``diagnose``
compute the reference in float64 at the module's weights (a float32 weight is exact in float64)
and return float64 tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # the optional extra
    raise ImportError("ewc_ref.pytorch needs PyTorch: pip install 'ewc_ref[torch]'") from error

from ..curvature.estimate import fisher as reference_fisher
from ..io import save_data as write_data
from ..io import save_model
from ..model.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Categorical,
    Gaussian,
    Likelihood,
    get_likelihood,
)
from ..model.mlp import MLP
from ..recorder import Recorder
from ..verify.diagnosis import diagnose as reference_diagnose
from .trace import TracedMLP, trace_mlp


# ----------------------------------------------------------------------------- the model
def to_model(module, likelihood) -> tuple[MLP, Likelihood, list[str]]:
    """The ewc_ref MLP of a torch module, its likelihood, and the module's parameter names.

    Parameters
    ----------
    module : torch.nn.Module, an nn.Sequential or any module whose forward is a chain of
        nn.Linear and one kind of activation (module docstring); module names are kept
    likelihood : 'categorical' | 'gaussian' | 'bernoulli', an ewc_ref Likelihood, or a torch loss
        (``likelihood_from``: nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss or their F.* forms)

    Returns
    -------
    model : MLP in the module's dtype (float32 or float64), its Linear layers in forward order,
        parameters named like ``module.named_parameters()``
    lik : Likelihood
    names : the module's parameter names in ``module.parameters()`` order (the order of
        ``parameters_to_vector``; ``model.param_names`` is the same names in forward order)

    Raises
    ------
    TypeError / ValueError naming the module, operation or argument (``trace_mlp``, ``likelihood_from``);
    parameters that are not float32/float64 or of mixed dtypes.
    """
    model, lik, names, _ = _convert(module, likelihood)
    return model, lik, names


def _convert(module, likelihood) -> tuple[MLP, Likelihood, list[str], TracedMLP]:
    """``to_model`` with the trace (whether forward flattens its input rows)."""
    traced = trace_mlp(module)
    lik = likelihood_from(likelihood)
    names = [n for n, _ in module.named_parameters()]
    dtypes = {p.dtype for _, p in module.named_parameters()}
    if not dtypes <= {torch.float32, torch.float64} or len(dtypes) != 1:
        raise ValueError(f"module: parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    weights = [to_numpy(linear.weight) for _, linear in traced.linears]
    biases = [None if linear.bias is None else to_numpy(linear.bias) for _, linear in traced.linears]
    model = MLP(weights, biases, traced.activation, module_names=[name for name, _ in traced.linears])
    return model, lik, names, traced


def likelihood_from(likelihood) -> Likelihood:
    """The ewc_ref likelihood of a name, a Likelihood or a torch loss (any reduction: the likelihood
    is per example; a reduction scales THEIR Fisher, which diagnose reports as the scale).

    nn.CrossEntropyLoss / F.cross_entropy -> categorical; nn.MSELoss / F.mse_loss -> gaussian with
    sigma = 1; nn.BCEWithLogitsLoss / F.binary_cross_entropy_with_logits -> bernoulli. A class
    weight, pos_weight or label smoothing changes the likelihood and is refused.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, a Likelihood or a torch loss, got {likelihood!r}")
        return get_likelihood(likelihood)
    functions = {F.cross_entropy: Categorical, F.mse_loss: Gaussian, F.binary_cross_entropy_with_logits: Bernoulli}
    if likelihood in functions:
        return functions[likelihood]()
    if isinstance(likelihood, nn.CrossEntropyLoss):
        if likelihood.weight is not None or likelihood.label_smoothing != 0:
            raise ValueError("likelihood: CrossEntropyLoss with class weights or label smoothing is not a categorical "
                             "log-likelihood; pass likelihood='categorical' to compare with the plain one")
        return Categorical()
    if isinstance(likelihood, nn.MSELoss):
        return Gaussian(1.0)
    if isinstance(likelihood, nn.BCEWithLogitsLoss):
        if likelihood.weight is not None or likelihood.pos_weight is not None:
            raise ValueError("likelihood: BCEWithLogitsLoss with weight or pos_weight is not a bernoulli log-likelihood")
        return Bernoulli()
    if isinstance(likelihood, nn.NLLLoss | nn.BCELoss):
        raise ValueError(f"likelihood: {type(likelihood).__name__} takes probabilities, so forward would end in a "
                         "(log-)softmax or sigmoid; use CrossEntropyLoss / BCEWithLogitsLoss on the logits")
    raise TypeError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, an ewc_ref Likelihood, nn.CrossEntropyLoss, "
                    f"nn.MSELoss or nn.BCEWithLogitsLoss, got {type(likelihood).__name__}")


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any device, requiring grad or not), ParamData-like (.data) or array-like as an ndarray."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value)
    if hasattr(value, "data"):  # Avalanche's ParamData keeps the tensor in .data
        return to_numpy(value.data)
    return np.asarray(value)


def as_float64(model: MLP) -> MLP:
    """The reference model: the same weights in float64 (float32 values are exact)."""
    return model.with_theta(model.theta.astype(np.float64))


# ----------------------------------------------------------------------------- the data
@dataclass
class Rows:
    """Data as ewc_ref reads it: x (M, d) and y in the order a loop saw them, and the batch sizes
    when that order is the one THEIR loop saw (a Recorder, a list of batches, a non-shuffling DataLoader)."""

    x: np.ndarray
    y: np.ndarray
    batches: np.ndarray | None


def rows(data) -> Rows:
    """Rows of `data`: (x, y) tensors or arrays, a Recorder (after their loop), or a loader / iterable
    of (x, y) batches, iterated once here.

    The batch sizes are kept only when the yielded order is THEIR order: a Recorder, a list or tuple
    of batches, or a DataLoader with a SequentialSampler. A shuffling loader iterated here yields a new
    order, so its rows are used as a sample and its batches dropped (diagnose's shuffled test applies).
    """
    if isinstance(data, tuple) and len(data) == 2 and all(is_array(v) for v in data):
        return Rows(to_numpy(data[0]), to_numpy(data[1]), None)
    if isinstance(data, Recorder):
        return Rows(data.x, data.y, data.batches)
    if isinstance(data, Mapping) or not hasattr(data, "__iter__"):
        raise TypeError(f"data: expected (x, y) tensors, a Recorder or a loader of (x, y) batches, got {type(data).__name__}")
    recorder = Recorder(data)
    for _ in recorder:
        pass
    reproducible = isinstance(data, list | tuple) or (
        isinstance(data, torch.utils.data.DataLoader) and isinstance(data.sampler, torch.utils.data.SequentialSampler)
        and type(data.batch_sampler) is torch.utils.data.BatchSampler)
    return Rows(recorder.x, recorder.y, recorder.batches if reproducible else None)


def is_array(value) -> bool:
    """True for a torch tensor or a NumPy array (a ready batch, not a loader or a list of batches)."""
    return isinstance(value, torch.Tensor | np.ndarray)


def model_rows(module, model: MLP, traced: TracedMLP, data) -> Rows:
    """Rows flattened for `model` (when forward flattens its input), x in float64, the forward checked."""
    got = rows(data)
    x = got.x
    if x.ndim != 2 and not traced.flattens_input:
        raise ValueError(f"data: x has rows of shape {x.shape[1:]}, but forward does not flatten its input; expected (N, {model.n_inputs})")
    check_forward(module, model, x)
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    y = got.y.astype(np.float64) if got.y.dtype.kind == "f" else got.y
    return Rows(flat, y, got.batches)


def check_forward(module, model: MLP, x: np.ndarray, rows_checked: int = 256) -> None:
    """Guard: module(x) == model.predict(x) on the first rows, normwise max|a - b| / max|b| <= 1e-10 in
    float64, 1e-4 in float32 (forward round-off is ~1e-16 resp. 1e-7 times depth x width; a structural
    misreading differs by O(1)). ValueError when they differ (a forward ewc_ref did not read right)."""
    x = x[:rows_checked]
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != model.n_inputs:
        raise ValueError(f"data: x has {flat.shape[1]} features per row, the module's first Linear layer takes {model.n_inputs}")
    parameter = next(module.parameters())
    with torch.no_grad():
        theirs = module(torch.as_tensor(x, dtype=parameter.dtype, device=parameter.device)).detach().cpu().numpy()
    ours = model.predict(flat.astype(model.dtype))
    tolerance = 1e-10 if model.dtype == np.float64 else 1e-4
    scale = max(float(np.max(np.abs(ours), initial=0.0)), np.finfo(np.float64).tiny)
    if theirs.shape != ours.shape or float(np.max(np.abs(theirs - ours), initial=0.0)) > tolerance * scale:
        raise ValueError(f"module: its forward on the data differs from the MLP ewc_ref read from it (shapes "
                         f"{theirs.shape} vs {ours.shape}); forward computes something ewc_ref does not model")


# ----------------------------------------------------------------------------- the answers
def fisher(module, data, estimator: str = "empirical", structure: str = "diag", likelihood=None, *,
           samples: int | None = None, batch_size: int | None = None, rng=None,
           kfac_bias: str | None = None) -> dict:
    """ewc_ref's reference curvature of a torch module, as float64 torch tensors keyed by its names.

    Parameters
    ----------
    module : torch.nn.Module (``to_model``)
    data : (x, y) tensors, a Recorder (after the loop) or a loader (``rows``)
    estimator, structure, samples, rng, kfac_bias : as ``er.fisher`` (estimators' normalisations:
        docs/file-format.md, section 6; every estimator is a mean over the rows)
    likelihood : a name, a Likelihood or a torch loss (``likelihood_from``); required
    batch_size : B for 'batched'; with a Recorder whose batches all have B rows but the last
        (<= B), B is taken from it

    Returns
    -------
    dict of float64 tensors: diag {parameter name: tensor of its shape} in ``named_parameters()``
    order; full {'full': (P, P)} in ``parameters_to_vector`` order; block / kfac the keys of the
    curvature file (``block.<module>``, ``kfac.<module>.A`` ...). Equal to ``er.fisher`` on the
    converted model and rows.
    """
    if likelihood is None:
        raise TypeError("likelihood: required (a name, an ewc_ref Likelihood or the torch loss, e.g. nn.CrossEntropyLoss())")
    model, lik, names, traced = _convert(module, likelihood)
    reference = as_float64(model)
    data_rows = model_rows(module, model, traced, data)
    if estimator == "batched" and batch_size is None and data_rows.batches is not None:
        batch_size = uniform_batch_size(data_rows.batches)
    curvature = reference_fisher(reference, lik, data_rows.x, data_rows.y, estimator=estimator, structure=structure,
                                 samples=samples, batch_size=batch_size, rng=rng, kfac_bias=kfac_bias)
    if structure == "diag":
        arrays = curvature.arrays
        return {name: torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in names}
    if structure == "full":
        order = mlp_positions(reference, names, module)
        return {"full": torch.from_numpy(np.ascontiguousarray(curvature.data[np.ix_(order, order)]))}
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in curvature.to_arrays().items()
            if not key.startswith("__")}


def uniform_batch_size(batches: np.ndarray) -> int:
    b = int(batches[0])
    if np.any(batches[:-1] != b) or batches[-1] > b:
        raise ValueError(f"batch_size: the recorded batches are not B rows each (the last <= B): {batches.tolist()}; "
                         "pass batch_size=")
    return b


def mlp_positions(model: MLP, names: list[str], module) -> np.ndarray:
    """(P,) indices: entry i of a flat vector in the module's parameters() order is entry order[i] in the MLP's."""
    slices = dict(zip(model.param_names, model.param_slices, strict=True))
    return np.concatenate([np.arange(slices[n].start, slices[n].stop) for n in names])


def theirs_arrays(theirs, model: MLP, names: list[str], module):
    """THEIRS converted from torch: {name: array} (diag) or a (P, P) array in the MLP's order.

    A converter, not a reader: tensors become arrays, parameters() order the MLP's, names are checked
    against the module's; ``er.diagnose`` and ``assert_is_estimator`` then read the result with
    ``ewc_ref.curvature.result.read_curvature``, the one reader (its checks run there, once).

    Accepted (duck-typed): a mapping {parameter name: tensor or an object with .data (Avalanche's
    ParamData)}; an object with ``.importances`` (Avalanche's EWCPlugin: {experience: such a
    mapping}, one experience); a list of (name, tensor) pairs (older Avalanche); an object with
    ``.get_diag()`` (nngeometry's PMatDiag: (P,) in parameters() order); a list of tensors in
    parameters() order; a (P,) or (P, P) tensor in parameters() order.
    """
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    if hasattr(theirs, "importances") and not isinstance(theirs, Mapping):
        importances = theirs.importances
        if isinstance(importances, Mapping) and importances and all(isinstance(k, int) for k in importances):
            if len(importances) != 1:
                raise ValueError(f"theirs: importances of experiences {sorted(importances)}; pass one, "
                                 "theirs=plugin.importances[k]")
            importances = next(iter(importances.values()))
        theirs = importances
    if hasattr(theirs, "get_diag") and callable(theirs.get_diag):
        theirs = to_numpy(theirs.get_diag())
    if isinstance(theirs, list | tuple) and theirs and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str)
                                                           for t in theirs):
        theirs = dict(theirs)
    if isinstance(theirs, list | tuple):
        if len(theirs) != len(names):
            raise ValueError(f"theirs: a list of {len(theirs)} tensors; expected {len(names)}, one per parameter in parameters() order")
        theirs = dict(zip(names, theirs, strict=True))
    if isinstance(theirs, Mapping):
        arrays = {str(k): to_numpy(v) for k, v in theirs.items()}
        missing, unknown = [n for n in names if n not in arrays], sorted(set(arrays) - set(names))
        wrong = [f"{n} {arrays[n].shape} (expected {shapes[n]})" for n in names if n in arrays and arrays[n].shape != shapes[n]]
        if missing or unknown or wrong:
            raise ValueError(f"theirs: does not match the module's parameters: missing {missing}, unknown {unknown}, "
                             f"wrong shapes {wrong}")
        return arrays
    array = to_numpy(theirs)
    p = model.n_params
    order = mlp_positions(model, names, module)
    if array.shape == (p,):
        flat = np.empty(p, dtype=array.dtype)
        flat[order] = array
        return model.unflatten(flat)
    if array.shape == (p, p):
        full = np.empty_like(array)
        full[np.ix_(order, order)] = array
        return full
    raise ValueError(f"theirs: expected a dict of tensors by parameter name, a list in parameters() order, an "
                     f"Avalanche- or nngeometry-style object, or a tensor of shape ({p},) or ({p}, {p}); got "
                     f"{type(theirs).__name__} of shape {array.shape}")


def diagnose(module, theirs, data, likelihood=None, **options):
    """Which Fisher is THEIRS? ``er.diagnose`` on the module's weights and the rows their loop saw.

    Parameters
    ----------
    module : torch.nn.Module (``to_model``)
    theirs : their curvature (``theirs_arrays``: a dict by name, a list in parameters() order, an
        Avalanche- or nngeometry-style object, a flat (P,) or (P, P) tensor)
    data : a Recorder their loop iterated (exact minibatch verdicts), (x, y), or a loader (``rows``)
    likelihood : a name, a Likelihood or the torch loss their code used; required
    **options : ``er.diagnose``'s batch_sizes, tol, rng, progress, hessian

    Returns
    -------
    Diagnosis, the object ``ewc-ref diagnose`` prints (``print(d)``, ``d.to_dict()``)
    """
    if likelihood is None:
        raise TypeError("likelihood: required (a name, an ewc_ref Likelihood or the torch loss, e.g. nn.CrossEntropyLoss())")
    reference, lik, data_rows, their = reference_inputs(module, theirs, data, likelihood)
    return reference_diagnose(reference, lik, data_rows.x, data_rows.y, their, **diagnose_options(data_rows, options))


def reference_inputs(module, theirs, data, likelihood) -> tuple[MLP, Likelihood, Rows, object]:
    """(float64 MLP, Likelihood, Rows, THEIRS as ewc_ref reads it) for ``diagnose`` and
    ``ewc_ref.testing.assert_fisher_is``: everything converted and checked once."""
    model, lik, names, traced = _convert(module, likelihood)
    reference = as_float64(model)
    data_rows = model_rows(module, model, traced, data)
    return reference, lik, data_rows, theirs_arrays(theirs, reference, names, module)


def diagnose_options(data_rows: Rows, options: dict) -> dict:
    """`options` for er.diagnose with the recorded batch sizes, when the data recorded them.

    The rows are in yielded order; with their batches, diagnose compares the minibatch candidate
    over exactly those batches (non-uniform batches too): an exact verdict, no screen."""
    if data_rows.batches is not None:
        return {**options, "batches": data_rows.batches}
    return dict(options)


def save(module, path, likelihood) -> None:
    """Write the module as model.npz (float64, its names kept) for ``ewc-ref`` (atomic)."""
    model, lik, _ = to_model(module, likelihood)
    save_model(path, as_float64(model), lik)


def save_data(path, data) -> None:
    """Write data.npz from (x, y), a Recorder or a loader (``rows``): x rows flattened to (M, d), y,
    and ``batches`` when the order is their loop's (atomic)."""
    got = rows(data)
    write_data(path, got.x.reshape(got.x.shape[0], -1), got.y, batches=got.batches)


# THEIR penalty (penalty.py) builds on the converters above, so it is imported once they exist
from .penalty import diagnose_penalty, penalty_samples, save_penalty  # noqa: E402

__all__ = ["Recorder", "diagnose", "diagnose_penalty", "fisher", "likelihood_from", "penalty_samples", "rows", "save",
           "save_data", "save_penalty", "theirs_arrays", "to_model", "trace_mlp"]
