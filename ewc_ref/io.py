"""Reading and writing the .npz files of docs/file-format.md.

Everything is loaded with ``allow_pickle=False`` and validated key by key;
every error names the file and the key. Writes are atomic: the arrays go to a
temporary file in the destination folder, which is then renamed over the
target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._validate import as_float_array, check_choice
from .model.activations import ACTIVATIONS
from .model.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model.mlp import MLP, PARAM_KEY

MODEL_META_KEYS = ("__activation__", "__likelihood__", "__sigma__")


def read_npz(path, what: str = "file") -> dict[str, np.ndarray]:
    """Load every array of an .npz with allow_pickle=False; ValueError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (expected a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError as error:  # object arrays need pickle: refused
                    raise ValueError(f"{path}: key {key!r} holds Python objects (pickled); expected a numeric or string array") from error
            return arrays
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error


@contextmanager
def atomic_output(path):
    """Yield a temporary path next to `path`; on success give it the usual file mode and rename
    it over `path`, on any failure delete it. Nothing is ever half-written at `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{path}: output folder {folder} does not exist")
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_savez(path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file next to `path`, then rename it into place."""
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
    arrays = read_npz(path, "model file")
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
        if PARAM_KEY.match(key) is None:
            raise ValueError(f"{path}: unknown key {key!r}; expected '<module>.weight', '<module>.bias' or one of {list(MODEL_META_KEYS)}")
        if value.dtype.kind != "f":
            raise ValueError(f"{path}: key {key!r} must be a float array, got dtype {value.dtype}")
        params[key] = value
    try:
        model = MLP.from_state_dict(params, activation)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    return model, get_likelihood(name, sigma)


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
        if activation is not None or likelihood is not None or sigma is not None:
            raise TypeError("activation: save_model(path, model, lik) takes the activation and likelihood from "
                            "model and lik; activation=, likelihood=, sigma= belong to save_model(path, state_dict, ...)")
        if not isinstance(lik, Likelihood):
            raise TypeError(f"lik: expected a Likelihood (er.Categorical(), ...), got {type(lik).__name__}")
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
    arrays = read_npz(path, "data file")
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path}: missing key {key!r} (see docs/file-format.md, section 3: data.npz)")
    unknown = sorted(set(arrays) - {"x", "y"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; data.npz holds only 'x' and 'y'")
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
    if model is not None:
        try:
            x = model.check_input(x, f"{path}: key 'x'")
            if lik is not None:
                y = lik.check_labels(y, x.shape[0], model.n_outputs, f"{path}: key 'y'")
        except TypeError as error:
            raise ValueError(str(error)) from None
    return x, y


def save_data(path, x: np.ndarray, y: np.ndarray) -> None:
    """Write data.npz per docs/file-format.md (atomic)."""
    atomic_savez(path, {"x": np.asarray(x), "y": np.asarray(y)})
