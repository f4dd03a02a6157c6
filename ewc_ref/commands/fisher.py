"""Compute a curvature matrix of MODEL's mean loss on DATA and write it as a curvature npz.

Every estimator is a mean over the N examples (docs/file-format.md, "Estimators"), with
g_n = d l_n / d theta and J_n = d f(x_n) / d theta; mc's S is --samples (labels drawn with --seed),
batched's B is --batch-size:

{estimators}

Structures (the rows of ewc_ref/curvature/structures.py):

{structures}

Structures diag and full are version 1 of the format; block (one matrix per layer) and kfac
(Kronecker factors per layer) are ewc_ref extensions. kfac's --kfac-bias: joined (default; the
bias as a column of ones in A, as nngeometry and curvlinops separate_weight_and_bias=False) or
separate (A without it and a bias block G, as laplace-torch Kron, BackPACK KFLR/KFAC, curvlinops'
default). A flag the chosen estimator or structure does not read (--samples or --seed without mc,
--batch-size without batched, --kfac-bias without kfac) is refused (exit 2).
"""

from __future__ import annotations

import sys

import numpy as np

from ..curvature.accumulator import FisherOptions
from ..curvature.estimate import fisher_with_options
from ..curvature.estimators import ESTIMATOR_TABLE, ESTIMATORS, describe
from ..curvature.structures import KFAC_BIASES, STRUCTURES
from ..curvature.structures import describe as describe_structures
from ..io import load_data, load_model
from ._args import (
    add_json,
    add_output,
    add_quiet,
    flags_named,
    integer,
    write_json,
)

if __doc__ is not None:  # the estimator list is the rows' definitions (None under python -OO)
    __doc__ = __doc__.replace("{estimators}", describe()).replace("{structures}", describe_structures())

#: the arguments that name files this command reads (ewc_ref/cli.py refuses them as -o)
#: flag -> (attribute of args, the option of the estimator table it sets)
FLAG_OPTIONS = {"--samples": ("samples", "samples"), "--seed": ("seed", "rng"), "--batch-size": ("batch_size", "batch_size")}
#: flag -> (attribute of args, the estimators whose row lists its option); any other estimator refuses it.
ESTIMATOR_FLAGS = {
    flag: (dest, tuple(name for name, row in ESTIMATOR_TABLE.items() if option in row.options))
    for flag, (dest, option) in FLAG_OPTIONS.items()
}
#: flag -> (attribute of args, the structures that read it); any other structure refuses it.
STRUCTURE_FLAGS = {"--kfac-bias": ("kfac_bias", ("kfac",))}
#: estimator -> the flags it cannot do without
REQUIRED_FLAGS = {"batched": ("--batch-size",)}
#: Python argument names in the library's errors -> the flag the user typed
FLAG_NAMES = {"samples": "--samples", "batch_size": "--batch-size", "chunk_size": "--chunk-size",
              "estimator": "--estimator", "structure": "--structure", "structure='full'": "--structure full",
              "kfac_bias": "--kfac-bias"}


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz")
    parser.add_argument("data", metavar="DATA", help="data.npz")
    parser.add_argument("--estimator", required=True, choices=ESTIMATORS, help="see the table above")
    parser.add_argument("--structure", default="diag", choices=STRUCTURES, help="default: diag")
    parser.add_argument("--kfac-bias", default=None, choices=KFAC_BIASES,
                        help="kfac only: joined (default) or separate bias blocks (see above)")
    parser.add_argument("--samples", type=integer(1), default=None, help="labels per example (mc only; default 1)")
    parser.add_argument("--batch-size", type=integer(1), default=None,
                        help="minibatch size B, 1 <= B <= N (batched only; required there)")
    parser.add_argument("--seed", type=integer(0), default=None, help="seed of the label sampler (mc only; default 0)")
    parser.add_argument("--chunk-size", type=integer(1), default=None,
                        help="rows per streamed chunk (default: ~32 MiB of temporaries)")
    add_output(parser, help="the curvature npz to write", metavar="OUT.npz")
    add_json(parser, "a summary of what was written")
    add_quiet(parser)


def check_flags(args) -> None:
    """Refuse flags the estimator does not read and require those it needs (ValueError, exit 2)."""
    for flag, (dest, estimators) in ESTIMATOR_FLAGS.items():
        if getattr(args, dest) is not None and args.estimator not in estimators:
            raise ValueError(f"{flag}: only used by --estimator {' or '.join(estimators)}, "
                             f"not by --estimator {args.estimator}")
    for flag, (dest, structures) in STRUCTURE_FLAGS.items():
        if getattr(args, dest) is not None and args.structure not in structures:
            raise ValueError(f"{flag}: only used by --structure {' or '.join(structures)}, "
                             f"not by --structure {args.structure}")
    for flag in REQUIRED_FLAGS.get(args.estimator, ()):
        if getattr(args, ESTIMATOR_FLAGS[flag][0]) is None:
            raise ValueError(f"{flag}: required by --estimator {args.estimator}")


def likely_cause(model, lik, x, y) -> str:
    """Why a curvature came out non-finite: the first stage of the computation that overflows."""
    cache = model.forward(x)[1]
    for layer, z in enumerate(cache.pre_activations):
        if not np.isfinite(z).all():
            return (f"overflow in the forward pass: the outputs of layer '{model.module_indices[layer]}.weight' are not "
                    f"finite (largest |input| {float(np.abs(x).max()):.3g}, largest |parameter| {float(np.abs(model.theta).max()):.3g})")
    f = cache.output
    if not (np.isfinite(lik.grad(f, y)).all() and np.isfinite(lik.hessian_factor(f)).all()):
        return f"overflow in the likelihood's derivatives at finite outputs ({lik!r})"
    return "overflow when multiplying finite gradients (entries of 1e154 or more square to inf)"


def run(args) -> int:
    check_flags(args)
    model, lik = load_model(args.model)
    x, y = load_data(args.data, model, lik)
    seed = (0 if args.seed is None else args.seed) if args.estimator == "mc" else None
    with flags_named(**FLAG_NAMES):
        # The options are checked once, here; x and y were checked against the model by load_data.
        options = FisherOptions.checked(args.estimator, args.structure, args.samples, args.batch_size, args.kfac_bias)
        # fisher_with_options is unguarded: a non-finite curvature is explained below (likely_cause),
        # more precisely than the API's guard (ewc_ref._validate.finite_or_refused) can
        curvature = fisher_with_options(model, lik, x, y, options, rng=seed, chunk_size=args.chunk_size,
                                        progress=not args.quiet)
    bad = curvature.first_non_finite()
    if bad is not None:  # never write a wrong number
        raise ValueError(f"the {args.estimator} curvature of parameter {bad!r} is not finite (NaN or inf): "
                         f"{likely_cause(model, lik, x, y)}; nothing was written to {args.output}")
    curvature.save(args.output)
    summary = {
        "output": str(args.output), "estimator": args.estimator, "structure": args.structure,
        "n": curvature.n, "n_params": curvature.n_params, "samples": curvature.samples,
        "batch_size": curvature.batch_size, "seed": seed, "kfac_bias": curvature.kfac_bias,
    }
    if args.json:
        write_json(summary)
    elif not args.quiet:
        bias = f" ({curvature.kfac_bias} bias)" if curvature.kfac_bias else ""
        print(f"wrote {args.output}: {args.estimator} {args.structure}{bias}, P = {curvature.n_params}, N = {curvature.n}",
              file=sys.stderr)
    return 0
