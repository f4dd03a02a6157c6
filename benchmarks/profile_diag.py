"""Where the time of ``fisher(..., "diag")`` goes, step by step, over one pass of the chunk loop.

Re-runs the diag path of FisherAccumulator (forward, output vectors, the stacked backward GEMMs,
kernels.gated_square_sum, the squared inputs and the s^T a^2 GEMMs of accumulator._diag_sums)
with a timer around every step, for several chunk sizes, and prints a markdown table of
milliseconds per full pass over the data (median of --repeats passes). The steps are the
library's own calls, in the library's order; if they drift apart, the 'fisher()' column (the
public call, timed the same way) shows it.

    python benchmarks/profile_diag.py --config 784-256-256-10 --chunks 300 527 1000
    python benchmarks/profile_diag.py --config 64-128-128-10      # the digits, N = 1797
"""

from __future__ import annotations

import argparse
import os
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "2")  # before numpy is imported, as bench_fisher.py

import numpy as np  # noqa: E402

import ewc_ref as er  # noqa: E402
from ewc_ref.curvature import estimate, kernels  # noqa: E402
from ewc_ref.curvature.estimators import ESTIMATOR_TABLE  # noqa: E402
from ewc_ref.model.likelihoods import Categorical  # noqa: E402


def problem(config: str, n: int):
    """(model, x, y) as bench_fisher.py builds them (random rows for 784-..., else the digits)."""
    if config.startswith("784-"):
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((n, 784)), rng.integers(0, 10, n)
    else:
        data = np.load(os.path.join(os.path.dirname(er.__file__), "data", "digits.npz"))
        x, y = data["x"] / 16.0, data["y"].astype(np.intp)
    return er.MLP.random([int(s) for s in config.split("-")], "relu", rng=1), x, y


def one_pass(model, lik, x, y, estimator: str, chunk: int) -> dict:
    """Seconds per step, summed over the chunks of one pass over (x, y)."""
    times: dict[str, float] = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        times[name] = times.get(name, 0.0) + time.perf_counter() - t
        return out

    total = np.zeros(model.n_params)
    for begin in range(0, x.shape[0], chunk):
        f, cache = timed("forward", model.forward, x[begin : begin + chunk])
        r, w = timed("output vectors", ESTIMATOR_TABLE[estimator].output_vectors, lik, f, y[begin : begin + chunk], 1, None)
        sums = [None] * model.n_layers
        sums[-1] = timed("square of r", kernels.squared_delta_sum, r, w)
        delta = r
        for l in range(model.n_layers - 1, 0, -1):
            stacked = timed("contiguous r", np.ascontiguousarray, delta).reshape(-1, delta.shape[-1])
            da = timed(f"backward GEMM (K n, {model.weights[l].shape[0]}) x W_{l}", np.matmul, stacked, model.weights[l])
            da = da.reshape(*delta.shape[:-1], -1)
            z, a, activation = cache.activation_caches[l - 1]
            derivative = timed("phi'", activation.derivative, z, a)
            sums[l - 1] = timed("gated_square_sum", kernels.gated_square_sum, da, derivative, w, l > 1)
            delta = da
        for l, s in enumerate(sums):
            a_sq = timed("a^2", np.square, cache.inputs[l])
            block = timed(f"s^T a^2 GEMM layer {l}", np.matmul, s.T, a_sq)
            total[model.weight_slices[l]] += block.ravel()
            total[model.bias_slices[l]] += timed("bias sums", np.sum, s, 0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="784-256-256-10")
    parser.add_argument("--n", type=int, default=10000, help="rows of random data for 784-...")
    parser.add_argument("--estimators", nargs="+", default=["exact", "empirical"])
    parser.add_argument("--chunks", nargs="*", type=int, default=[], help="chunk sizes besides fisher's default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model, x, y = problem(args.config, args.n)
    lik = Categorical()
    print(f"{args.config}, N = {x.shape[0]}, load {os.getloadavg()[0]:.2f}; ms per pass over the data, "
          f"median of {args.repeats}\n")
    for estimator in args.estimators:
        default = estimate.balanced_chunk_size(x.shape[0], estimate.default_chunk_size(
            model, estimator, "diag", 1, model.n_outputs, lik))
        chunks = [default] + [c for c in args.chunks if c != default]
        columns = {}
        for chunk in chunks:
            one_pass(model, lik, x, y, estimator, chunk)  # warm-up
            runs = [one_pass(model, lik, x, y, estimator, chunk) for _ in range(args.repeats)]
            columns[chunk] = {step: float(np.median([run[step] for run in runs])) for step in runs[0]}
            whole = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                er.fisher(model, lik, x, y, estimator, "diag", chunk_size=chunk)
                whole.append(time.perf_counter() - t)
            columns[chunk]["sum of the steps"] = sum(columns[chunk].values())
            columns[chunk]["fisher()"] = float(np.median(whole))
        print(f"#### diag {estimator}\n")
        print("| step | " + " | ".join(f"chunk {c}{' (default)' if c == default else ''}" for c in chunks) + " |")
        print("|---|" + "---|" * len(chunks))
        for step in columns[default]:
            print(f"| {step} | " + " | ".join(f"{columns[c].get(step, 0.0) * 1e3:.1f}" for c in chunks) + " |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
