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
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._validate import as_float_array
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
            raise ValueError(f"{path}: unknown key {key!r}; expected '<index>.weight', '<index>.bias' or one of {list(MODEL_META_KEYS)}")
        if value.dtype.kind != "f":
            raise ValueError(f"{path}: key {key!r} must be a float array, got dtype {value.dtype}")
        params[key] = value
    try:
        model = MLP.from_state_dict(params, activation)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    return model, get_likelihood(name, sigma)


def save_model(path, model: MLP, lik: Likelihood) -> None:
    """Write model.npz per docs/file-format.md (atomic)."""
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
