"""Compute a curvature matrix of MODEL's mean loss on DATA and write it as a curvature npz.

Estimators and their normalisation are those of EXCHANGE.md (all are means over the N
examples). Structures diag and full are EXCHANGE.md's; block and kfac are ewc_ref extensions.
"""

from __future__ import annotations

import sys

from ..curvature.estimate import fisher
from ..curvature.estimators import ESTIMATORS
from ..curvature.structures import STRUCTURES
from ..io import load_data, load_model
from ._common import check_output_path


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz")
    parser.add_argument("data", metavar="DATA", help="data.npz")
    parser.add_argument("--estimator", required=True, choices=ESTIMATORS)
    parser.add_argument("--structure", default="diag", choices=STRUCTURES, help="default: diag")
    parser.add_argument("--samples", type=int, default=None, help="labels per example (mc only; default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch size B (batched only; required there)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label sampler (mc only; default 0)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per streamed chunk (default: ~32 MiB of temporaries)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args) -> int:
    check_output_path(args.output)
    model, lik = load_model(args.model)
    x, y = load_data(args.data, model, lik)
    curvature = fisher(
        model, lik, x, y, estimator=args.estimator, structure=args.structure, samples=args.samples,
        batch_size=args.batch_size, rng=args.seed if args.estimator == "mc" else None,
        chunk_size=args.chunk_size, progress=not args.quiet,
    )
    curvature.save(args.output)
    if not args.quiet:
        print(f"wrote {args.output}: {args.estimator} {args.structure}, P = {curvature.n_params}, N = {curvature.n}", file=sys.stderr)
    return 0
