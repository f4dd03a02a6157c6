"""Compare two curvature npz files key by key: exit 0 if they match, 1 if not, 2 on bad input.

An entry matches when |a - b| <= atol + rtol * |b| (B is the reference). The report gives,
per key, the largest absolute and relative error and the worst entry; --json prints the same as
one JSON object (docs/file-format.md). The exit status is the verdict either way.

Both files hold the same structure: diag, full, block (key by key) or kfac. Two kfac files are compared on their Kronecker PRODUCTS, block by block in the Frobenius norm
(|G_a (x) A_a - G_b (x) A_b| <= atol + rtol |G_b (x) A_b|), never factor by factor: libraries
split the scale between A and G differently (ewc_ref/verify/kfac.py). Both must use the same
bias convention.
"""

from __future__ import annotations

import numpy as np

from ..curvature.result import read_curvature_arrays
from ..curvature.structures import STRUCTURES
from ..verify.kfac import compare_kfac, is_kfac
from ._args import add_json, add_quiet, add_report_output, number, report_to, write_json

#: The structures A and B may hold; the help text names each (tests/docs/test_docs.py).
ACCEPTS = {"structures": STRUCTURES}


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A.npz")
    parser.add_argument("b", metavar="B.npz", help="the reference")
    parser.add_argument("--rtol", type=number(0.0), default=1e-10, help="relative tolerance >= 0 (default 1e-10)")
    parser.add_argument("--atol", type=number(0.0), default=None,
                        help="absolute tolerance >= 0 (default: 1e-12 x the largest |entry| of B)")
    add_report_output(parser)
    add_json(parser, "the per-key errors and the verdict")
    add_quiet(parser)


def _body(path):
    meta, body, _ = read_curvature_arrays(path)
    if not body:
        held = f"only the metadata {sorted(meta)}" if meta else "no arrays at all"
        raise ValueError(f"{path}: holds no curvature arrays ({held}); expected one array per parameter (diag) "
                         "or 'full', 'block.*', 'kfac.*' keys")
    return meta, body


def _check_same_layout(meta_a, a, meta_b, b, name_a, name_b) -> None:
    """Same structure (when both files say), same keys, same shapes; ValueError otherwise."""
    for key in ("__structure__",):
        if key in meta_a and key in meta_b and str(meta_a[key]) != str(meta_b[key]):
            raise ValueError(f"{key}: {name_a} is {str(meta_a[key])!r} but {name_b} is {str(meta_b[key])!r}")
    if set(a) != set(b):
        raise ValueError(f"keys differ: only in {name_a}: {sorted(set(a) - set(b))}, only in {name_b}: {sorted(set(b) - set(a))}")
    for key in b:
        if a[key].shape != b[key].shape:
            raise ValueError(f"key {key!r}: shape {a[key].shape} in {name_a} but {b[key].shape} in {name_b}")


def compare_arrays(a: dict, b: dict, rtol: float, atol: float | None) -> dict:
    """Entrywise |a - b| <= atol + rtol |b| per key; the JSON object of ``compare --json``."""
    scale = max(float(np.max(np.abs(v), initial=0.0)) for v in b.values())
    atol = 1e-12 * scale if atol is None else atol
    keys = {}
    for key in b:
        va, vb = a[key].astype(np.float64), b[key].astype(np.float64)
        diff = np.abs(va - vb)
        rel = diff / np.maximum(np.abs(vb), np.finfo(float).tiny)
        entry = {"match": bool(np.all(diff <= atol + rtol * np.abs(vb))), "max_abs_error": None,
                 "max_rel_error": None, "worst_index": None, "a": None, "b": None}
        if va.size:
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff - rtol * np.abs(vb))), va.shape))
            entry.update(max_abs_error=float(diff.max()),
                         max_rel_error=float(rel[diff > 0].max()) if np.any(diff > 0) else 0.0,
                         worst_index=list(worst), a=float(va[worst]), b=float(vb[worst]))
        keys[key] = entry
    return {"match": all(entry["match"] for entry in keys.values()), "rtol": rtol, "atol": atol, "keys": keys}


def run(args) -> int:
    meta_a, a = _body(args.a)
    meta_b, b = _body(args.b)
    if is_kfac({**meta_a, **a}) and is_kfac({**meta_b, **b}):
        result = compare_kfac(meta_a, a, meta_b, b, args.rtol, args.atol, str(args.a), str(args.b))
    else:
        _check_same_layout(meta_a, a, meta_b, b, args.a, args.b)
        result = compare_arrays(a, b, args.rtol, args.atol)
    with report_to(args.output):
        _print(args, result)
    return 0 if result["match"] else 1


def _print(args, result) -> None:
    if args.json:
        write_json(result)
    else:
        detail = "what" if result.get("products") else "worst entry (A vs B)"
        print(f"{'key':<16} {'max abs err':>12} {'max rel err':>12}  {detail}")
        for key, entry in result["keys"].items():
            if result.get("products"):
                print(f"{key:<16} {entry['max_abs_error']:12.3e} {entry['max_rel_error']:12.3e}  "
                      f"|G (x) A| difference (Frobenius){'' if entry['match'] else '  MISMATCH'}")
            elif entry["worst_index"] is not None:
                detail = f"{key}{entry['worst_index']}: {entry['a']:.17g} vs {entry['b']:.17g}"
                print(f"{key:<16} {entry['max_abs_error']:12.3e} {entry['max_rel_error']:12.3e}  {detail}"
                      f"{'' if entry['match'] else '  MISMATCH'}")
        print(f"{'match' if result['match'] else 'mismatch'} (rtol = {args.rtol:g}, atol = {result['atol']:.3g})")
