"""Scan: does the grid posterior's error estimate bound its actual error, and how loose is it?

For every density of a table with closed-form log Z, mean and covariance (tests/support/grid_cases.py:
skewed, heavy-tailed, flat-topped, Gaussian, correlated 2-d and 3-d, with large offsets of
log q and of the location to probe round-off) and every grid size n, run
`ewc_ref.grid_posterior` and compare

    ratio = actual error / estimated error

for log Z, every mean entry and every covariance entry. A bound needs ratio <= 1 everywhere.
Prints a markdown table (one row per case and n) and a summary:

    max ratio          (must be <= 1)
    the estimate's looseness on well-resolved grids: estimate / actual, and the estimate
    relative to the quantity's scale (log Z: 1 + |log Z|, mean: sd, cov: sd_i sd_j)

Run: python benchmarks/grid_error_scan.py [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support.grid_cases as gc  # noqa: E402

import ewc_ref as er  # noqa: E402
from ewc_ref.bayes.grid import DEFAULT_POINTS  # noqa: E402


def _l3(a, b, c):
    return np.array([[1.0, 0.0, 0.0], [a, 1.0, 0.0], [b, c, 1.0]])


def cases_1d():
    out = [gc.gamma_log(a) for a in (0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 22.0, 30.0, 100.0, 1000.0)]
    out += [gc.student_t(nu) for nu in (3.0, 4.0, 5.0, 10.0, 30.0)]
    out += [gc.flat_top(p) for p in (4, 8, 16)]
    out += [gc.gaussian(sd) for sd in (1e-3, 1.0, 1e3)]
    out += [gc.shifted(gc.gamma_log(22.0), 0.0, -500.0), gc.shifted(gc.gamma_log(22.0), 100.0),
            gc.shifted(gc.gaussian(1.0), 1e3), gc.shifted(gc.gaussian(1.0), 0.37, 700.0),
            gc.shifted(gc.student_t(5.0), 0.37)]
    return out


def cases_2d():
    return [
        gc.product(gc.gamma_log(22.0), gc.student_t(5.0)),
        gc.affine(gc.product(gc.gamma_log(2.0), gc.gaussian(1.0)), [[1.0, 0.0], [0.8, 0.5]]),
        gc.affine(gc.product(gc.gaussian(1.0), gc.gaussian(1.0)), [[1.0, 0.0], [0.95, 0.3]], [1.0, -2.0], -300.0),
        gc.product(gc.flat_top(8), gc.gamma_log(0.5)),
        gc.affine(gc.product(gc.gamma_log(22.0), gc.gamma_log(5.0)), [[1.0, 0.0], [-0.6, 1.0]]),
    ]


def cases_3d():
    return [
        gc.affine(gc.product(gc.gamma_log(5.0), gc.student_t(5.0), gc.gaussian(1.0)), _l3(0.5, -0.3, 0.7)),
        gc.product(gc.gamma_log(22.0), gc.gamma_log(22.0), gc.gamma_log(22.0)),
        gc.affine(gc.product(gc.gaussian(1.0), gc.gaussian(2.0), gc.gaussian(0.5)), _l3(0.9, 0.2, -0.8),
                  [3.0, 0.0, -1.0], -200.0),
        gc.product(gc.flat_top(4), gc.gamma_log(1.0), gc.student_t(10.0)),
    ]


SIZES = {1: (11, 21, 31, 41, 101, 401, 801, 2001), 2: (11, 21, 41, 81, 161), 3: (11, 13, 21, 33, 49)}
QUICK_SIZES = {1: (21, 41, 401, 801), 2: (21, 81), 3: (13, 33)}


def measure(case, n):
    """One row: the ratios actual / estimate and the estimates relative to scale."""
    try:
        grid = er.grid_posterior(case.log_q, case.center, case.scale, n_points=n, quad_check=False)
    except ValueError as error:
        return {"case": case.name, "n": n, "refused": str(error)[:60]}
    err_z, err_mean, err_cov = gc.actual_errors(grid, case)
    sd = np.sqrt(np.diag(case.cov))
    est = [np.atleast_1d(grid.log_evidence_error), grid.mean_error, grid.cov_error.ravel()]
    act = [np.atleast_1d(err_z), err_mean, err_cov.ravel()]
    scale = [np.atleast_1d(1 + abs(case.log_z)), sd, np.outer(sd, sd).ravel()]
    return {
        "case": case.name, "n": n, "d": case.d,
        "ratio": [float(np.max(a / e)) for a, e in zip(act, est, strict=True)],
        "actual_rel": [float(np.max(a / s)) for a, s in zip(act, scale, strict=True)],
        "estimate_rel": [float(np.max(e / s)) for e, s in zip(est, scale, strict=True)],
        # estimate / actual per entry, the actual error floored at eps * scale (it can be 0 by luck)
        "looseness": [e / np.maximum(a, np.finfo(float).eps * s) for a, e, s in zip(act, est, scale, strict=True)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer grid sizes")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    start = time.perf_counter()
    rows = [measure(case, n) for cases, d in ((cases_1d(), 1), (cases_2d(), 2), (cases_3d(), 3))
            for case in cases for n in sizes[d]]
    lines = ["| case | n | actual/estimate: log Z, mean, cov | actual / scale | estimate / scale |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['case']} | {r['n']} | refused: {r['refused']} | | |")
            continue
        lines.append(f"| {r['case']} | {r['n']} | " + ", ".join(f"{x:.2g}" for x in r["ratio"]) + " | "
                     + ", ".join(f"{x:.1e}" for x in r["actual_rel"]) + " | "
                     + ", ".join(f"{x:.1e}" for x in r["estimate_rel"]) + " |")
    ok = [r for r in rows if "refused" not in r]
    worst = max(ok, key=lambda r: max(r["ratio"]))
    lines.append("")
    lines.append(f"{len(rows)} grids ({len(rows) - len(ok)} refused), {time.perf_counter() - start:.0f} s")
    lines.append(f"max actual/estimate over all grids and quantities: {max(worst['ratio']):.3g} "
                 f"({worst['case']}, n = {worst['n']})")
    for i, label in enumerate(("log Z", "mean", "cov")):
        ratios = np.array([r["ratio"][i] for r in ok])
        lines.append(f"  {label}: max actual/estimate {ratios.max():.3g}; grids with ratio > 1: {np.sum(ratios > 1)}")
    # Well resolved: the default grid size, and an estimate below 1e-8 of scale for every quantity.
    resolved = [r for r in ok if r["n"] == DEFAULT_POINTS[r["d"]] and max(r["estimate_rel"]) <= 1e-8]
    lines.append(f"well-resolved grids (default n, every estimate <= 1e-8 of scale): {len(resolved)} of "
                 f"{sum(r['n'] == DEFAULT_POINTS[r['d']] for r in ok)} at default n")
    for i, label in enumerate(("log Z", "mean", "cov")):
        loose = np.concatenate([r["looseness"][i] for r in resolved])
        rel = np.array([r["estimate_rel"][i] for r in resolved])
        lines.append(f"  {label}: estimate / max(actual, eps scale) median {np.median(loose):.3g}, 90th percentile "
                     f"{np.percentile(loose, 90):.3g}, max {loose.max():.3g}; estimate / scale max {rel.max():.2g}")
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
