"""Reading and writing the .npz files of docs/file-format.md.

Everything is loaded with ``allow_pickle=False`` and validated key by key;
every error names the file and the key. Writes are atomic: the arrays go to a
temporary file in the destination folder, which is then renamed over the
target, so a crash never leaves a half-written file; the temporary files of a
writer killed by SIGKILL are removed by the next successful write into the same
folder (``ewc_ref.atomic``: ``atomic_output``; a folder of outputs, ``figures``, is staged
whole and moved in only on success by ``atomic_folder``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import safe_files
from ._validate import as_float_array, check_choice
from .atomic import atomic_savez
from .model.activations import ACTIVATIONS
from .model.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model.mlp import MLP, PARAM_KEY, layer_order

MODEL_META_KEYS = ("__activation__", "__likelihood__", "__sigma__")


def read_npz(path, what: str = "file", check=None) -> dict[str, np.ndarray]:
    """Every array of an .npz through the hardened reader (ewc_ref.safe_files.read_npz): no pickle,
    sizes checked before allocating, `check(headers)` before any data; ValueError names file and key."""
    return safe_files.read_npz(path, what, check=check)


def _string(arrays: dict, key: str, path, choices) -> str:
    value = arrays[key]
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{path}: key {key!r} must be a 0-d unicode string array like np.array('relu'), got dtype {value.dtype} shape {value.shape}")
    text = str(value)
    if text not in choices:
        raise ValueError(f"{path}: key {key!r} must be one of {sorted(choices)}, got {text!r}")
    return text


def load_model(path) -> tuple[MLP, Likelihood]:
    """Read model.npz (docs/file-format.md) into (MLP, Likelihood).

    Raises
    ------
    ValueError
        missing or unknown keys, shapes that do not chain, non-finite values,
        unknown activation or likelihood, sigma not > 0 or given for a non-gaussian.
    TypeError-like problems (non-float parameters) are reported as ValueError naming the key.
    """
    flat: dict = {}
    arrays = safe_files.read_npz(path, "model file", check=lambda headers: _check_model_headers(path, headers),
                                 into=lambda headers: _flat_targets(headers, flat))
    for key in ("__activation__", "__likelihood__"):
        if key not in arrays:
            raise ValueError(f"{path}: missing key {key!r} (see docs/file-format.md, section 2: model.npz)")
    activation = _string(arrays, "__activation__", path, ACTIVATIONS)
    name = _string(arrays, "__likelihood__", path, LIKELIHOODS)
    sigma = None
    if "__sigma__" in arrays:
        if name != "gaussian":
            raise ValueError(f"{path}: key '__sigma__' is only allowed with the gaussian likelihood, not {name!r}")
        raw = arrays["__sigma__"]
        if raw.shape != () or raw.dtype.kind not in "fiu":
            raise ValueError(f"{path}: key '__sigma__' must be a 0-d float array, got dtype {raw.dtype} shape {raw.shape}")
        sigma = float(raw)
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"{path}: key '__sigma__' must be finite and > 0, got {sigma}")
    params = {}
    for key, value in arrays.items():
        if key in MODEL_META_KEYS:
            continue
        params[key] = value  # names, dtypes and shapes were checked from the headers
    try:
        if flat:  # read straight into one parameter vector: check the values, adopt it (no copy)
            for key in flat["keys"]:
                as_float_array(params[key], f"'{key}'")  # the message MLP() gives
            model = MLP._adopt(flat["theta"], flat["shapes"], flat["has_bias"], activation, flat["modules"])
        else:
            model = MLP.from_state_dict(params, activation)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    return model, get_likelihood(name, sigma)


def _flat_targets(headers: dict, flat: dict) -> dict:
    """Views of one new parameter vector (P,) in flat order, one per weight and bias of a model file whose
    parameters share one float32/float64 dtype in C order (else {}: the arrays are read on their own).
    Fills `flat` with theta, the keys, shapes, biases and modules for MLP._adopt."""
    params = {key: header for key, header in headers.items() if key not in MODEL_META_KEYS}
    dtypes = {header.dtype.newbyteorder("=") for header in params.values()}
    if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64) or any(h.fortran_order for h in params.values()):
        return {}
    modules: dict[str, dict] = {}
    for key in params:
        match = PARAM_KEY.match(key)
        modules.setdefault(match.group(1), {})[match.group(2)] = key
    order = layer_order(list(modules))
    keys = [modules[m][kind] for m in order for kind in ("weight", "bias") if kind in modules[m]]
    theta = np.empty(sum(params[key].nbytes // params[key].dtype.itemsize for key in keys),
                     dtype=params[keys[0]].dtype.newbyteorder("="))
    views, offset = {}, 0
    for key in keys:
        size = params[key].nbytes // params[key].dtype.itemsize
        views[key] = theta[offset : offset + size].reshape(params[key].shape)
        offset += size
    flat.update(theta=theta, keys=keys, modules=order, shapes=[params[modules[m]["weight"]].shape for m in order],
                has_bias=["bias" in modules[m] for m in order])
    return views


def _check_model_headers(path, headers: dict) -> None:
    """Refuse a model file from its .npy headers alone (key names, float dtypes, 2-d weights,
    1-d biases, layers that chain), so a file of the wrong layout is never inflated."""
    layers: dict[int, dict] = {}
    for key, header in headers.items():
        if key in MODEL_META_KEYS:
            if header.shape != ():
                raise ValueError(f"{path}: key {key!r} must be a 0-d array like np.array('relu'), got shape {header.shape}")
            continue
        match = PARAM_KEY.match(key)
        if match is None:
            raise ValueError(f"{path}: unknown key {key!r}; expected '<module>.weight', '<module>.bias' or one of {list(MODEL_META_KEYS)}")
        if header.dtype.kind != "f":
            raise ValueError(f"{path}: key {key!r} must be a float array, got dtype {header.dtype}")
        if len(header.shape) != (2 if match.group(2) == "weight" else 1):
            raise ValueError(f"{path}: key {key!r}: expected a {2 if match.group(2) == 'weight' else 1}-d array, got shape {header.shape}")
        layers.setdefault(match.group(1), {})[match.group(2)] = header.shape
    previous = None
    for index in layer_order(list(layers)):
        weight, bias = layers[index].get("weight"), layers[index].get("bias")
        if weight is None:
            raise ValueError(f"{path}: key '{index}.bias' has no matching '{index}.weight'")
        if bias is not None and bias != weight[:1]:
            raise ValueError(f"{path}: key '{index}.bias': expected shape ({weight[0]},) to match '{index}.weight' {weight}, got {bias}")
        if previous is not None and weight[1] != previous[1][0]:
            raise ValueError(
                f"{path}: key '{index}.weight': shape {weight} does not chain with '{previous[0]}.weight' "
                f"{previous[1]}: expected {previous[1][0]} input columns"
            )
        previous = (index, weight)


def _check_data_headers(path, headers: dict, model: MLP | None) -> None:
    """Refuse a data file from its .npy headers alone: x (N, d) with d = the model's inputs, y with N rows."""
    for key in ("x", "y"):
        if key not in headers:
            raise ValueError(f"{path}: missing key {key!r} (see docs/file-format.md, section 3: data.npz)")
    unknown = sorted(set(headers) - {"x", "y", *LOADER_KEYS})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; data.npz holds only 'x', 'y', 'order' and 'batches'")
    x, y = headers["x"], headers["y"]
    if len(x.shape) != 2:
        raise ValueError(f"{path}: key 'x': expected a 2-d array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{path}: key 'x' has no rows (shape {x.shape}); a data file needs N >= 1 examples")
    if y.shape[:1] != x.shape[:1] or len(y.shape) not in (1, 2):
        raise ValueError(f"{path}: key 'y' must have {x.shape[0]} rows like 'x' (1-d class indices or 2-d targets), got shape {y.shape}")
    if model is not None and x.shape[1] != model.n_inputs:
        raise ValueError(f"{path}: key 'x': expected {model.n_inputs} features per row to match the model, got shape {x.shape}")


def named_arrays(mapping, what: str = "state_dict") -> dict[str, np.ndarray]:
    """{name: ndarray} from any mapping of array-likes, nested mappings joined with '.'.

    A PyTorch state_dict ({'features.0.weight': tensor}), a JAX/Flax params tree
    ({'Dense_0': {'kernel': ...}} -> 'Dense_0.kernel') or a dict of NumPy arrays; every leaf goes
    through np.asarray (CPU torch tensors, jax arrays, lists). Order is the mapping's own.

    Raises
    ------
    TypeError naming `what` when `mapping` is not a mapping or a key is not a string.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a mapping of names to arrays (a state_dict), got {type(mapping).__name__}")
    flat: dict[str, np.ndarray] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{what}: keys must be strings, got {key!r}")
        if isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": array for inner, array in named_arrays(value, f"{what}[{key!r}]").items()})
        else:
            try:
                flat[key] = np.asarray(value)
            except Exception as error:  # e.g. a torch tensor that requires grad or lives on a GPU
                raise TypeError(f"{what}: key {key!r} does not convert to a NumPy array ({error}); "
                                "for torch use .detach().cpu()") from error
    return flat


def save_model(path, model, lik: Likelihood | None = None, *, activation: str | None = None,
               likelihood: str | Likelihood | None = None, sigma: float | None = None) -> None:
    """Write model.npz per docs/file-format.md (atomic), from an ewc_ref MLP or from a state_dict.

    Two forms, told apart by the second argument::

        er.save_model(path, model, lik)                      # an ewc_ref MLP and Likelihood
        er.save_model(path, state_dict, activation="relu", likelihood="categorical")
        er.save_model(path, state_dict, activation="tanh", likelihood="gaussian", sigma=0.5)

    Parameters
    ----------
    model : MLP, or any mapping {'<module>.weight': (out, in), '<module>.bias': (out,)} of
        array-likes (a torch state_dict, nested mappings joined with '.'; ``named_arrays``)
    lik : the Likelihood (MLP form only)
    activation : hidden activation name (mapping form only), one of ACTIVATIONS
    likelihood : a likelihood name or Likelihood (mapping form only)
    sigma : the gaussian's sigma (mapping form, likelihood='gaussian' only; default 1)

    Raises
    ------
    TypeError / ValueError naming the argument or key (unknown key, shapes that do not chain,
    non-finite values, arguments of the other form).
    """
    if isinstance(model, MLP):
        _check_model_and_likelihood(model, lik)
        if activation is not None or likelihood is not None or sigma is not None:
            raise TypeError("activation: save_model(path, model, lik) takes the activation and likelihood from "
                            "model and lik; activation=, likelihood=, sigma= belong to save_model(path, state_dict, ...)")
    elif not isinstance(model, Mapping):
        raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__} (or a state_dict mapping "
                        "with activation= and likelihood=)")
    else:
        if lik is not None:
            raise TypeError("lik: with a state_dict, pass likelihood= (and activation=) by keyword")
        if activation is None or likelihood is None:
            raise TypeError("activation: save_model(path, state_dict, activation=..., likelihood=...) needs both")
        check_choice(activation, "activation", ACTIVATIONS)
        if isinstance(likelihood, Likelihood):
            if sigma is not None:
                raise TypeError("sigma: give sigma inside the Likelihood (er.Gaussian(sigma)) or with likelihood='gaussian'")
            lik = likelihood
        else:
            lik = get_likelihood(check_choice(likelihood, "likelihood", LIKELIHOODS), sigma)
        model = MLP.from_state_dict(named_arrays(model), activation)
    arrays = dict(model.state_dict())
    arrays["__activation__"] = np.array(model.activation.name)
    arrays.update(lik.to_arrays())
    atomic_savez(path, arrays)


def load_data(path, model: MLP | None = None, lik: Likelihood | None = None):
    """Read data.npz into (x, y).

    Without a model, checks x : (N, d) finite float and y with N rows (1-d integer
    or 2-d finite float). With `model` and `lik`, also checks d_in, d_out and the
    label support of the likelihood (class range, {0, 1}).
    """
    # keys, x's rank, y's rows and x's columns are checked from the headers, before any data
    if model is not None or lik is not None:
        _check_model_and_likelihood(model, lik, optional=True)
    arrays = read_npz(path, "data file", check=lambda headers: _check_data_headers(path, headers, model))
    try:
        x = as_float_array(arrays["x"], f"{path}: key 'x'", ndim=2)
    except TypeError as error:
        raise ValueError(str(error)) from None
    y = arrays["y"]
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: key 'y' must have {x.shape[0]} rows like 'x' (1-d class indices or 2-d targets), got shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{path}: key 'y' contains non-finite values")
    if y.dtype.kind not in "fiub":
        raise ValueError(f"{path}: key 'y' must be integer or float, got dtype {y.dtype}")
    check_loader_order(x.shape[0], arrays.get("order"), arrays.get("batches"), f"{path}: key ")  # refused here too
    if model is not None:
        try:
            x = model.check_input(x, f"{path}: key 'x'")
            if lik is not None:
                y = lik.check_labels(y, x.shape[0], model.n_outputs, f"{path}: key 'y'")
        except TypeError as error:
            raise ValueError(str(error)) from None
    return x, y


LOADER_KEYS = ("order", "batches")


@dataclass(frozen=True)
class LoaderOrder:
    """How a loader yielded the rows of a data file (docs/file-format.md, data section).

    order : (M,) int64 row indices in the order yielded, or None (file order, all N rows)
    batches : (K,) int64 rows per batch in turn (sum M), or None (unknown)
    """

    order: np.ndarray | None = None
    batches: np.ndarray | None = None

    def rows(self, n: int) -> np.ndarray:
        """The yielded row indices: `order`, or arange(n) when absent."""
        return np.arange(n) if self.order is None else self.order


def check_loader_order(n: int, order=None, batches=None, where: str = "") -> LoaderOrder:
    """Validate `order` (ints in [0, n)) and `batches` (ints >= 1 summing to len(order) or n)."""
    checked = []
    for name, value in (("order", order), ("batches", batches)):
        if value is None:
            checked.append(None)
            continue
        array = np.asarray(value)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(f"{where}{name}: expected a 1-d integer array, got dtype {array.dtype} shape {array.shape}")
        checked.append(array.astype(np.int64))
    order, batches = checked
    if order is not None and order.size and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"{where}order: expected row indices in [0, {n}), got values in [{order.min()}, {order.max()}]")
    if batches is not None:
        m = n if order is None else order.size
        if batches.size and batches.min() < 1:
            raise ValueError(f"{where}batches: expected batch sizes >= 1, got {batches.min()}")
        if int(batches.sum()) != m:
            raise ValueError(f"{where}batches: expected sizes summing to {m} (the rows yielded), got {int(batches.sum())}")
    return LoaderOrder(order, batches)


def save_data(path, x: np.ndarray, y: np.ndarray, *, order=None, batches=None) -> None:
    """Write data.npz per docs/file-format.md (atomic); TypeError names `x` or `y` when not numeric.

    `order` (M,) and `batches` (K,) record how a loader yielded the rows (``LoaderOrder``);
    ValueError names `order` or `batches` when they do not fit the N rows of x."""
    loader = check_loader_order(len(np.asarray(x)), order, batches)
    arrays = {"x": x, "y": y}
    arrays.update({key: value for key, value in (("order", loader.order), ("batches", loader.batches))
                   if value is not None})
    atomic_savez(path, arrays)


def load_loader(path) -> LoaderOrder:
    """The `order` and `batches` keys of data.npz (None when absent), validated against its N rows."""
    arrays = read_npz(path, "data file", check=lambda headers: _check_data_headers(path, headers, None))
    return check_loader_order(arrays["x"].shape[0], arrays.get("order"), arrays.get("batches"), f"{path}: key ")


def _check_model_and_likelihood(model, lik, optional: bool = False) -> None:
    """TypeError naming `model` or `lik` when they are not an MLP and a Likelihood (None allowed if optional)."""
    if not isinstance(model, MLP) and not (optional and model is None):
        raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__}")
    if not isinstance(lik, Likelihood) and not (optional and lik is None):
        raise TypeError(f"lik: expected an ewc_ref Likelihood, got {type(lik).__name__}")


