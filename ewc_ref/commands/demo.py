"""Continual learning on the shipped digits: SGD vs L2 vs EWC in the three scenarios.

For each scenario (task-incremental split digits with one head per task, domain-incremental
permuted digits, class-incremental split digits with one shared head) a fresh MLP learns the
tasks in order with plain SGD, with an L2 pull towards the old optima, and with EWC (a
Fisher-weighted pull). Prints, per scenario, the accuracy matrices R[i, j] (accuracy on task j after
training task i) and a summary table: average accuracy, forgetting, backward transfer,
plasticity and how far the parameters moved from task 0's optimum, weighted by its Fisher.
--sweep-lambda adds the stability/plasticity trade-off over a grid of lambda values.

The same experiment from Python: ewc_ref.continual.experiments.run_scenario (this command only
parses flags and prints). See docs/continual-learning.md; --json prints the object of
docs/file-format.md, section 9.
"""

from __future__ import annotations

import time

from ..continual.datasets import SCENARIOS, check_n_tasks
from ..continual.experiments import METHOD_TITLES, SWEEP_GRID, run_scenario
from ..curvature.estimators import ESTIMATORS
from ._args import (
    add_json,
    add_quiet,
    add_report_output,
    flags_named,
    integer,
    number,
    number_list,
    report_to,
    write_json,
)


def add_arguments(parser) -> None:
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all",
                        help="which scenario(s) to run (default: all three)")
    parser.add_argument("--tasks", type=integer(2), default=5,
                        help="number of tasks (default 5; split scenarios: 2..5)")
    parser.add_argument("--epochs", type=integer(1), default=20, help="SGD epochs per task (default 20)")
    parser.add_argument("--lambda", dest="lam", type=number(0.0), default=None, metavar="LAMBDA",
                        help="EWC lambda >= 0 (default: per scenario, from the sweep in docs/continual-learning.md)")
    parser.add_argument("--l2-lambda", dest="l2_lam", type=number(0.0), default=None, metavar="LAMBDA",
                        help="L2 lambda >= 0 (default: per scenario, from the sweep)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="exact",
                        help="Fisher estimator for EWC (docs/file-format.md; default exact, the true Fisher)")
    parser.add_argument("--ewc", dest="kind", choices=("separate", "accumulated", "online"), default="separate",
                        help="EWC variant: one penalty per task (Kirkpatrick, default), summed Fisher "
                             "with the latest anchor (Huszar), or online with decay --gamma (Schwarz)")
    parser.add_argument("--gamma", type=number(0.0, 1.0, open_low=True), default=None,
                        help="online-EWC decay in (0, 1] (--ewc online only; default 1)")
    parser.add_argument("--hidden", type=integer(1), nargs="+", default=[100],
                        help="hidden layer widths (default 100)")
    parser.add_argument("--lr", type=number(0.0, open_low=True), default=0.1, help="SGD learning rate > 0 (default 0.1)")
    parser.add_argument("--momentum", type=number(0.0, 1.0, open_high=True), default=0.0,
                        help="SGD momentum in [0, 1) (default 0)")
    parser.add_argument("--batch-size", type=integer(1), default=32, help="minibatch size (default 32)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed for weights, permutations, minibatches (default 0)")
    parser.add_argument("--data-dir", default=None,
                        help="directory with the real MNIST IDX files (train-images-idx3-ubyte etc., "
                             "optionally .gz) to use instead of the shipped 8x8 digits")
    parser.add_argument("--sweep-lambda", nargs="?", const=SWEEP_GRID, type=number_list(0.0), default=None,
                        metavar="L1,L2,...",
                        help="also sweep lambda for L2 and EWC (default grid: "
                             + ",".join(f"{v:g}" for v in SWEEP_GRID) + ")")
    add_report_output(parser)
    add_json(parser, "the accuracy matrices, summaries and configuration (docs/file-format.md)")
    add_quiet(parser)


def _load(args):
    from ..continual.datasets import load_digits, load_mnist

    if args.data_dir is not None:
        return "MNIST (IDX files in " + args.data_dir + ")", load_mnist(args.data_dir)
    return "UCI 8x8 digits (shipped)", load_digits()


# Copies of the P parameters the demo holds at once: weights, gradient, momentum, penalty anchor and
# weights (EWC/L2), one Fisher, and per task the weights and Fisher kept for the report (2 T).
PARAMETER_COPIES = 6


def _check_network_size(args, n_inputs: int) -> None:
    """ValueError naming --hidden when the network's parameters (x copies) or one batch's activations
    exceed the memory budget (ewc_ref.curvature.budget.MAX_DENSE_BYTES), before any data is loaded."""
    from ..curvature import budget

    widths = [n_inputs, *args.hidden, 10]
    n_params = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=False))
    # 3 arrays per layer and example in a batch: pre-activation, activation, backpropagated delta
    need = 8 * (n_params * (PARAMETER_COPIES + 2 * args.tasks) + 3 * args.batch_size * sum(widths))
    if need > budget.MAX_DENSE_BYTES:
        raise ValueError(
            f"--hidden: a {'-'.join(map(str, widths))} network has P = {n_params} parameters; the demo holds "
            f"{PARAMETER_COPIES + 2 * args.tasks} copies of them and a batch of activations, {need / 1024**3:.1f} GiB, "
            f"above the memory budget of {budget.MAX_DENSE_BYTES / 1024**3:.1f} GiB "
            "(ewc_ref.curvature.budget.MAX_DENSE_BYTES)")


def run(args) -> int:
    start = time.perf_counter()
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    if args.gamma is not None and args.kind != "online":
        raise ValueError(f"--gamma: only used by --ewc online, not by --ewc {args.kind}")
    gamma = 1.0 if args.gamma is None else args.gamma
    with flags_named(tasks="--tasks"):
        for name in scenarios:
            check_n_tasks(name, args.tasks)
    _check_network_size(args, n_inputs=784 if args.data_dir is not None else 64)
    source, data = _load(args)
    settings = dict(
        kind=args.kind, gamma=gamma, hidden=tuple(args.hidden), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, estimator=args.estimator,
    )
    # TrainingDiverged names 'lambda' (of L2 or EWC, whichever run diverged) or 'lr'.
    with flags_named(lr="--lr", **{"lambda": "--lambda or --l2-lambda"}):
        results = {
            name: run_scenario(name, data, args.tasks, l2_lambda=args.l2_lam, ewc_lambda=args.lam,
                               sweep_lambdas=args.sweep_lambda, seed=args.seed, progress=not args.quiet, **settings)
            for name in scenarios
        }
    seconds = time.perf_counter() - start
    config = {
        "data": source, "n_train": int(data[0].shape[0]), "n_test": int(data[2].shape[0]),
        "layers": [int(data[0].shape[1]), *args.hidden, 10], "activation": "relu", "tasks": args.tasks,
        "epochs": args.epochs, "lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size,
        "estimator": args.estimator, "structure": "diag", "ewc": args.kind, "gamma": gamma, "seed": args.seed,
    }
    with report_to(args.output):
        if args.json:
            write_json({"scenarios": results, "config": config, "seconds": seconds})
        else:
            _print_report(results, config, seconds)
    return 0


# ----------------------------------------------------------------------------- printing
def _matrix(R, names) -> list[str]:
    T = len(R)
    lines = ["    after \\ on " + " ".join(f"{'t' + str(j):>6}" for j in range(T))]
    for i in range(T):
        lines.append(f"    task {i:<7}" + " ".join(f"{R[i][j]:6.3f}" for j in range(T)))
    return lines


def _print_report(results, config, seconds) -> None:
    out = []
    layers = "-".join(map(str, config["layers"]))
    out.append(
        f"ewc-ref demo: {config['data']}, {config['n_train']} train / {config['n_test']} test images; "
        f"MLP {layers} relu; {config['tasks']} tasks x {config['epochs']} epochs of SGD "
        f"(lr {config['lr']:g}, batch {config['batch_size']}, momentum {config['momentum']:g}); "
        f"EWC: {config['ewc']} penalty, {config['estimator']} diagonal Fisher; seed {config['seed']}"
    )
    for name, result in results.items():
        out.append("")
        out.append(f"== {result['title']} ==")
        out.append("   tasks: " + "; ".join(f"t{j} = {task}" for j, task in enumerate(result["tasks"])))
        for method, entry in result["methods"].items():
            lam = "" if method == "sgd" else f" (lambda = {entry['lambda']:g})"
            out.append(f"  {METHOD_TITLES[method]}{lam}: accuracy R[i, j] on task j after training task i")
            out.extend(_matrix(entry["accuracy_matrix"], result["tasks"]))
        out.append("  summary (after the last task)")
        out.append(f"    {'method':<6} {'lambda':>8} {'avg acc':>8} {'forgetting':>10} {'BWT':>7} {'plasticity':>10} "
                   f"{'F0-drift':>9} {'rms hi-F':>9} {'rms lo-F':>9}")
        for method, entry in result["methods"].items():
            d = entry["drift_from_task0"]
            out.append(
                f"    {method:<6} {entry['lambda']:>8g} {entry['average_accuracy']:>8.3f} {entry['forgetting']:>10.3f} "
                f"{entry['backward_transfer']:>7.3f} {entry['plasticity']:>10.3f} {d['weighted']:>9.3g} "
                f"{d['rms_important']:>9.3g} {d['rms_other']:>9.3g}"
            )
        methods = result["methods"]
        gain = round(methods["ewc"]["average_accuracy"] - methods["sgd"]["average_accuracy"], 3) + 0.0  # no "-0.000"
        verdict = "helps" if gain > 0.02 else ("makes no real difference" if gain > -0.02 else "hurts")
        note = f"  EWC {verdict} here: average accuracy {gain:+.3f} vs SGD."
        if name == "class":
            note += (" As van de Ven & Tolias found, a parameter penalty cannot fix class-incremental"
                     " learning: old classes' logits are never trained against new classes (docs/continual-learning.md).")
        elif name == "task" and abs(gain) <= 0.02:
            note += " With a separate head per task, plain SGD barely forgets on these digits."
        out.append(note)
        if "sweep" in result:
            out.extend(_sweep_lines(result["sweep"]))
    out.append("")
    out.append("  avg acc = mean_j R[T-1, j]; forgetting = mean_j<T-1 (max_i<T-1 R[i, j] - R[T-1, j]);"
               " BWT = mean_j<T-1 (R[T-1, j] - R[j, j]); plasticity = mean_j R[j, j];")
    out.append("  F0-drift = sum_i F0_i (theta_i - theta*0_i)^2 with task 0's Fisher F0; rms hi-F / lo-F ="
               " RMS movement of the top 10% / other parameters by F0.")
    out.append(f"  total {seconds:.1f} s")
    print("\n".join(out))


def _sweep_lines(rows) -> list[str]:
    lines = ["  lambda sweep (stability/plasticity trade-off; lambda = 0 is SGD)",
             f"    {'lambda':>8} | {'L2 avg':>7} {'forget':>7} {'plast':>7} | {'EWC avg':>7} {'forget':>7} {'plast':>7}"]
    sgd = rows["sgd"]
    cell = f"{sgd['average_accuracy']:>7.3f} {sgd['forgetting']:>7.3f} {sgd['plasticity']:>7.3f}"
    lines.append(f"    {0:>8g} | {cell} | {cell}")
    for l2, ewc in zip(rows["l2"], rows["ewc"], strict=True):
        cells = []
        for row in (l2, ewc):
            if row["diverged"]:
                cells.append(f"{'unstable: lr*lam*F>2':>23}")
            else:
                cells.append(f"{row['average_accuracy']:>7.3f} {row['forgetting']:>7.3f} {row['plasticity']:>7.3f}")
        lines.append(f"    {l2['lambda']:>8g} | {cells[0]} | {cells[1]}")
    return lines
