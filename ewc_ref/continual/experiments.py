"""The continual-learning experiment: SGD, L2 and EWC on a sequence of tasks, and what is reported.

This module is what ``ewc-ref demo`` and the accuracy figure compute; ``ewc_ref/commands/demo.py``
only turns flags into these arguments and prints the result.

==============  ===================================================================================
METHODS         'sgd' (no penalty), 'l2' (lambda/2 ||theta - theta*||^2 per old task), 'ewc'
                (lambda/2 sum_i F_i (theta_i - theta*_i)^2 per old task, F a diagonal Fisher)
SCENARIOS       'task', 'domain', 'class' (ewc_ref.continual.datasets; titles in SCENARIO_TITLES)
DEFAULT_LAMBDA  lambda per scenario and method, chosen from the recorded sweep
SWEEP_GRID      the lambda grid of ``ewc-ref demo --sweep-lambda``
run_sequence    one fresh MLP trained on the tasks in order with one method; the accuracy matrix
run_scenario    the three methods on one scenario: accuracy matrices, summaries, Fisher-weighted drift
sweep           L2 and EWC over a lambda grid: the stability/plasticity trade-off
==============  ===================================================================================

Seeds: every random choice comes from ``numpy.random.default_rng([seed, k, ...])`` with a fixed k
per purpose (0 initial weights, 1 minibatch order of task t, 2 scenario permutations, 3 sampled
labels of an 'mc' Fisher), so the methods share theta*_0 and a rerun is bit-identical.
"""

from __future__ import annotations

import numpy as np

from ..model.mlp import MLP
from ..progress import Progress
from .datasets import SCENARIOS, head_labels, make_scenario
from .metrics import fisher_weighted_drift, summarize
from .training import TrainingDiverged, evaluate, head_fisher, train_task

METHODS = ("sgd", "l2", "ewc")
METHOD_TITLES = {"sgd": "SGD (no penalty)", "l2": "L2", "ewc": "EWC"}
SCENARIO_TITLES = {
    "task": "task-incremental: split digits, one 2-class head per task, task identity given at test",
    "domain": "domain-incremental: permuted digits, one 10-class head",
    "class": "class-incremental: split digits, one shared head over all classes seen so far",
}

#: Default lambda per scenario and method, chosen from the sweep recorded in
#: docs/continual-learning.md (digits, 5 tasks, 20 epochs, seed 0, exact diagonal Fisher).
#: EWC: 20, the best average accuracy on permuted digits (the one scenario where lambda matters);
#: in the split scenarios every stable lambda gives the same average accuracy within 0.003.
#: L2: the best average accuracy per scenario.
DEFAULT_LAMBDA = {
    "task": {"l2": 0.001, "ewc": 20.0},
    "domain": {"l2": 0.001, "ewc": 20.0},
    "class": {"l2": 1.0, "ewc": 20.0},
}
SWEEP_GRID = (0.001, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


# ----------------------------------------------------------------------------- one method
def run_sequence(
    scenario,
    method: str = "ewc",
    *,
    lam: float = 0.0,
    kind: str = "separate",
    gamma: float = 1.0,
    hidden=(100,),
    activation: str = "relu",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.0,
    estimator: str = "exact",
    fisher_options=None,
    seed: int = 0,
    progress=None,
):
    """Train one fresh MLP on the tasks of `scenario` in order, with SGD, L2 or EWC.

    The initial weights come from ``MLP.random(..., rng=default_rng([seed, 0]))``, the
    minibatch order of task t from ``default_rng([seed, 1, t])`` and the sampled labels of an
    'mc' Fisher from ``default_rng([seed, 3, t])``; so every method starts from the same network
    and sees the same minibatches (the first task's optimum theta*_0 is the same for all
    methods), and a rerun is bit-identical. A 'batched' Fisher uses the training batch size.

    Parameters
    ----------
    scenario : ewc_ref.continual.datasets.Scenario
    method : 'sgd' (no penalty), 'l2' (Penalty kind 'l2') or 'ewc' (Penalty kind `kind`)
    lam : lambda for 'l2' and 'ewc'
    kind, gamma : the EWC variant (ewc_ref.continual.penalty.Penalty)
    hidden : hidden layer widths; activation : their activation
    epochs, batch_size, lr, momentum : SGD settings per task (ewc_ref.continual.training.train_task)
    estimator : Fisher estimator for 'ewc' (ewc_ref.fisher, structure 'diag', head view)
    fisher_options : extra keyword arguments for ewc_ref.fisher (samples, chunk_size, ...)
    progress : None or callable(task, epoch, epochs, objective)

    Returns
    -------
    dict with R : (T, T) accuracy matrix, thetas : list of (T,) optima theta*_t (P,),
    fishers : list of (P,) Fisher diagonals of each task at theta*_t (None unless 'ewc'),
    model : the final MLP

    Raises
    ------
    ValueError naming `method`; ewc_ref.continual.training.TrainingDiverged when lr * lambda * max F > 2.
    """
    from .penalty import Penalty

    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    sizes = [scenario.n_inputs, *hidden, scenario.n_outputs]
    model = MLP.random(sizes, activation, rng=np.random.default_rng([seed, 0]))
    penalty = None if method == "sgd" else Penalty(lam, "l2" if method == "l2" else kind, gamma)
    T = scenario.n_tasks
    R = np.zeros((T, T))
    thetas, fishers = [], []
    for t, task in enumerate(scenario.tasks):
        columns = scenario.train_columns(t)
        y = head_labels(task.y_train, columns)
        report = None if progress is None else (lambda e, E, j, t=t: progress(t, e, E, j))
        train_task(
            model, task.x_train, y, columns, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
            penalty=penalty, rng=np.random.default_rng([seed, 1, t]), progress=report,
        )
        R[t] = evaluate(model, scenario, t)
        thetas.append(model.theta.copy())
        fisher_t = None
        if method == "ewc":
            options = dict(fisher_options or {})
            if estimator == "mc":
                options.setdefault("rng", np.random.default_rng([seed, 3, t]))
            if estimator == "batched":
                options.setdefault("batch_size", min(batch_size, task.x_train.shape[0]))
            fisher_t = head_fisher(model, task.x_train, y, columns, estimator=estimator, **options)
        fishers.append(fisher_t)
        if penalty is not None:
            penalty.consolidate(model.theta, fisher_t)
    return {"R": R, "thetas": thetas, "fishers": fishers, "model": model}


def _run(scenario, method, lam, label, progress, settings):
    """run_sequence with one progress line labelled `label` (one step per epoch)."""
    meter = Progress(scenario.n_tasks * settings.get("epochs", 10), label, enabled=progress, unit="epochs")
    try:
        return run_sequence(scenario, method, lam=lam, progress=lambda *_: meter.update(), **settings)
    finally:
        meter.close()


# ----------------------------------------------------------------------------- three methods
def default_lambdas(scenario: str, l2: float | None = None, ewc: float | None = None) -> dict[str, float]:
    """{method: lambda} for `scenario`: 0 for 'sgd', `l2` / `ewc` if given, else DEFAULT_LAMBDA."""
    if scenario not in DEFAULT_LAMBDA:
        raise ValueError(f"scenario: expected one of {list(SCENARIOS)}, got {scenario!r}")
    return {
        "sgd": 0.0,
        "l2": DEFAULT_LAMBDA[scenario]["l2"] if l2 is None else float(l2),
        "ewc": DEFAULT_LAMBDA[scenario]["ewc"] if ewc is None else float(ewc),
    }


def run_scenario(name: str, data, n_tasks: int, *, l2_lambda: float | None = None,
                 ewc_lambda: float | None = None, sweep_lambdas=None, seed: int = 0,
                 progress: bool = False, **settings) -> dict:
    """SGD, L2 and EWC on scenario `name`, each from the same initial network.

    Parameters
    ----------
    name : 'task', 'domain' or 'class'
    data : (x_train (N, D), y_train (N,), x_test (M, D), y_test (M,)), labels 0..9
    n_tasks : number of tasks (ewc_ref.continual.datasets.check_n_tasks)
    l2_lambda, ewc_lambda : lambda of L2 and EWC; None for DEFAULT_LAMBDA[name]
    sweep_lambdas : None, or a grid of lambdas for `sweep` (adds the key 'sweep')
    seed : the experiment's seed (module docstring); the scenario's permutations use [seed, 2]
    progress : one progress line per run on stderr (ewc_ref.progress.Progress)
    **settings : run_sequence's keyword arguments (kind, gamma, hidden, epochs, batch_size, lr,
        momentum, estimator, ...)

    Returns
    -------
    dict (the JSON of ``ewc-ref demo``, docs/file-format.md): title, tasks (names), methods =
    {method: {lambda, accuracy_matrix (T x T lists), average_accuracy, forgetting,
    backward_transfer, plasticity, drift_from_task0}}, and sweep when asked.

    Notes
    -----
    drift_from_task0 = ewc_ref.continual.metrics.fisher_weighted_drift of the final parameters from
    theta*_0 weighted by F_0, task 0's Fisher (clipped at 0). theta*_0 is the same for every
    method (task 0 has no penalty, same seed), so F_0 from the EWC run weighs every method's
    drift on the same scale.
    """
    scenario = make_scenario(name, data, n_tasks, rng=np.random.default_rng([seed, 2]))
    lams = default_lambdas(name, l2_lambda, ewc_lambda)
    runs = {method: _run(scenario, method, lams[method], f"{name}/{method}", progress, dict(settings, seed=seed))
            for method in METHODS}
    anchor0, fisher0 = runs["ewc"]["thetas"][0], runs["ewc"]["fishers"][0]
    result = {"title": SCENARIO_TITLES[name], "tasks": [task.name for task in scenario.tasks], "methods": {}}
    for method, run in runs.items():
        R = run["R"]
        entry = {"lambda": lams[method], "accuracy_matrix": R.tolist(), **summarize(R)}
        entry["drift_from_task0"] = fisher_weighted_drift(run["model"].theta, anchor0, np.maximum(fisher0, 0.0))
        result["methods"][method] = entry
    if sweep_lambdas is not None:
        result["sweep"] = sweep(scenario, sweep_lambdas, runs["sgd"]["R"], seed=seed, progress=progress, **settings)
    return result


def sweep(scenario, lambdas, sgd_R, *, seed: int = 0, progress: bool = False, **settings) -> dict:
    """Average accuracy, forgetting and plasticity of L2 and EWC over the grid `lambdas`.

    Parameters
    ----------
    scenario : ewc_ref.continual.datasets.Scenario; lambdas : iterable of lambdas >= 0
    sgd_R : (T, T) accuracy matrix of SGD on the same scenario (the row lambda = 0)
    seed, progress, **settings : as in run_scenario

    Returns
    -------
    dict with sgd = {lambda: 0.0, summary}, l2 and ewc = one row per lambda: {lambda, diverged,
    summary}; a run refused as unstable (lr * lambda * max F > 2, TrainingDiverged) has
    diverged = True and None for every summary number.
    """
    rows = {"sgd": {"lambda": 0.0, **summarize(sgd_R)}, "l2": [], "ewc": []}
    for method in ("l2", "ewc"):
        for lam in lambdas:
            label = f"{scenario.name}/{method} sweep lambda={lam:g}"
            try:
                out = _run(scenario, method, lam, label, progress, dict(settings, seed=seed))
                rows[method].append({"lambda": lam, "diverged": False, **summarize(out["R"])})
            except TrainingDiverged:
                rows[method].append({"lambda": lam, "diverged": True, "average_accuracy": None,
                                     "forgetting": None, "backward_transfer": None, "plasticity": None})
    return rows
