"""Regenerate the report's figures from computed numbers: PNG + the arrays as .npz next to it.

  laplace       Fig. 3: true posterior vs Laplace vs diagonal-Fisher Gaussian (1-D and 2-D)
  trajectories  Fig. 4: SGD, L2 and EWC on task B after task A over both tasks' loss contours
  accuracy      accuracy matrices of SGD, L2 and EWC in the three scenarios (small demo run)
  estimators    empirical vs exact Fisher vs Hessian diagonal, one point per parameter

Each NAME.png comes with NAME.npz holding every array drawn (ewc_ref/figures.py documents the
keys); the files are made in a staging folder beside DIR and moved in only when every figure
is made, so an interrupted run leaves DIR as it was. PNGs need matplotlib (pip install 'ewc_ref[plot]');
--data-only writes the .npz files without it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..atomic import atomic_folder
from ..figures import FIGURES, make_figure, require_matplotlib
from ..progress import Progress
from ._args import add_json, add_output, add_quiet, output_folder, write_json

OUTPUT_IS_FOLDER = True


def add_arguments(parser) -> None:
    add_output(parser, required=False, type=output_folder, default=Path("figures"), metavar="DIR",
               help="output folder, created if missing (default: ./figures)")
    parser.add_argument("--only", choices=FIGURES, action="append", metavar="NAME",
                        help="make only this figure (repeatable): " + ", ".join(FIGURES))
    parser.add_argument("--data-only", action="store_true",
                        help="write the .npz data files only (no matplotlib needed)")
    add_json(parser, "the files written per figure")
    add_quiet(parser)


def run(args) -> int:
    names = list(dict.fromkeys(args.only)) if args.only else list(FIGURES)
    plt = None
    if not args.data_only:
        try:
            plt = require_matplotlib()
        except ImportError as error:
            raise OSError(f"{error} (or use --data-only for the .npz files alone)") from None
    out = args.output
    progress = Progress(len(names), "figures", enabled=not args.quiet, unit="figures")
    report = {"output": str(out), "figures": {}}
    # Staged beside OUT and moved in only when every figure is made (ewc_ref.atomic.atomic_folder): an
    # interrupted run leaves OUT as it was; files of other names in OUT are never touched.
    with atomic_folder(out) as staging:
        for name in names:
            start = time.perf_counter()
            written = make_figure(name, staging, png=not args.data_only, plt=plt)
            report["figures"][name] = {"files": [str(out / path.name) for path in written],
                                       "seconds": time.perf_counter() - start}
            progress.update()
    progress.close()
    if args.json:
        write_json(report)
    else:
        for name, entry in report["figures"].items():
            print(f"{name:<13} {', '.join(entry['files'])} ({entry['seconds']:.1f} s)")
    return 0
