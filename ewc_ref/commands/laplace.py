"""The Laplace log evidence of MODEL on DATA, as laplace-torch's log_marginal_likelihood computes it.

The model's weights are taken as the MAP; the prior is N(0, I / ALPHA); the likelihood is SUMMED
over the N rows, so the posterior precision is N C + ALPHA I with C a curvature of the mean loss:

  log p(D) ~ log p(D | theta) + log N(theta; 0, I/ALPHA) + P/2 log 2 pi - 1/2 log det(N C + ALPHA I)

  --estimator  the curvature C (default exact, the GGN = the Fisher here):
{estimators}
  --structure  diag (default), full, kfac (log det from the eigenvalues of the Kronecker factors,
               the prior added exactly: laplace-torch's 'kron' with --kfac-bias separate)

A precision that is not positive definite (the Hessian at a point that is not a minimum) exits 2
with its smallest eigenvalue. docs/file-format.md, "laplace".

--estimator empirical with a gaussian likelihood: ewc_ref's empirical Fisher is the outer product of
the gradients of the Gaussian NLL, g_n = J_n^T (f_n - y_n) / sigma^2, so N C = sum_n J^T r r^T J / sigma^4
= 1/(4 sigma^4) x the empirical Fisher of torch MSELoss(reduction='sum'). laplace-torch's regression
EF halves that summed-MSE EF (the factor 1/2 that is right for its GGN) and divides by sigma^2:
1/(2 sigma^2) x, i.e. 2 sigma^2 x ewc_ref's (2 x at sigma = 1). Its log_marginal_likelihood with
the empirical Fisher therefore differs from this command's (by 1-7% on the docs' examples); the
exact Fisher (GGN) agrees. docs/bayes-and-laplace.md, "The empirical Fisher of a Gaussian".
"""

from __future__ import annotations

from ..bayes.evidence import EVIDENCE_ESTIMATORS, EVIDENCE_STRUCTURES, KFAC_BIASES, laplace_evidence
from ..curvature.estimators import describe
from ..io import load_data, load_model
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

if __doc__ is not None:  # the estimators' definitions are their table rows (None under python -OO)
    __doc__ = __doc__.replace("{estimators}", "\n".join("  " + line for line in describe(EVIDENCE_ESTIMATORS, 98).splitlines()))

FLAG_NAMES = {"prior_precision": "--prior-precision", "estimator": "--estimator", "structure": "--structure",
              "kfac_bias": "--kfac-bias", "chunk_size": "--chunk-size", "structure='full'": "--structure full"}


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz; its weights are taken as the MAP")
    parser.add_argument("data", metavar="DATA", help="data.npz")
    parser.add_argument("--prior-precision", required=True, type=number(0.0, open_low=True), metavar="ALPHA",
                        help="precision alpha > 0 of the prior N(0, I / alpha)")
    parser.add_argument("--estimator", default="exact", choices=EVIDENCE_ESTIMATORS, help="curvature C (default: exact)")
    parser.add_argument("--structure", default="diag", choices=EVIDENCE_STRUCTURES, help="default: diag")
    parser.add_argument("--kfac-bias", default=None, choices=KFAC_BIASES,
                        help="kfac only: bias column joined to A (default) or separate bias blocks (laplace-torch)")
    parser.add_argument("--chunk-size", type=integer(1), default=None,
                        help="rows per streamed chunk (default: ~32 MiB of temporaries)")
    add_report_output(parser)
    add_json(parser, "the evidence and its parts (docs/file-format.md)")
    add_quiet(parser)


def run(args) -> int:
    if args.kfac_bias is not None and args.structure != "kfac":
        raise ValueError(f"--kfac-bias: only used by --structure kfac, not by --structure {args.structure}")
    model, lik = load_model(args.model)
    x, y = load_data(args.data, model, lik)
    with flags_named(**FLAG_NAMES):
        evidence = laplace_evidence(model, lik, x, y, prior_precision=args.prior_precision, estimator=args.estimator,
                                    structure=args.structure, kfac_bias=args.kfac_bias, chunk_size=args.chunk_size,
                                    progress=not args.quiet and not args.json)
    report = {"model": str(args.model), "data": str(args.data), **evidence.to_dict()}
    with report_to(args.output):
        if args.json:
            write_json(report)
        else:
            _print(report)
    return 0


def _print(report: dict) -> None:
    bias = f", kfac bias {report['kfac_bias']}" if report["kfac_bias"] else ""
    print(f"model               {report['model']}  (P = {report['n_params']})")
    print(f"data                {report['data']}  (N = {report['n']})")
    print(f"curvature           {report['estimator']} {report['structure']}{bias}; prior N(0, I / {report['prior_precision']:g})")
    print(f"log evidence        {report['log_evidence']:.12g}")
    print(f"  log likelihood    {report['log_likelihood']:.12g}  (summed over N)")
    print(f"  log prior         {report['log_prior']:.12g}")
    print(f"  log det precision {report['log_det_precision']:.12g}  (N C + alpha I)")
