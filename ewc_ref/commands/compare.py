"""Compare two curvature npz files key by key: exit 0 if they match, 1 if not, 2 on bad input.

An entry matches when |a - b| <= atol + rtol * |b| (B is the reference). The report gives,
per key, the largest absolute and relative error and the worst entry.
"""

from __future__ import annotations

import numpy as np

from ..curvature.result import split_curvature_arrays
from ..io import read_npz


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A.npz")
    parser.add_argument("b", metavar="B.npz", help="the reference")
    parser.add_argument("--rtol", type=float, default=1e-10, help="relative tolerance (default 1e-10)")
    parser.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance (default: 1e-12 x the largest |entry| of B)")


def _body(path):
    return split_curvature_arrays(read_npz(path, "curvature file"), str(path))


def run(args) -> int:
    if not (args.rtol >= 0) or (args.atol is not None and not (args.atol >= 0)):
        raise ValueError("--rtol/--atol: expected non-negative numbers")
    meta_a, a = _body(args.a)
    meta_b, b = _body(args.b)
    for key in ("__structure__",):
        if key in meta_a and key in meta_b and str(meta_a[key]) != str(meta_b[key]):
            raise ValueError(f"{key}: {args.a} is {str(meta_a[key])!r} but {args.b} is {str(meta_b[key])!r}")
    if set(a) != set(b):
        raise ValueError(f"keys differ: only in {args.a}: {sorted(set(a) - set(b))}, only in {args.b}: {sorted(set(b) - set(a))}")
    for key in b:
        if a[key].shape != b[key].shape:
            raise ValueError(f"key {key!r}: shape {a[key].shape} in {args.a} but {b[key].shape} in {args.b}")
    scale = max(float(np.max(np.abs(v), initial=0.0)) for v in b.values())
    atol = 1e-12 * scale if args.atol is None else args.atol
    print(f"{'key':<16} {'max abs err':>12} {'max rel err':>12}  worst entry (A vs B)")
    all_match = True
    for key in b:
        va, vb = a[key].astype(np.float64), b[key].astype(np.float64)
        diff = np.abs(va - vb)
        rel = diff / np.maximum(np.abs(vb), np.finfo(float).tiny)
        ok = bool(np.all(diff <= atol + args.rtol * np.abs(vb)))
        all_match &= ok
        if va.size:
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff - args.rtol * np.abs(vb))), va.shape))
            detail = f"{key}{list(worst)}: {va[worst]:.17g} vs {vb[worst]:.17g}"
            print(f"{key:<16} {diff.max():12.3e} {rel[diff > 0].max() if np.any(diff > 0) else 0.0:12.3e}  {detail}{'' if ok else '  MISMATCH'}")
    print(f"{'match' if all_match else 'mismatch'} (rtol = {args.rtol:g}, atol = {atol:.3g})")
    return 0 if all_match else 1
