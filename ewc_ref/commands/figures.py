"""Regenerate the report's figures from computed numbers: PNG + the arrays as .npz next to it.

  laplace       Fig. 3: true posterior vs Laplace vs diagonal-Fisher Gaussian (1-D and 2-D)
  trajectories  Fig. 4: SGD, L2 and EWC on task B after task A over both tasks' loss contours
  accuracy      accuracy matrices of SGD, L2 and EWC in the three scenarios (small demo run)
  estimators    empirical vs exact Fisher vs Hessian diagonal, one point per parameter

Each NAME.png comes with NAME.npz holding every array drawn (ewc_ref/figures.py documents the
keys), both written atomically. PNGs need matplotlib (pip install 'ewc_ref[plot]');
--data-only writes the .npz files without it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..figures import FIGURES, make_figure, require_matplotlib


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="figures", metavar="DIR",
                        help="output folder, created if missing (default: ./figures)")
    parser.add_argument("--only", choices=FIGURES, action="append", metavar="NAME",
                        help="make only this figure (repeatable): " + ", ".join(FIGURES))
    parser.add_argument("--data-only", action="store_true",
                        help="write the .npz data files only (no matplotlib needed)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args) -> int:
    names = list(dict.fromkeys(args.only)) if args.only else list(FIGURES)
    plt = None
    if not args.data_only:
        try:
            plt = require_matplotlib()
        except ImportError as error:
            raise OSError(f"{error} (or use --data-only for the .npz files alone)") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        if not args.quiet:
            print(f"figures: {name} ...", file=sys.stderr, flush=True)
        written = make_figure(name, out, png=not args.data_only, plt=plt)
        if not args.quiet:
            print(f"figures: wrote {', '.join(map(str, written))} ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr)
    return 0
