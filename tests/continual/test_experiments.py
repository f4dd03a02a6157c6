"""ewc_ref.continual.experiments: the demo's experiment without the CLI."""

import numpy as np
import pytest

from ewc_ref.continual import experiments
from ewc_ref.continual.datasets import load_digits, make_scenario
from ewc_ref.continual.experiments import (
    DEFAULT_LAMBDA,
    METHODS,
    SCENARIOS,
    default_lambdas,
    run_scenario,
    run_sequence,
    sweep,
)
from ewc_ref.continual.metrics import summarize

TINY = {"epochs": 1, "hidden": (8,)}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_every_scenario_has_a_default_lambda_for_each_penalised_method():
    assert set(DEFAULT_LAMBDA) == set(SCENARIOS)
    for lambdas in DEFAULT_LAMBDA.values():
        assert set(lambdas) == set(METHODS) - {"sgd"}


def test_default_lambdas_overrides_and_bad_scenario():
    assert default_lambdas("class") == {"sgd": 0.0, **DEFAULT_LAMBDA["class"]}
    assert default_lambdas("class", l2=0.5, ewc=7) == {"sgd": 0.0, "l2": 0.5, "ewc": 7.0}
    with pytest.raises(ValueError, match="scenario"):
        default_lambdas("spatial")


@pytest.mark.parametrize("name", SCENARIOS)
def test_run_scenario_is_run_sequence_with_the_documented_seeds(digits, name):
    """Each method's matrix is run_sequence's on the scenario permuted by default_rng([seed, 2])."""
    seed = 3
    result = run_scenario(name, digits, 2, ewc_lambda=4.0, seed=seed, **TINY)
    scenario = make_scenario(name, digits, 2, rng=np.random.default_rng([seed, 2]))
    assert result["tasks"] == [task.name for task in scenario.tasks]
    lambdas = {"sgd": 0.0, "l2": DEFAULT_LAMBDA[name]["l2"], "ewc": 4.0}
    for method in METHODS:
        R = run_sequence(scenario, method, lam=lambdas[method], seed=seed, **TINY)["R"]
        entry = result["methods"][method]
        assert entry["lambda"] == lambdas[method]
        np.testing.assert_array_equal(np.array(entry["accuracy_matrix"]), R)
        assert {k: entry[k] for k in summarize(R)} == summarize(R)


def test_drift_is_measured_from_the_shared_task0_optimum(digits):
    result = run_scenario("domain", digits, 2, seed=0, **TINY)
    drift = {m: result["methods"][m]["drift_from_task0"]["weighted"] for m in METHODS}
    assert all(value > 0 for value in drift.values())
    # EWC pulls the parameters task 0's Fisher weighs back towards theta*_0; SGD does not.
    assert drift["ewc"] < drift["sgd"]


def test_sweep_marks_unstable_lambdas_and_keeps_going(digits):
    scenario = make_scenario("task", digits, 2)
    sgd_R = run_sequence(scenario, "sgd", **TINY)["R"]
    rows = sweep(scenario, (0.5, 1e6), sgd_R, **TINY)
    assert rows["sgd"] == {"lambda": 0.0, **summarize(sgd_R)}
    assert [row["diverged"] for row in rows["l2"]] == [False, True]
    assert rows["l2"][1]["average_accuracy"] is None
    R = run_sequence(scenario, "ewc", lam=0.5, **TINY)["R"]
    assert rows["ewc"][0]["average_accuracy"] == summarize(R)["average_accuracy"]


def test_progress_goes_to_stderr_only_when_asked(digits, capsys):
    run_scenario("task", digits, 2, **TINY)
    assert capsys.readouterr().err == ""
    run_scenario("task", digits, 2, progress=True, **TINY)
    err = capsys.readouterr().err
    assert all(f"task/{method}: 2/2 (100%)" in err for method in METHODS)


def test_run_sequence_refuses_an_unknown_method(digits):
    with pytest.raises(ValueError, match="method"):
        run_sequence(make_scenario("task", digits, 2), "adam", **TINY)
    assert experiments.METHOD_TITLES.keys() == set(METHODS)
