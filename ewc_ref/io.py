"""Reading and writing the .npz files of docs/file-format.md.

Everything is loaded with ``allow_pickle=False`` and validated key by key;
every error names the file and the key. Writes are atomic: the arrays go to a
temporary file in the destination folder, which is then renamed over the
target, so a crash never leaves a half-written file; the temporary files of a
writer killed by SIGKILL are removed by the next successful write into the same
folder (see :func:`atomic_output`). A folder of outputs (``figures``) is staged
whole and moved in only on success (:func:`atomic_folder`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import safe_files
from ._validate import as_float_array, check_choice
from .model.activations import ACTIVATIONS
from .model.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model.mlp import MLP, PARAM_KEY, layer_order

MODEL_META_KEYS = ("__activation__", "__likelihood__", "__sigma__")


def read_npz(path, what: str = "file", check=None) -> dict[str, np.ndarray]:
    """Every array of an .npz through the hardened reader (ewc_ref.safe_files.read_npz): no pickle,
    sizes checked before allocating, `check(headers)` before any data; ValueError names file and key."""
    return safe_files.read_npz(path, what, check=check)


# Temporary files of atomic_output (and staging folders of atomic_folder): ".NAME.ewc-ref.PID.XXXXXXXX.tmp"
# beside the output NAME, where PID is the writing process and XXXXXXXX mkstemp's random part.
TEMPORARY_PATTERN = ".{name}.ewc-ref.{pid}.XXXXXXXX.tmp"
_OURS = re.compile(r"^\..+\.ewc-ref\.([0-9]+)\.[a-z0-9_]{8}\.tmp$")
_PROCESS_START = time.time()  # when this process imported ewc_ref.io: no write of ours is older


def _prefix(path: Path) -> str:
    return f".{path.name}.ewc-ref.{os.getpid()}."


@contextmanager
def atomic_output(path):
    """Yield a temporary path next to `path`; on success give it the usual file mode and rename
    it over `path`, on any failure delete it. Nothing is ever half-written at `path`.

    The temporary file is named ``.NAME.ewc-ref.PID.XXXXXXXX.tmp`` (TEMPORARY_PATTERN). A writer
    killed by SIGKILL cannot delete its own; the next successful write into the same FOLDER removes
    every file or staging folder of that naming whose PID is no longer a running process AND whose
    modification time is older than this process's start (taken as the moment it imported
    ewc_ref.io, at or after the true start: for the CLI, within its first second), so a
    concurrent writer's file is never touched (`remove_stale_temporaries`).

    Raises
    ------
    TypeError naming `path` when it is not a str or os.PathLike; ValueError when it is a folder or
    its folder does not exist; OSError naming `path` (never the temporary) when it cannot be written.
    """
    path = Path(safe_files.check_path(path))
    folder = path.parent if str(path.parent) else Path(".")
    if os.path.isdir(path):  # os.replace would fail naming the temporary file, or replace an empty folder
        raise ValueError(f"path: {path} is a folder; expected a file name")
    if not folder.is_dir():
        raise ValueError(f"{path}: output folder {folder} does not exist")
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=_prefix(path), suffix=".tmp")
    except OSError as error:  # a read-only folder, a full disk: name the output, not the temporary
        raise OSError(f"{path}: cannot create the output in {folder} ({error.strerror or error})") from error
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None:  # e.g. a full disk: say where
            raise OSError(f"{path}: cannot write the output ({error.strerror or error}); nothing was written") from error
        raise
    remove_stale_temporaries(path)


@contextmanager
def atomic_folder(path):
    """Yield a staging folder beside the output folder `path`; on success move its files into `path`.

    Every file is made in ``.NAME.ewc-ref.PID.XXXXXXXX.tmp/`` (same file system), so an interrupted
    run changes nothing at `path`. On success: a `path` that does not exist is the staging folder
    renamed whole (one rename); an existing `path` (which may hold the user's other files) gets each
    staged file by one ``os.replace``, only after every file was made; files of other names in it
    are never touched. On any failure the staging folder is deleted.
    """
    path = Path(safe_files.check_path(path))
    parent = path.parent if str(path.parent) else Path(".")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"path: {path} exists and is not a folder")
    parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=_prefix(path), suffix=".tmp"))
    except OSError as error:
        raise OSError(f"{path}: cannot create the output folder in {parent} ({error.strerror or error})") from error
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        try:
            os.rename(staging, path)  # atomic when `path` does not exist (or is an empty folder)
        except OSError:
            for item in sorted(staging.iterdir()):
                os.replace(item, path / item.name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    remove_stale_temporaries(path)


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files and staging folders of killed writers beside `path`; return them.

    A file or folder ``.NAME.ewc-ref.PID.XXXXXXXX.tmp`` in the folder of `path`, for ANY name, is
    stale when no process PID is running and it was last modified before this process imported
    ewc_ref.io. So is the same-name file of the earlier naming ``.NAME.PID.XXXXXXXX.tmp``. Best
    effort: what cannot be removed is left.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    earlier = re.compile(rf"^\.{re.escape(path.name)}\.([0-9]+)\.[a-z0-9_]{{8}}\.tmp$")
    removed = []
    for candidate in folder.iterdir():
        match = _OURS.match(candidate.name) or earlier.match(candidate.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            if candidate.lstat().st_mtime >= _PROCESS_START:
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return True  # our own writes; pid 0 is no writer (kill(0) would signal our group): keep
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # running, under another user
    except (ProcessLookupError, OverflowError, ValueError):
        return False  # gone, or a number no process can have
    return True


def atomic_savez(path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file next to `path`, then rename it into place (never a pickle)."""
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    for key, value in arrays.items():
        if value.dtype.hasobject:  # np.savez would pickle it, and no reader of ours would accept it
            raise TypeError(f"{key}: expected a numeric or string array, got dtype {value.dtype}")
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def strict_json(value, path: str = "", found: dict | None = None):
    """`value` with every non-finite float (NaN, +-inf) replaced by None, recursively.

    Each replaced number is recorded in `found` as JSON path -> what it was ('inf', '-inf',
    'nan'): ``{"keys": {"0.weight": {"max_abs_error": inf}}}`` records
    ``keys["0.weight"].max_abs_error``, ``{"b": [1.0, nan]}`` records ``b[1]``.
    NumPy scalars are converted to Python numbers first (np.float64 is a float; np.float32 and
    the integer types are not, and json.dumps would refuse them).
    """
    found = {} if found is None else found
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found[path or "(the value)"] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {key: strict_json(item, _json_path(path, key), found) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item, f"{path}[{index}]", found) for index, item in enumerate(value)]
    return value


def _json_path(path: str, key) -> str:
    """`path` extended by `key`: '.name' for a plain name, '["0.weight"]' for any other key."""
    key = str(key)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def json_text(value) -> str:
    """`value` as one line of strictly valid JSON (RFC 8259): the one serialiser of every
    ``to_json()`` and of the command line's ``--json``.

    NaN and +-inf become null; an object (dict) that had any gains the key ``"non_finite"``,
    {JSON path: 'nan' | 'inf' | '-inf'}, the reason for each such null (docs/file-format.md, section 9).
    """
    found: dict[str, str] = {}
    clean = strict_json(value, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    return json.dumps(clean, allow_nan=False)


class JsonResult:
    """Mixin of every result object: ``to_dict()`` is the JSON object, ``to_json()`` its text.

    (Until format version 1.1, ``to_json()`` returned the object; docs/file-format.md, version notes.)
    """

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self) -> str:
        """``to_dict()`` as one line of strictly valid JSON (`json_text`)."""
        return json_text(self.to_dict())
