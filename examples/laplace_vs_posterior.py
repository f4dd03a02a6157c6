"""The true posterior, its Laplace Gaussian and EWC's diagonal-Fisher Gaussian, from real numbers.

Bayesian logistic regression with two weights (a single Linear layer with the bernoulli
likelihood), inputs correlated 0.9, N = 30 examples, prior N(0, 4 I). The posterior is
integrated on a grid (ewc_ref.bayes.grid); the Laplace Gaussian uses the exact Hessian at the MAP,
the EWC Gaussian the diagonal of N F + prior precision (ewc_ref.bayes.laplace).

    python examples/laplace_vs_posterior.py [-o DIR]

prints the KL tables and writes laplace.npz and, if matplotlib is installed (pip install
'ewc_ref[plot]'), laplace.png into DIR (created if missing; default: a new temporary folder). The
folder is printed before anything is written.

The computations live in ewc_ref.bayes.examples (`figure_data()`, `bernstein_von_mises_table()`,
`sequential_table()`) and the drawing in ewc_ref.figures; this script prints and plots them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from ewc_ref.bayes.examples import bernstein_von_mises_table, figure_data, sequential_table
from ewc_ref.figures import make_figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The true posterior, its Laplace Gaussian and EWC's Gaussian")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="folder for laplace.npz and laplace.png (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = args.output if args.output is not None else Path(tempfile.mkdtemp(prefix="ewc_ref_laplace_"))
    print(f"output folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    data = figure_data()
    print(f"N = 30, rho = 0.9: KL(posterior || Laplace) = {data['kl_laplace']:.4g}, "
          f"KL(posterior || diag Fisher) = {data['kl_diag_fisher']:.4g}; log p(D) grid "
          f"{data['log_evidence']:.6f} +- {data['log_evidence_error']:.1g}, Laplace {data['log_evidence_laplace']:.6f}")
    w_true, kl = bernstein_von_mises_table()
    print("KL(grid || Laplace), logistic regression, N = 10 / 100 / 1000")
    for w, row in zip(w_true, kl, strict=True):
        print(f"  w_true = [{w[0]:+.2f}, {w[1]:+.2f}]: " + "  ".join(f"{v:.3e}" for v in row))
    print("  median: " + "  ".join(f"{v:.3e}" for v in np.median(kl, axis=0)))
    print("KL(exact sequential posterior || A's posterior replaced by a Gaussian), N_B = 30")
    for n_a, row in sequential_table().items():
        print(f"  N_A = {n_a}: diag Fisher (EWC) {row['fisher_diag']:.4g}, full GGN {row['ggn']:.4g}, "
              f"full Hessian {row['hessian']:.4g}; eq (4) evidence check {row['eq4_check']:.1e}")
    try:
        written = make_figure("laplace", out, data=data)
    except ImportError as error:  # no matplotlib: the data alone
        print(f"no figure: {error}", file=sys.stderr)
        written = make_figure("laplace", out, png=False, data=data)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
