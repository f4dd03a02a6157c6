"""Cost of diagnose's float32 round-off model (verify/roundoff.py) at 784-256-256-10 (issue 28 [M]).

Times, in one process, min over --rounds: one exact diagonal Fisher (the unit of diagnose's cost budget),
``fisher_and_bound`` over the rows (empirical) and over minibatches of 64 (the float32 F, F-hat and the
bound B), and the whole ``diagnose`` of a float32 THEIRS that needs the round-off model (a confident net:
its last layer scaled, THEIRS = F-hat in float32), against ``diagnose`` of the same THEIRS in float64
(no round-off model: the previous cost). Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 python benchmarks/bench_roundoff.py [--n 10000]
"""

import argparse
import time

import numpy as np

import ewc_ref as er
import ewc_ref.verify.scale
from ewc_ref.verify.roundoff import fisher_and_bound


def timed(fn, rounds):
    best, out = np.inf, None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gain", type=float, default=600.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model = er.MLP.random([784, 256, 256, 10], "relu", rng=rng)
    theta = model.theta.copy()
    theta[model.weight_slices[-1].start:] *= args.gain
    model = model.with_theta(theta.astype(np.float32).astype(np.float64))
    lik = er.get_likelihood("categorical")
    # rows of a very confident net: 1 - p_y in [1e-13, 1e-9] (median ~1e-11), 3% in [1e-7, 1e-5] (the case)
    pool = rng.random((12 * args.n, 784))
    f = model.predict(pool)
    y_pool = f.argmax(axis=1)
    log_q = np.log(np.exp(f - f.max(axis=1, keepdims=True)).sum(axis=1) - 1 + 1e-300)  # log (1 - p_y) roughly
    inside = np.flatnonzero((log_q > np.log(1e-13)) & (log_q < np.log(1e-9)))
    near = np.flatnonzero((log_q > np.log(1e-7)) & (log_q < np.log(1e-5)))
    less = args.n * 3 // 100
    rows = np.sort(np.concatenate([inside[:args.n - less], near[:less]]))
    if rows.size < args.n:
        raise SystemExit(f"only {rows.size} confident rows in the pool: raise --gain")
    x, y = pool[rows], y_pool[rows]
    ones = np.ones(args.n, dtype=int)
    t_exact, _ = timed(lambda: er.fisher(model, lik, x, y, estimator="exact"), args.rounds)
    t_rows, rows = timed(lambda: fisher_and_bound(model, x, y, ones), args.rounds)
    sizes = np.append(np.full(args.n // 64, 64), [args.n % 64] if args.n % 64 else [])
    t_b64, batched = timed(lambda: fisher_and_bound(model, x, y, sizes.astype(int)), args.rounds)
    theirs = rows.modelled.astype(np.float32)
    print(f"N = {args.n}, P = {model.n_params}; rows losing 1 - p_y: {rows.cancelled_rows:.0%}; THEIRS vs exact F: "
          f"{ewc_ref.verify.scale.fit_scale(theirs, rows.fisher)[1]:.3g} (empirical), "
          f"{ewc_ref.verify.scale.fit_scale(batched.modelled, batched.fisher)[1]:.3g} (B = 64)")
    print(f"exact diagonal Fisher                          {t_exact:7.2f} s  (1.00)")
    print(f"fisher_and_bound, rows (B = 1)                 {t_rows:7.2f} s  ({t_rows / t_exact:.2f})")
    print(f"fisher_and_bound, B = 64                       {t_b64:7.2f} s  ({t_b64 / t_exact:.2f})")
    cases = [("diagnose, float32 empirical THEIRS", theirs),
             ("diagnose, float32 batched B = 64 THEIRS", batched.modelled.astype(np.float32)),
             ("diagnose, 1.001 x float32 empirical", np.float32(1.001) * theirs),
             ("diagnose, exact empirical F (no round-off)", rows.fisher)]
    for name, t in cases:
        seconds, d = timed(lambda t=t: er.diagnose(model, lik, x, y, t), args.rounds)
        matched = None if d.roundoff is None else d.roundoff["matched"]
        print(f"{name:<46} {seconds:7.2f} s  ({seconds / t_exact:.2f})  verdict {d.estimator}"
              f"{'' if d.batch_size is None else f', B = {d.batch_size}'}, round-off matched {matched}")


if __name__ == "__main__":
    main()
