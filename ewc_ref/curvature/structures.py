"""The structure table: how each of the four curvature structures is stored, viewed and written.

One row per structure; ``Curvature`` looks its structure up here instead of branching on the name,
so adding a structure is one row plus its tests (tests/curvature/test_naive_twins.py iterates the table).

=========  ===========================================  ======================================
name       data                                         npz keys (docs/file-format.md)
=========  ===========================================  ======================================
diag       (P,) the diagonal                            one per parameter, the parameter's shape,
                                                        or one key 'flat' (P,) in flat order
full       (P, P)                                       'full'
block      list of (P_l, P_l), one per Linear layer     'block.<module>'
kfac       per Linear layer, by the bias convention     '__kfac_bias__' = 'joined' | 'separate'
           (KFAC_BIAS_TABLE below):
           joined: (A_l, G_l), A_l (in_l [+1], same)    'kfac.<module>.A', 'kfac.<module>.G'
           separate: (A_l, G_l, Gb_l), A_l (in_l, in_l), 'kfac.<module>.A', 'kfac.<module>.G',
           Gb_l (out_l, out_l) or None without bias      'kfac.<module>.bias_G' (with bias)
=========  ===========================================  ======================================

The two KFAC bias conventions of a Linear layer z = W a + b with per-example gradient
g_n = [vec_row(delta_n a_n^T), delta_n], G = mean_n delta_n delta_n^T (summed over the backward
vectors with their weights, estimators.py):

* joined (nngeometry PMatKFAC, curvlinops ``separate_weight_and_bias=False``): the bias is a
  column of ones appended to the input, abar = [a, 1], A = mean_n abar_n abar_n^T and the whole
  block is G (x) A, cross terms between W and b included (G (x) mean a).
* separate (laplace-torch Kron, BackPACK KFLR/KFAC, curvlinops' default): A = mean_n a_n a_n^T,
  the weight block is G (x) A, the bias block is Gb = G, and the W-b cross terms are zero.

Both conventions have the same weight block (A_sep = A_joined without its last row and column)
and the same bias block G, which is the EXACT bias block of the estimator for any N (the bias
gradient is delta_n itself); they differ only in the W-b cross terms. For N = 1 joined is the
exact block, separate the exact block with its W-b cross terms set to zero.

Every row answers: ``diagonal(c) -> (P,)``, ``to_dense(c) -> (P, P)``, ``matvec(c, v)`` for
v : (P,) or (P, K), ``to_arrays(c) -> {key: array}`` and ``from_arrays(body, layout, source) -> data``
(``layout`` = parameter names, shapes, per-layer bias flags and Linear shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import block_diag


@dataclass(frozen=True)
class Layout:
    """The parameter layout a curvature file is read against (from the model or the file)."""

    names: list
    shapes: list | None  # None: a full matrix read without a model, shapes taken from the matrix
    has_bias: list
    linear_shapes: list | None  # (out, in) per Linear layer; None without a model
    kfac_bias: str = "joined"  # the KFAC bias convention of a kfac file (KFAC_BIAS_TABLE)


@dataclass(frozen=True)
class Structure:
    """One row of the structure table (module docstring)."""

    name: str
    description: str
    per_example_only: bool  # defined for sums of per-example outer products only (not batched, hessian)
    diagonal: Callable
    to_dense: Callable
    matvec: Callable
    to_arrays: Callable
    from_arrays: Callable


def _modules(names: list) -> list[str]:
    """'<module>' of every Linear layer, from the '<module>.weight' names ('features.0.weight' -> 'features.0')."""
    return [name[: -len(".weight")] for name in names if name.endswith(".weight")]


# --------------------------------------------------------------------------- diag
def _diag_from_arrays(body: dict, layout: Layout, source: str):
    if set(body) == {"flat"} and "flat" not in layout.names:  # the whole diagonal in flat order (section 7)
        p = int(sum(np.prod(s, dtype=int) for s in layout.shapes))
        if body["flat"].shape != (p,):
            raise ValueError(f"{source}: key 'flat' has shape {body['flat'].shape}, expected ({p},): the diagonal "
                             "in the model's flat parameter order (parameters_to_vector)")
        return body["flat"]
    missing = [n for n in layout.names if n not in body]
    unknown = [k for k in body if k not in layout.names]
    if missing or unknown:
        raise ValueError(f"{source}: keys do not match the model's parameters: missing {missing}, unknown {unknown}")
    for n, shape in zip(layout.names, layout.shapes, strict=True):
        if body[n].shape != tuple(shape):
            raise ValueError(f"{source}: key {n!r} has shape {body[n].shape}, expected {tuple(shape)}")
    return np.concatenate([body[n].ravel() for n in layout.names])


DIAG = Structure(
    "diag", "the diagonal, (P,)", False,
    diagonal=lambda c: c.data,
    to_dense=lambda c: np.diag(c.data),
    matvec=lambda c, v: c.data.reshape((-1,) + (1,) * (v.ndim - 1)) * v,
    to_arrays=lambda c: dict(c.arrays),
    from_arrays=_diag_from_arrays,
)


# --------------------------------------------------------------------------- full
def _full_from_arrays(body: dict, layout: Layout, source: str):
    if set(body) != {"full"}:
        raise ValueError(f"{source}: a full curvature file holds one key 'full', got {sorted(body)}")
    data = body["full"]
    if data.ndim != 2 or data.shape[0] != data.shape[1]:
        raise ValueError(f"{source}: key 'full' must be square (P, P), got shape {data.shape}")
    shapes = layout.shapes
    if shapes is not None and data.shape[0] != int(sum(np.prod(s, dtype=int) for s in shapes)):
        raise ValueError(f"{source}: key 'full' has shape {data.shape}, expected P = {sum(int(np.prod(s)) for s in shapes)}")
    return data


FULL = Structure(
    "full", "the dense (P, P) matrix", False,
    diagonal=lambda c: np.diagonal(c.data).copy(),
    to_dense=lambda c: c.data,
    matvec=lambda c, v: c.data @ v,
    to_arrays=lambda c: {"full": c.data},
    from_arrays=_full_from_arrays,
)


# --------------------------------------------------------------------------- block and kfac
def _per_layer_matvec(c, v: np.ndarray, apply: Callable) -> np.ndarray:
    """F v for a block-diagonal F, `apply(index, block_slice, layer, v)` giving one block's product."""
    out = np.empty_like(v, dtype=np.result_type(v, c.diagonal))
    for index, (w, b, shape) in enumerate(c.layers()):
        block = slice(w.start, (b or w).stop)
        out[block] = apply(c.data[index], v, w, b, shape)
    return out


def _block_from_arrays(body: dict, layout: Layout, source: str):
    data = []
    for module, (out, inp), bias in zip(_modules(layout.names), layout.linear_shapes, layout.has_bias, strict=True):
        key, size = f"block.{module}", out * inp + out * int(bias)
        item = body.get(key)
        if item is None or item.shape != (size, size):
            raise ValueError(f"{source}: key {key!r} missing or not of shape ({size}, {size})")
        data.append(item)
    return data


BLOCK = Structure(
    "block", "per Linear layer, the (P_l, P_l) diagonal block of full", False,
    diagonal=lambda c: np.concatenate([np.diagonal(b) for b in c.data]),
    to_dense=lambda c: block_diag(*c.data),
    matvec=lambda c, v: _per_layer_matvec(c, v, lambda block, v, w, b, shape: block @ v[w.start:(b or w).stop]),
    to_arrays=lambda c: {f"block.{m}": item for m, item in zip(_modules(c.param_names), c.data, strict=True)},
    from_arrays=_block_from_arrays,
)


# --------------------------------------------------------------------------- kfac: one row per bias convention
@dataclass(frozen=True)
class KfacBias:
    """One KFAC bias convention (module docstring): how one Linear layer's factors make its block.

    Every callable takes the layer's factors tuple and has_bias; ``matvec`` also the slices of
    the weight and bias entries of v and the layer's (out, in).
    """

    name: str
    description: str
    block: Callable  # (factors, has_bias) -> (P_l, P_l) dense, [vec_row(W), b] order
    diagonal: Callable  # (factors, has_bias) -> (P_l,)
    matvec: Callable  # (factors, v, w, b, shape) -> (P_l, ...)
    to_arrays: Callable  # (module, factors) -> {key: array}
    from_arrays: Callable  # (body, module, (out, in), has_bias, source) -> factors


def _joined_block(factors, has_bias: bool) -> np.ndarray:
    """G (x) A reordered from the augmented [W | b] row-major order to [vec_row(W), b]."""
    A, G = factors
    n_out, n_aug = G.shape[0], A.shape[0]
    n_in = n_aug - int(has_bias)
    order = [o * n_aug + i for o in range(n_out) for i in range(n_in)]
    if has_bias:
        order += [o * n_aug + n_in for o in range(n_out)]
    return np.kron(G, A)[np.ix_(order, order)]


def _joined_diagonal(factors, has_bias: bool) -> np.ndarray:
    A, G = factors
    a_diag, g_diag = np.diagonal(A), np.diagonal(G)
    n_in = A.shape[0] - int(has_bias)
    weight = np.outer(g_diag, a_diag[:n_in]).ravel()
    return np.concatenate([weight, g_diag * a_diag[-1]]) if has_bias else weight


def _joined_matvec(factors, v: np.ndarray, w: slice, b: slice | None, shape) -> np.ndarray:
    """(G (x) A) vec_row(Vbar) = vec_row(G Vbar A), Vbar = [V_W | v_b] : (out, in [+1])."""
    A, G = factors
    n_out, n_in = shape
    tail = v.shape[1:]
    vbar = v[w].reshape(n_out, n_in, *tail)
    if b is not None:
        vbar = np.concatenate([vbar, v[b].reshape(n_out, 1, *tail)], axis=1)
    result = np.einsum("oj,jk...,ik->oi...", G, vbar, A)
    out = result[:, :n_in].reshape(n_out * n_in, *tail)
    return out if b is None else np.concatenate([out, result[:, n_in]])


def _joined_from_arrays(body: dict, module: str, shape, has_bias: bool, source: str):
    out, a = shape[0], shape[1] + int(has_bias)
    A, G = body.get(f"kfac.{module}.A"), body.get(f"kfac.{module}.G")
    if A is None or G is None or A.shape != (a, a) or G.shape != (out, out):
        raise ValueError(f"{source}: keys 'kfac.{module}.A' ({a}, {a}) and 'kfac.{module}.G' ({out}, {out}) expected "
                         f"(bias convention 'joined')")
    return A, G


def _separate_block(factors, has_bias: bool) -> np.ndarray:
    """block_diag(G (x) A, Gb): the weight block in vec_row(W) order, then the bias block."""
    A, G, bias_G = factors
    weight = np.kron(G, A)
    return block_diag(weight, bias_G) if has_bias else weight


def _separate_diagonal(factors, has_bias: bool) -> np.ndarray:
    A, G, bias_G = factors
    weight = np.outer(np.diagonal(G), np.diagonal(A)).ravel()
    return np.concatenate([weight, np.diagonal(bias_G)]) if has_bias else weight


def _separate_matvec(factors, v: np.ndarray, w: slice, b: slice | None, shape) -> np.ndarray:
    """[vec_row(G V_W A), Gb v_b] with V_W : (out, in) the weight part of v."""
    A, G, bias_G = factors
    n_out, n_in = shape
    tail = v.shape[1:]
    out = np.einsum("oj,jk...,ik->oi...", G, v[w].reshape(n_out, n_in, *tail), A).reshape(n_out * n_in, *tail)
    return out if b is None else np.concatenate([out, np.einsum("oj,j...->o...", bias_G, v[b])])


def _separate_to_arrays(module: str, factors) -> dict:
    A, G, bias_G = factors
    arrays = {f"kfac.{module}.A": A, f"kfac.{module}.G": G}
    if bias_G is not None:
        arrays[f"kfac.{module}.bias_G"] = bias_G
    return arrays


def _separate_from_arrays(body: dict, module: str, shape, has_bias: bool, source: str):
    out, inp = shape
    A, G = body.get(f"kfac.{module}.A"), body.get(f"kfac.{module}.G")
    bias_G = body.get(f"kfac.{module}.bias_G")
    if A is None or G is None or A.shape != (inp, inp) or G.shape != (out, out):
        raise ValueError(f"{source}: keys 'kfac.{module}.A' ({inp}, {inp}) and 'kfac.{module}.G' ({out}, {out}) expected "
                         f"(bias convention 'separate')")
    if has_bias and (bias_G is None or bias_G.shape != (out, out)):
        raise ValueError(f"{source}: key 'kfac.{module}.bias_G' ({out}, {out}) expected: layer {module!r} has a bias "
                         f"(bias convention 'separate')")
    return A, G, bias_G if has_bias else None


KFAC_BIAS_TABLE: dict[str, KfacBias] = {row.name: row for row in (
    KfacBias("joined", "bias as a column of ones in A: block G (x) A, A = mean [a, 1][a, 1]^T",
             _joined_block, _joined_diagonal, _joined_matvec,
             lambda module, factors: {f"kfac.{module}.A": factors[0], f"kfac.{module}.G": factors[1]},
             _joined_from_arrays),
    KfacBias("separate", "weight block G (x) A with A = mean a a^T, bias block Gb (= G), no W-b cross terms",
             _separate_block, _separate_diagonal, _separate_matvec, _separate_to_arrays, _separate_from_arrays),
)}
KFAC_BIASES = tuple(KFAC_BIAS_TABLE)


def kfac_bias_from_keys(keys) -> str:
    """The convention of a kfac file without '__kfac_bias__': 'separate' if it has '.bias_G' keys, else 'joined'."""
    return "separate" if any(str(k).startswith("kfac.") and str(k).endswith(".bias_G") for k in keys) else "joined"


def _kfac_layers(c):
    """(factors, has_bias, convention row) per Linear layer of a kfac Curvature."""
    row = KFAC_BIAS_TABLE[c.kfac_bias]
    return [(factors, has_bias, row) for factors, has_bias in zip(c.data, c.layer_has_bias, strict=True)]


def _kfac_to_arrays(c) -> dict:
    arrays = {}
    for module, (factors, _, row) in zip(_modules(c.param_names), _kfac_layers(c), strict=True):
        arrays.update(row.to_arrays(module, factors))
    return arrays


def _kfac_from_arrays(body: dict, layout: Layout, source: str):
    row = KFAC_BIAS_TABLE[layout.kfac_bias]
    modules = _modules(layout.names)
    data = [row.from_arrays(body, module, shape, bias, source)
            for module, shape, bias in zip(modules, layout.linear_shapes, layout.has_bias, strict=True)]
    expected = set()
    for module, factors in zip(modules, data, strict=True):
        expected |= set(row.to_arrays(module, factors))
    unknown = sorted(k for k in body if k not in expected)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} in a kfac file with bias convention {layout.kfac_bias!r}; "
                         f"expected {sorted(expected)}")
    return data


KFAC = Structure(
    "kfac", "per Linear layer, the Kronecker factors of G_l (x) A_l (joined or separate bias, KFAC_BIAS_TABLE)", True,
    diagonal=lambda c: np.concatenate([row.diagonal(f, bias) for f, bias, row in _kfac_layers(c)]),
    to_dense=lambda c: block_diag(*[row.block(f, bias) for f, bias, row in _kfac_layers(c)]),
    matvec=lambda c, v: _per_layer_matvec(c, v, lambda f, v, w, b, shape: KFAC_BIAS_TABLE[c.kfac_bias].matvec(f, v, w, b, shape)),
    to_arrays=_kfac_to_arrays,
    from_arrays=_kfac_from_arrays,
)

STRUCTURE_TABLE: dict[str, Structure] = {row.name: row for row in (DIAG, FULL, BLOCK, KFAC)}
STRUCTURES = tuple(STRUCTURE_TABLE)


def describe(names=STRUCTURES) -> str:
    """The rows' descriptions, one line "  <name>  <description>" per structure (the commands' --help)."""
    width = max(len(name) for name in names)
    return "\n".join(f"  {name:<{width}}  {STRUCTURE_TABLE[name].description}" for name in names)
