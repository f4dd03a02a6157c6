"""The result type ``Curvature`` and the curvature npz format (docs/file-format.md).

A curvature is a (P, P) matrix of the mean loss in one of the structures of ``structures``,
with the estimator that produced it and the parameter layout of the model. On disk it is an npz
of numeric arrays plus the metadata keys META_KEYS. Every reader of a curvature, ours or
"theirs" (a foreign file, a dict of per-parameter arrays or a bare array), goes through
``read_curvature`` (and so ``curvature_from_arrays``): the one reader used by ``diagnose`` (the command,
``er.diagnose`` and the torch bridge), ``assert_is_estimator``, ``Curvature.load`` and ``compare``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

from .._validate import as_float_array, check_choice, check_positive_int
from ..atomic import atomic_savez
from ..io import named_arrays, read_npz
from ..model.mlp import MLP
from . import budget
from .estimators import ESTIMATORS
from .structures import KFAC_BIASES, STRUCTURE_TABLE, STRUCTURES, Layout, kfac_bias_from_keys

META_KEYS = ("__estimator__", "__structure__", "__n__", "__param_names__", "__samples__", "__batch_size__",
             "__kfac_bias__")


@dataclass
class Curvature:
    """A curvature matrix of the mean loss in one of four structures.

    Attributes
    ----------
    structure : 'diag' | 'full' | 'block' | 'kfac' (``structures.STRUCTURE_TABLE``)
    estimator : one of ESTIMATORS (or 'unknown' for a loaded foreign file)
    param_names, param_shapes : the model's parameters in flat (state_dict) order
    data : diag -> (P,); full -> (P, P); block -> list of (P_l, P_l), one per Linear layer;
        kfac, joined bias -> list of (A_l, G_l) with A_l : (in_l [+1 with bias], same), G_l : (out_l, out_l);
        kfac, separate bias -> list of (A_l, G_l, Gb_l) with A_l : (in_l, in_l), Gb_l : (out_l, out_l) the
        bias block (None for a layer without bias)
    layer_has_bias : per Linear layer (needed by block and kfac)
    n : number of examples the mean was taken over (or None)
    samples, batch_size : for mc and batched
    kfac_bias : 'joined' | 'separate' for kfac (structures.KFAC_BIAS_TABLE; default 'joined'), None otherwise
    """

    structure: str
    estimator: str
    param_names: list
    param_shapes: list
    data: object
    layer_has_bias: list = field(default_factory=list)
    n: int | None = None
    samples: int | None = None
    batch_size: int | None = None
    kfac_bias: str | None = None

    def __post_init__(self):
        if self.structure == "kfac":
            self.kfac_bias = check_choice("joined" if self.kfac_bias is None else self.kfac_bias, "kfac_bias", KFAC_BIASES)
        elif self.kfac_bias is not None:
            raise ValueError(f"kfac_bias: only used by structure='kfac', got kfac_bias={self.kfac_bias!r} "
                             f"with structure={self.structure!r}")

    # ---------------------------------------------------------------- geometry
    @property
    def n_params(self) -> int:
        return int(sum(np.prod(s, dtype=int) for s in self.param_shapes))

    @property
    def param_slices(self) -> list[slice]:
        ends = np.cumsum([int(np.prod(s, dtype=int)) for s in self.param_shapes])
        return [slice(int(e - np.prod(s, dtype=int)), int(e)) for e, s in zip(ends, self.param_shapes, strict=True)]

    def layers(self):
        """[(weight slice, bias slice or None, (out, in))] per Linear layer, in flat parameter order."""
        slices, shapes = self.param_slices, self.param_shapes
        layers, i = [], 0
        for has_bias in self.layer_has_bias:
            w, shape = slices[i], shapes[i]
            b = slices[i + 1] if has_bias else None
            layers.append((w, b, shape))
            i += 2 if has_bias else 1
        return layers

    # ---------------------------------------------------------------- views
    @property
    def diagonal(self) -> np.ndarray:
        """The diagonal, (P,), in flat parameter order (for every structure)."""
        return STRUCTURE_TABLE[self.structure].diagonal(self)

    @property
    def flat(self) -> np.ndarray:
        """Alias of ``diagonal`` (the name of earlier releases): the diagonal for every structure."""
        return self.diagonal

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The diagonal as {state_dict name: array of the parameter's shape}."""
        diagonal = self.diagonal
        return {n: diagonal[s].reshape(shape)
                for n, s, shape in zip(self.param_names, self.param_slices, self.param_shapes, strict=True)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def to_dense(self) -> np.ndarray:
        """The (P, P) matrix (block-diagonal for block/kfac, diagonal for diag)."""
        budget.check_dense_size(self.n_params, what="to_dense()")
        return STRUCTURE_TABLE[self.structure].to_dense(self)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """F v for v : (P,) or (P, K), without forming F for diag/block/kfac."""
        v = as_float_array(v, "v")
        if v.shape[0] != self.n_params or v.ndim > 2:
            raise ValueError(f"v: expected shape ({self.n_params},) or ({self.n_params}, K), got {v.shape}")
        return STRUCTURE_TABLE[self.structure].matvec(self, v)

    def quadratic_form(self, v: np.ndarray) -> float:
        """v^T F v."""
        return float(np.dot(np.ravel(v), np.ravel(self.matvec(v))))

    # ---------------------------------------------------------------- files
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the curvature npz (docs/file-format.md; block and kfac are our extension)."""
        arrays = STRUCTURE_TABLE[self.structure].to_arrays(self)
        arrays["__estimator__"] = np.array(self.estimator)
        arrays["__structure__"] = np.array(self.structure)
        arrays["__param_names__"] = np.array(self.param_names)
        if self.kfac_bias is not None:
            arrays["__kfac_bias__"] = np.array(self.kfac_bias)
        for key, value in (("__n__", self.n), ("__samples__", self.samples), ("__batch_size__", self.batch_size)):
            if value is not None:
                arrays[key] = np.array(value)
        return arrays

    def first_non_finite(self) -> str | None:
        """The first parameter (flat order) whose diagonal entry is NaN or inf; '(off-diagonal)' when
        only off-diagonal entries are; None when every entry is finite."""
        items = self.data if isinstance(self.data, list) else [self.data]
        # kfac with separate bias: a layer without bias has None as its bias block
        arrays = [array for item in items for array in (item if isinstance(item, tuple) else (item,)) if array is not None]
        if all(np.isfinite(array).all() for array in arrays):
            return None
        bad = np.flatnonzero(~np.isfinite(self.diagonal))
        if bad.size == 0:
            return "(off-diagonal)"
        stops = [s.stop for s in self.param_slices]
        return self.param_names[int(np.searchsorted(stops, bad[0], side="right"))]

    def save(self, path) -> None:
        """Write the curvature npz atomically (temporary file, then rename); never a NaN or inf.

        Raises ValueError naming the first non-finite parameter (nothing is written)."""
        bad = self.first_non_finite()
        if bad is not None:
            raise ValueError(f"{path}: refusing to write a curvature that is not finite (NaN or inf), first in parameter {bad!r}")
        atomic_savez(path, self.to_arrays())

    @classmethod
    def load(cls, path, model: MLP | None = None) -> Curvature:
        """Read a curvature npz written by ewc_ref or by anyone following docs/file-format.md.

        With `model`, keys and shapes are checked against it and diag files are put in the
        model's flat order (a foreign file may list its keys in any order). Without a model,
        diag files are taken in file order and full files need '__param_names__' or get a
        single anonymous parameter.
        """
        if model is not None and not isinstance(model, MLP):
            raise TypeError(f"model: expected an ewc_ref.MLP or None, got {type(model).__name__}")
        if not isinstance(path, str | bytes | os.PathLike):
            path = read_npz(path, "curvature file")  # the TypeError naming `path`
        return read_curvature(path, model, structures=STRUCTURES, validate=False)

    def __repr__(self) -> str:
        bias = f", kfac_bias={self.kfac_bias!r}" if self.kfac_bias is not None else ""
        return f"Curvature(structure={self.structure!r}{bias}, estimator={self.estimator!r}, P={self.n_params}, n={self.n})"


def split_curvature_arrays(arrays: dict, source: str = "arrays") -> tuple[dict, dict]:
    """(metadata, numeric body) of a curvature npz; the body must be finite numbers.

    Integer arrays are converted to float64; ValueError names the file and key.
    """
    meta = {k: arrays[k] for k in META_KEYS if k in arrays}
    body = {}
    for key, value in arrays.items():
        if key in META_KEYS:
            continue
        if value.dtype.kind not in "fiu":
            raise ValueError(f"{source}: key {key!r} must be a numeric array, got dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise ValueError(f"{source}: key {key!r} contains {bad} non-finite value(s) (NaN or inf); "
                             "expected finite numbers")
        body[key] = value if value.dtype.kind == "f" else value.astype(np.float64)
    return meta, body


def _kfac_bias(meta: dict, body: dict, structure: str, source: str) -> str:
    """The KFAC bias convention: '__kfac_bias__', else 'separate' if '.bias_G' keys exist, else 'joined'."""
    if "__kfac_bias__" not in meta:
        return kfac_bias_from_keys(body)
    if structure != "kfac":
        raise ValueError(f"{source}: key '__kfac_bias__' belongs to kfac files, this file has structure {structure!r}")
    return check_choice(str(meta["__kfac_bias__"]), f"{source}: key '__kfac_bias__'", KFAC_BIASES)


def _layout(meta: dict, body: dict, structure: str, model: MLP | None) -> Layout:
    """Parameter names, shapes and bias flags: from the model, else '__param_names__', else the keys."""
    if model is not None:
        return Layout(model.param_names, model.param_shapes, list(model.has_bias), model.shapes)
    if "__param_names__" in meta:
        names = [str(n) for n in np.atleast_1d(meta["__param_names__"])]
        shapes = [body[n].shape for n in names] if structure == "diag" and all(n in body for n in names) else None
        if structure == "diag" and shapes is None:
            shapes = [()] * len(names)  # the key check of the diag row names what is missing
        return Layout(names, shapes, _bias_pattern(names), None)
    if structure == "diag" and set(body) == {"flat"}:  # a bare (P,) vector: one anonymous parameter
        return Layout(["theta"], [body["flat"].shape], [], None)
    if structure == "diag":
        return Layout(list(body), [body[n].shape for n in body], _bias_pattern(list(body)), None)
    return Layout(["theta"], None, [], None)


def _meta_count(meta: dict, key: str, source: str) -> int | None:
    """A count stored as a 0-d integer array (or an integral float), None when absent."""
    if key not in meta:
        return None
    value = meta[key]
    if value.shape == () and value.dtype.kind in "iuf" and np.isfinite(value) and float(value) == int(value) and value >= 0:
        return int(value)
    shown = repr(value.item()) if value.size == 1 else f"shape {value.shape}"
    raise ValueError(f"{source}: key {key!r} must be a 0-d non-negative integer array, got {value.dtype} {shown}")


def _bias_pattern(names: list[str]) -> list[bool]:
    pattern = []
    for i, name in enumerate(names):
        if name.endswith(".weight"):
            pattern.append(i + 1 < len(names) and names[i + 1] == name[: -len("weight")] + "bias")
    return pattern


def curvature_from_arrays(arrays: dict, model: MLP | None = None, source: str = "arrays") -> Curvature:
    """Build a Curvature from the arrays of a curvature npz; ValueError names the key."""
    meta, body = split_curvature_arrays(arrays, source)
    structure = str(meta["__structure__"]) if "__structure__" in meta else ("full" if set(body) == {"full"} else "diag")
    check_choice(structure, f"{source}: key '__structure__'", STRUCTURES)
    kfac_bias = _kfac_bias(meta, body, structure, source)
    layout = _layout(meta, body, structure, model)
    if structure == "kfac":
        layout = replace(layout, kfac_bias=kfac_bias)
    if structure in ("block", "kfac") and model is None:
        raise ValueError(f"{source}: reading a {structure!r} curvature file needs the model")
    data = STRUCTURE_TABLE[structure].from_arrays(body, layout, source)
    shapes = layout.shapes
    if shapes is None and layout.names == ["theta"]:
        shapes = [(data.shape[0],)]
    if shapes is None:
        raise ValueError(f"{source}: cannot tell the parameter shapes of a full matrix without the model")
    ints = {key: _meta_count(meta, key, source) for key in ("__n__", "__samples__", "__batch_size__")}
    return Curvature(structure, str(meta.get("__estimator__", "unknown")), list(layout.names), [tuple(s) for s in shapes],
                     data, layout.has_bias, ints["__n__"], ints["__samples__"], ints["__batch_size__"],
                     kfac_bias if structure == "kfac" else None)


#: The structures ``diagnose`` reads THEIRS in (``read_curvature``'s default; its --help names them).
THEIRS_STRUCTURES = ("diag", "full", "kfac")


def read_curvature(source, model: MLP | None, *, what: str = "theirs", structures=THEIRS_STRUCTURES,
                   validate: bool = True) -> Curvature:
    """The one reader of a curvature another implementation (or ewc_ref) computed, checked against `model`.

    Used by ``er.diagnose`` (so ``ewc-ref diagnose``, which passes the path, and the torch bridge, which
    passes the converted arrays), ``assert_is_estimator`` (``as_theirs``), ``Curvature.load`` and ``compare``
    (its first step, ``read_curvature_arrays``). Each check runs once per source.

    Parameters
    ----------
    source : a curvature npz path (docs/file-format.md), a dict of npz arrays ({state_dict name: array},
        {'flat': (P,)}, {'full': (P, P)} or kfac keys, with optional metadata keys), a Curvature, or an
        array (P,) (diag) / (P, P) (full) in the model's flat order
    model : the MLP the curvature belongs to (None only for a file or dict read without it, ``Curvature.load``)
    what : the name of `source` in messages when it is not a file (a file is named by its path)
    structures : the structures accepted (default THEIRS_STRUCTURES: diag, full, kfac)
    validate : THEIRS for diagnose: every missing/unknown key and wrong shape of a diag file listed at once, a
        Curvature's values finite, a curvature of zeros refused. False: only what every curvature must satisfy
        (a file's or dict's keys numeric and finite, the layout of its structure, P = the model's)

    Raises
    ------
    TypeError / ValueError naming the file (or `what`) and the key.
    """
    name = what
    if isinstance(source, Curvature):
        theirs = source  # a file's, a dict's or an array's layout is the model's; a Curvature's is its own
        if model is not None and theirs.structure in structures:
            if theirs.structure == "kfac" and (theirs.n_params != model.n_params
                                               or list(theirs.layer_has_bias) != list(model.has_bias)):
                raise ValueError(f"{name}: a kfac curvature of another model (P = {theirs.n_params}, "
                                 f"the model has {model.n_params})")
            if theirs.n_params != model.n_params:
                raise ValueError(f"{name}: has P = {theirs.n_params} parameters, the model has {model.n_params}")
    elif isinstance(source, dict) or isinstance(source, str | bytes | os.PathLike):
        meta, body, name = read_curvature_arrays(source, what)  # numeric and finite, per key
        if validate and model is not None and not ({"full", "flat"} & set(body)) and not _is_kfac(meta, body):
            _check_diag_keys(name, body, model)
        theirs = curvature_from_arrays({**meta, **body}, model, source=name)
    else:
        array = as_float_array(source, what).astype(np.float64)
        p = model.n_params
        if array.shape not in ((p,), (p, p)):
            raise ValueError(f"{what}: expected a Curvature, a dict of per-parameter arrays, shape ({p},) or ({p}, {p}); "
                             f"got shape {array.shape}")
        theirs = Curvature("diag" if array.ndim == 1 else "full", "unknown", model.param_names, model.param_shapes,
                           array, list(model.has_bias))
    if theirs.structure not in structures:
        raise ValueError(f"{name}: diagnose reads {_listed(structures)} curvatures, got structure {theirs.structure!r}")
    if validate:
        # a file, a dict and an array are finite by now (split_curvature_arrays, as_float_array); a Curvature is not
        if isinstance(source, Curvature) and theirs.first_non_finite() is not None:
            raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
        if theirs.structure == "kfac" and not any(np.any(f[0]) and np.any(f[1]) or (len(f) == 3 and f[2] is not None
                                                  and np.any(f[2])) for f in theirs.data):
            raise ValueError(f"{name}: every Kronecker product G (x) A is zero; expected a curvature with a nonzero block")
        if theirs.structure != "kfac" and not np.any(theirs.data):
            raise ValueError(f"{name}: all entries are zero; expected a curvature matrix with at least one nonzero entry")
    return theirs


def read_curvature_arrays(source, what: str = "arrays") -> tuple[dict, dict, str]:
    """(metadata, numeric body, name) of a curvature npz path or a dict of its arrays: the file-level checks of
    ``read_curvature`` (numeric dtype, finite values: ``split_curvature_arrays``), also for ``compare``, which
    reads two files without a model."""
    if isinstance(source, dict):
        arrays, name = dict(source), what
    else:
        arrays, name = read_npz(source, "curvature file"), str(source)
    meta, body = split_curvature_arrays(arrays, name)
    return meta, body, name


def read_theirs(path, model: MLP) -> Curvature:
    """``read_curvature(path, model)``: THEIRS for ``diagnose`` (the name of earlier releases)."""
    return read_curvature(path, model)


def as_theirs(theirs, model: MLP, source: str = "theirs") -> tuple[str, np.ndarray]:
    """('diag', (P,)) or ('full', (P, P)) float64 of ``read_curvature`` without its value checks (earlier releases)."""
    curvature = read_curvature(theirs, model, what=source, structures=("diag", "full"), validate=False)
    return curvature.structure, np.asarray(curvature.data, dtype=np.float64)


def _is_kfac(meta: dict, body: dict) -> bool:
    return str(meta.get("__structure__", "")) == "kfac" or any(str(k).startswith("kfac.") for k in body)


def _listed(structures) -> str:
    quoted = [repr(s) for s in structures]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _check_diag_keys(path, body: dict, model: MLP) -> None:
    """Raise one ValueError listing every missing key, unknown key and wrong shape of a diag file."""
    expected = dict(zip(model.param_names, model.param_shapes, strict=True))
    problems = []
    missing = [k for k in expected if k not in body]
    unknown = sorted(k for k in body if k not in expected)
    wrong = [f"{k} {tuple(body[k].shape)} (expected {tuple(expected[k])})" for k in expected
             if k in body and tuple(body[k].shape) != tuple(expected[k])]
    if missing:
        problems.append(f"missing keys {missing}")
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong)}")
    if problems:
        raise ValueError(f"{path}: does not match the model's parameters: {'; '.join(problems)}; "
                         f"expected diag keys {list(expected)} with the parameters' shapes, one key 'flat' of shape "
                         f"({model.n_params},) or one key 'full' of shape ({model.n_params}, {model.n_params})")


def save_curvature(path, arrays_by_name, *, estimator: str = "unknown", n: int | None = None,
                   samples: int | None = None, batch_size: int | None = None,
                   param_names=None, model: MLP | None = None) -> None:
    """Write another implementation's curvature as a curvature npz (docs/file-format.md), atomically.

    Parameters
    ----------
    arrays_by_name : mapping of array-likes (torch tensors, jax arrays, lists; nested mappings
        joined with '.'): {parameter name: diagonal of the parameter's shape} (a diag file), or
        {'full': (P, P)} (a full file)
    estimator : what produced it, one of ESTIMATORS or 'unknown' (the default)
    n, samples, batch_size : optional metadata ('__n__', '__samples__', '__batch_size__'), ints >= 1
    param_names : for a full file, the parameter names in flat order ('__param_names__')
    model : when given, keys and shapes are checked against the model's parameters

    Raises
    ------
    TypeError / ValueError naming the argument or key: a metadata key ('__...__') in
    arrays_by_name, non-numeric or non-finite values, a shape that does not match `model`.
    """
    arrays = named_arrays(arrays_by_name, "arrays_by_name")
    reserved = [key for key in arrays if key.startswith("__")]
    if reserved:
        raise ValueError(f"arrays_by_name: keys {reserved} are reserved for metadata; pass estimator=, n=, ... instead")
    if estimator != "unknown":
        check_choice(estimator, "estimator", ESTIMATORS)
    arrays["__estimator__"] = np.array(estimator)
    arrays["__structure__"] = np.array("full" if set(arrays) == {"full", "__estimator__"} else "diag")
    for key, value in (("n", n), ("samples", samples), ("batch_size", batch_size)):
        if value is not None:
            arrays[f"__{key}__"] = np.array(check_positive_int(value, key))
    if param_names is not None:
        arrays["__param_names__"] = np.array(_check_param_names(param_names, model, arrays))
    # Every check of the readers, before writing (a full matrix's names are checked against a model only).
    checked = arrays if model is not None else {k: v for k, v in arrays.items() if k != "__param_names__"}
    curvature_from_arrays(checked, model, source="arrays_by_name")
    atomic_savez(path, arrays)


def _check_param_names(param_names, model, arrays) -> list[str]:
    """param_names as a list of distinct strings matching `model` (flat order) and a diag file's keys."""
    if isinstance(param_names, str) or not isinstance(param_names, list | tuple):
        raise TypeError(f"param_names: expected a list of parameter names, got {type(param_names).__name__}")
    names = list(param_names)
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ValueError(f"param_names: expected distinct strings, got {names!r}")
    if model is not None and names != model.param_names:
        raise ValueError(f"param_names: expected the model's parameter names {model.param_names} in flat order, got {names!r}")
    keys = [key for key in arrays if not key.startswith("__")]
    if keys != ["full"] and sorted(names) != sorted(keys):
        raise ValueError(f"param_names: a diag file's parameters are its keys {keys}, got {names!r}")
    return names
