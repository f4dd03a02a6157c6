"""Tell what a foreign Fisher file is: which estimator, which scale, which batch size (or none).

Compares THEIRS (a diag, full or kfac curvature npz, docs/file-format.md; kfac in either bias
convention, joined or separate) with every estimator computed on the same MODEL and DATA --
{candidates} -- and prints the verdict, the scale in words, the runner-up and the margin, and the
correct EWC Fisher. Exit 0 on a diagnosis (including "none"), 2 on bad input.
"""

from __future__ import annotations

import sys
import textwrap

from ..curvature.estimators import ESTIMATOR_TABLE, ESTIMATORS
from ..curvature.result import THEIRS_STRUCTURES
from ..io import load_data, load_loader, load_model
from ..verify.diagnosis import diagnose
from ._args import (
    add_json,
    add_quiet,
    add_report_output,
    flags_named,
    integer,
    number,
    report_to,
    write_json,
)

#: What THEIRS may be and what it is fitted against; the help text names each (tests/docs/test_docs.py).
ACCEPTS = {"structures": THEIRS_STRUCTURES, "estimators": (*ESTIMATORS, "shuffled")}
#: How diagnose treats a row of the estimator table, in the help text's words.
_TREATMENT = {"per-batch-size": "for every B", "statistical": "judged statistically",
              "fit-small": "when P N is small or with --hessian"}


def candidates() -> str:
    """The help text's list of candidates, from the estimator table's rows (written once, there)."""
    words = []
    for name in ESTIMATORS:
        row = ESTIMATOR_TABLE[name]
        notes = [note for note in (row.diagnose_note, _TREATMENT.get(row.diagnose, "")) if note]
        words.append(f"{name} ({'; '.join(notes)})" if notes else name)
    return (", ".join(words) + " and shuffled (a shuffled loader's minibatch Fisher, judged statistically); a loader at "
            "labels sampled from the model and a random subset of rows are judged as their rivals and as causes of a "
            "'none', never named alone")


if __doc__ is not None:  # None under python -OO
    __doc__ = "\n\n".join(textwrap.fill(" ".join(part.replace("{candidates}", candidates()).split()), 100)
                           if "{candidates}" in part else part for part in __doc__.split("\n\n"))


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz (docs/file-format.md)")
    parser.add_argument("data", metavar="DATA", help="data.npz, rows in the order THEIRS iterated over them, or with "
                        "the loader's 'order' and 'batches' recorded (then the minibatch verdict is exact)")
    parser.add_argument("theirs", metavar="THEIRS", help="their curvature npz: diag (one array per parameter, or key 'flat' (P,)), full (key 'full') or kfac (keys 'kfac.<module>.A/G')")
    add_report_output(parser)
    add_json(parser, "the verdict (docs/file-format.md) instead of text")
    parser.add_argument("--batch-sizes", type=integer(1), nargs="+", metavar="B",
                        help="compute exactly these minibatch sizes (default: a screen finds the best of every B = 2..N)")
    parser.add_argument("--tol", type=number(0.0, 1.0, open_low=True, open_high=True), help="round-off threshold on the relative residual (default 1e-8, 1e-4 for float32)")
    parser.add_argument("--hessian", action="store_true", help="include the Hessian candidate even when P * N is large (slow)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the statistical tests' entry subsets and simulations (default 0)")
    add_quiet(parser)


def run(args) -> int:
    model, lik = load_model(args.model)
    x, y = load_data(args.data, model, lik)
    loader = load_loader(args.data)
    # THEIRS (read by er.diagnose's read_curvature, errors naming the file) and --batch-sizes (against N and
    # the recorded batches) are checked once, at the library's edge
    with flags_named(batch_sizes="--batch-sizes", tol="--tol"):
        result = diagnose(model, lik, x, y, args.theirs, batch_sizes=args.batch_sizes, tol=args.tol, rng=args.seed,
                          hessian=True if args.hessian else None, progress=not args.quiet and not args.json,
                          order=loader.order, batches=loader.batches)
    with report_to(args.output):
        if args.json:
            write_json(result.to_dict())
        else:
            sys.stdout.write(result.report(theirs_name=str(args.theirs)) + "\n")
    return 0
