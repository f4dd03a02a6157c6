"""The structure table: how each of the four curvature structures is stored, viewed and written.

One row per structure; ``Curvature`` looks its structure up here instead of branching on the name,
so adding a structure is one row plus its tests (tests/test_curvature.py iterates the table).

=========  ===========================================  ======================================
name       data                                         npz keys (docs/file-format.md)
=========  ===========================================  ======================================
diag       (P,) the diagonal                            one per parameter, the parameter's shape
full       (P, P)                                       'full'
block      list of (P_l, P_l), one per Linear layer     'block.<module>'
kfac       list of (A_l, G_l): A_l (in_l [+1], same),   'kfac.<module>.A', 'kfac.<module>.G'
           G_l (out_l, out_l); block l = G_l (x) A_l
=========  ===========================================  ======================================

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
    """'<module>' of every Linear layer, from the '<module>.weight' names."""
    return [name.split(".")[0] for name in names if name.endswith(".weight")]


def _kfac_block(A: np.ndarray, G: np.ndarray, has_bias: bool) -> np.ndarray:
    """G (x) A reordered from the augmented [W | b] row-major order to [vec_row(W), b]."""
    n_out, n_aug = G.shape[0], A.shape[0]
    n_in = n_aug - int(has_bias)
    order = [o * n_aug + i for o in range(n_out) for i in range(n_in)]
    if has_bias:
        order += [o * n_aug + n_in for o in range(n_out)]
    return np.kron(G, A)[np.ix_(order, order)]


# --------------------------------------------------------------------------- diag
def _diag_from_arrays(body: dict, layout: Layout, source: str):
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
    for index, (w, b, shape) in enumerate(c._layers()):
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


def _kfac_diagonal(c) -> np.ndarray:
    parts = []
    for (A, G), has_bias in zip(c.data, c.layer_has_bias, strict=True):
        a_diag, g_diag = np.diagonal(A), np.diagonal(G)
        n_in = A.shape[0] - int(has_bias)
        parts.append(np.outer(g_diag, a_diag[:n_in]).ravel())
        if has_bias:
            parts.append(g_diag * a_diag[-1])
    return np.concatenate(parts)


def _kfac_layer_matvec(factors, v: np.ndarray, w: slice, b: slice | None, shape) -> np.ndarray:
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


def _kfac_to_arrays(c) -> dict:
    arrays = {}
    for module, (A, G) in zip(_modules(c.param_names), c.data, strict=True):
        arrays[f"kfac.{module}.A"], arrays[f"kfac.{module}.G"] = A, G
    return arrays


def _kfac_from_arrays(body: dict, layout: Layout, source: str):
    data = []
    for module, (out, inp), bias in zip(_modules(layout.names), layout.linear_shapes, layout.has_bias, strict=True):
        A, G = body.get(f"kfac.{module}.A"), body.get(f"kfac.{module}.G")
        a = inp + int(bias)
        if A is None or G is None or A.shape != (a, a) or G.shape != (out, out):
            raise ValueError(f"{source}: keys 'kfac.{module}.A' ({a}, {a}) and 'kfac.{module}.G' ({out}, {out}) expected")
        data.append((A, G))
    return data


KFAC = Structure(
    "kfac", "per Linear layer, the Kronecker factors (A_l, G_l) of G_l (x) A_l", True,
    diagonal=_kfac_diagonal,
    to_dense=lambda c: block_diag(*[_kfac_block(A, G, bias) for (A, G), bias in zip(c.data, c.layer_has_bias, strict=True)]),
    matvec=lambda c, v: _per_layer_matvec(c, v, _kfac_layer_matvec),
    to_arrays=_kfac_to_arrays,
    from_arrays=_kfac_from_arrays,
)

STRUCTURE_TABLE: dict[str, Structure] = {row.name: row for row in (DIAG, FULL, BLOCK, KFAC)}
STRUCTURES = tuple(STRUCTURE_TABLE)
