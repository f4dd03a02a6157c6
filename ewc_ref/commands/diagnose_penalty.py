"""Name a foreign EWC penalty: its anchor, curvature, combination over tasks and lambda (or none).

ewc-ref diagnose-penalty MODEL_1 [MODEL_2 ...] --data DATA_1 [DATA_2 ...] THEIRS_PENALTY

MODEL_t holds theta*_t, the weights after past task t, and DATA_t that task's data (rows in the order
THEIR Fisher iterated over them); THEIRS_PENALTY (the last path) holds THEIR penalty's value and
gradient at M >= 2 parameter vectors: keys theta (M, P), value (M,), grad (M, P) (docs/file-format.md,
section 11; M >= 3 to test that it is a quadratic). Reads W and the anchor of grad = W (theta - a),
then names the combination (separate, accumulated, online with its gamma, latest only, l2), the
anchor (which task's optimum, a mean, a mixture), the Fisher of each task (diagnose: estimator, B, S)
and, with --lambda, the factor lambda_paper / lambda to the report's eq. (11), lambda/2 sum F d^2.
Exit 0 on a verdict (including "none"), 2 on bad input.
"""

from __future__ import annotations

import sys

from ..continual.penalty_names import diagnose_penalty
from ..io import load_data, load_model
from ..verify.penalty_fit import read_penalty_samples
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


def add_arguments(parser) -> None:
    parser.add_argument("models", metavar="MODEL", nargs="+", help="model.npz after each past task, oldest first")
    parser.add_argument("--data", metavar="DATA", nargs="+", required=True,
                        help="data.npz of each past task, in the order of the MODELs; THEIRS_PENALTY may follow as the last path")
    parser.add_argument("--lambda", dest="lam", type=number(0.0, open_low=True), metavar="L",
                        help="YOUR lambda: the verdict then gives lambda_paper = factor x yours")
    parser.add_argument("--gamma", type=number(0.0, 1.0, open_low=True), metavar="G",
                        help="YOUR online decay: compared with the fitted gamma and its square (double decay)")
    parser.add_argument("--batch-sizes", type=integer(2), nargs="+", metavar="B",
                        help="fit exactly these minibatch sizes as 'batched' (default: every B = 2..N, on a few entries of W when large)")
    parser.add_argument("--tol", type=number(0.0, 1.0, open_low=True, open_high=True),
                        help="round-off threshold on relative residuals (default 1e-8, 1e-4 for float32 gradients; a value of "
                             "float32 numbers beside float64 gradients: at least 9.5e-7 for the value)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of diagnose's statistical tests (default 0)")
    add_report_output(parser)
    add_json(parser, "the verdict (docs/file-format.md) instead of text")
    add_quiet(parser)


def _split_paths(models: list, data: list) -> tuple[list, list, str]:
    """(models, data, theirs): THEIRS_PENALTY is the last path, after the DATA list or after the MODELs."""
    if len(data) == len(models) + 1:
        return models, data[:-1], data[-1]
    if len(models) == len(data) + 1:
        return models[:-1], data, models[-1]
    raise ValueError(f"--data: expected one DATA per MODEL and THEIRS_PENALTY last, got {len(models)} path(s) before "
                     f"--data and {len(data)} after it")


def run(args) -> int:
    model_paths, data_paths, theirs_path = _split_paths(list(args.models), list(args.data))
    loaded = [load_model(path) for path in model_paths]
    models, lik = [m for m, _ in loaded], loaded[0][1]
    for path, (_, other) in zip(model_paths, loaded, strict=True):
        if other.name != lik.name or getattr(other, "sigma", None) != getattr(lik, "sigma", None):
            raise ValueError(f"{path}: likelihood {other.name!r} differs from {model_paths[0]}'s {lik.name!r}")
    data = [load_data(path, m, lik) for path, m in zip(data_paths, models, strict=True)]
    theta, value, grad = read_penalty_samples(theirs_path, models[0].n_params)
    with flags_named(tol="--tol", batch_sizes="--batch-sizes", lam="--lambda", gamma="--gamma"):
        result = diagnose_penalty(models, lik, data, (theta, value, grad), lam=args.lam, gamma=args.gamma,
                                  batch_sizes=args.batch_sizes,
                                  tol=args.tol, rng=args.seed, progress=not args.quiet and not args.json)
    with report_to(args.output):
        if args.json:
            write_json(result.to_dict())
        else:
            sys.stdout.write(result.report(theirs_name=str(theirs_path)) + "\n")
    return 0
