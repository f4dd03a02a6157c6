"""ewc_ref.pytorch.diagnose_penalty's inputs: parameter conventions, past tasks in every form, float32, custom modules.

The penalties, the points and the tolerances: tests/support/torch_penalties.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.penalty_catalogue import HERE
from support.torch_penalties import (
    LAMBDA,
    MAKE,
    assert_unchanged,
    custom_tasks,
    net_of,
    snapshot,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.cli import main
from ewc_ref.pytorch.strategies import STYLES, torch_models_and_data
from ewc_ref.verify.penalty_fit import PENALTY_TOL, ROUNDED_VALUE_TOL


# ----------------------------------------------------------------------------- what the penalty takes, input forms
def test_module_named_parameters_and_parameters_conventions_give_the_same_samples(catalogue):
    penalty = catalogue.entries["kirkpatrick_separate"]
    names = [n for n, _ in net_of(torch.float64).named_parameters()]
    forms = {"named_parameters": penalty,
             "module": lambda module: penalty(dict(module.named_parameters())),
             "parameters": lambda params: penalty(dict(zip(names, params, strict=True)))}
    samples = {takes: ep.penalty_samples(catalogue.states, f, model=net_of(torch.float64), takes=takes)
               for takes, f in forms.items()}
    for takes in ("module", "parameters"):
        for ours, reference in zip(samples[takes], samples["named_parameters"], strict=True):
            np.testing.assert_array_equal(ours, reference)


def test_past_modules_state_dicts_recorders_and_loaders_give_the_same_verdict(catalogue):
    """Past tasks as nn.Modules or state_dicts, data as tensors, a Recorder a loop iterated, or a DataLoader."""
    states, tasks, penalty, _ = catalogue.inputs("avalanche_separate")
    modules = [net_of(torch.float64) for _ in states]
    for module, state in zip(modules, states, strict=True):
        module.load_state_dict(state)
    recorder = ep.Recorder(DataLoader(TensorDataset(*tasks[1]), batch_size=8))
    for _ in recorder:  # their loop
        pass
    mixed_data = [tasks[0], recorder, DataLoader(TensorDataset(*tasks[2]), batch_size=8)]
    results = [ep.diagnose_penalty(past, data, penalty, model=net_of(torch.float64), likelihood="categorical",
                                   takes="named_parameters", lam=LAMBDA).to_dict()
               for past, data in [(states, tasks), (modules, mixed_data), ([modules[0], states[1], modules[2]], tasks)]]
    assert results[0]["combination"] == "separate"
    assert results[1] == results[0] and results[2] == results[0]


class EWCPluginLike:
    """A stand-in with the layout and arithmetic of Avalanche 0.6's EWCPlugin(mode='separate').before_backward:
    saved_params and importances per experience by parameter name, the penalty accumulated in a float32
    tensor, ewc_lambda times the sum over experiences (no 1/2) added to strategy.loss."""

    def __init__(self, ewc_lambda, saved_params, importances):
        self.ewc_lambda, self.saved_params, self.importances = ewc_lambda, saved_params, importances

    def before_backward(self, strategy):
        accumulated = torch.tensor(0).float()
        for experience in range(strategy.clock.train_exp_counter):
            for name, current in strategy.model.named_parameters():
                imp, saved = self.importances[experience][name], self.saved_params[experience][name]
                accumulated += (imp.expand(current.shape) * (current - saved.expand(current.shape)).pow(2)).sum()
        strategy.loss += self.ewc_lambda * accumulated


def avalanche_style_penalty(catalogue, dtype):
    """(states, tasks, penalty): the plugin after three experiences, importances by the catalogue's
    avalanche_importances (minibatches of 8), its before_backward called as a training step would."""
    states, tasks = (catalogue.states32, catalogue.tasks32) if dtype == torch.float32 else (catalogue.states, catalogue.tasks)
    net = net_of(dtype)
    importances = []
    for state, (x, y) in zip(states, tasks, strict=True):
        net.load_state_dict(state)
        importances.append(MAKE.avalanche_importances(net, x, y))
    plugin = EWCPluginLike(LAMBDA, states, importances)

    def penalty(model):
        strategy = SimpleNamespace(model=model, loss=torch.zeros((), dtype=dtype), clock=SimpleNamespace(train_exp_counter=3))
        plugin.before_backward(strategy)
        return strategy.loss

    return states, tasks, penalty


def test_an_avalanche_style_before_backward_wrapped_as_a_penalty_of_a_float32_module(catalogue):
    """Avalanche's default precision: named separate, batched B = 8, lambda_paper = 2 x ewc_lambda."""
    states, tasks, penalty = avalanche_style_penalty(catalogue, torch.float32)
    result = ep.diagnose_penalty(states, tasks, penalty, model=net_of(torch.float32), likelihood=nn.CrossEntropyLoss(),
                                 lam=LAMBDA)
    assert (result.fit.quadratic, result.fit.precision) == ("diagonal quadratic", "float32")
    assert (result.combination, result.factor_expression) == ("separate", "2")
    assert (result.curvature.estimator, result.curvature.batch_size) == ("batched", 8)


def test_the_avalanche_style_float32_accumulator_on_a_float64_module_as_docs_penalty_conventions_says(catalogue):
    """The float32 accumulator inside a float64 loss: float64 gradients, the value rounded to float32
    (residual measured 7.45e-8 = 1.25 u, above float64's 1e-8) and lambda rounded to float32(0.4). Named
    separate, W judged at float64's 1e-8, the value at float32's round-off (said in the reason), and the
    factor 2 float32(0.4) / 0.4 = 2.0000000298 named 2 with the rounding stated; lam = float32(0.4) gives 2."""
    states, tasks, penalty = avalanche_style_penalty(catalogue, torch.float64)
    results = [ep.diagnose_penalty(states, tasks, penalty, model=net_of(torch.float64), likelihood="categorical", lam=lam)
               for lam in (LAMBDA, float(np.float32(LAMBDA)))]
    for result in results:
        fit = result.fit
        assert (fit.quadratic, fit.precision, fit.value_precision, result.tol) == (
            "diagonal quadratic", "float64", "float32", PENALTY_TOL["float64"]), fit.reason
        assert PENALTY_TOL["float64"] < fit.value_residual <= ROUNDED_VALUE_TOL and fit.value_rounded
        assert "value rounded to float32" in fit.reason and "gradients float64" in fit.reason
        assert (result.combination, result.curvature.estimator, result.curvature.batch_size) == ("separate", "batched", 8)
        assert result.curvature.scale == pytest.approx(2 * float(np.float32(LAMBDA)), rel=1e-12)
        assert "values float32 numbers" in result.report()
    assert [r.factor_expression for r in results] == ["2", "2"]
    assert "x 1.0000000149: lambda rounded to float32" in results[0].factor_words
    assert "rounded" not in results[1].factor_words  # exactly 2: nothing to explain


def test_a_genuinely_different_factor_or_value_is_not_passed_as_float32_rounding(catalogue):
    """The allowances are not a wider band: the same accumulator with lam 2 x (1 + 1e-5) off names no
    factor, and a value 1e-5 relative off (then rounded to float32) is still 'value inconsistent'."""
    states, tasks, penalty = avalanche_style_penalty(catalogue, torch.float64)
    result = ep.diagnose_penalty(states, tasks, penalty, model=net_of(torch.float64), likelihood="categorical",
                                 lam=LAMBDA / (1 + 1e-5))
    assert result.combination == "separate" and result.factor_expression is None, result.factor_words
    assert result.factor == pytest.approx(2.00002, rel=1e-7)

    calls = []

    def off(model):  # 1e-5 relative more at every other point: a value that is not the gradient's integral
        calls.append(1)
        value = penalty(model)
        return (value + 1e-5 * (len(calls) % 2) * value.detach()).float()

    fit = er.fit_penalty(*ep.penalty_samples(states, off, model=net_of(torch.float64)))
    assert fit.value_precision == "float32" and ROUNDED_VALUE_TOL < fit.value_residual < PENALTY_TOL["float32"]
    assert fit.quadratic == "value inconsistent" and "different functions" in fit.reason


def test_a_float32_value_of_a_float64_module_is_judged_at_float32_round_off(catalogue, tmp_path, capsys):
    """A penalty cast to float32 at the end: float64 gradients, a value rounded to float32. The core
    judges the value at float32's round-off from the numbers themselves, the gradients at float64's 1e-8:
    the same verdict from er.fit_penalty, the torch path and the command line on the saved file (no --tol)."""
    states, tasks, kirkpatrick, _ = catalogue.inputs("kirkpatrick_separate")

    def penalty(params):
        return kirkpatrick(params).float()

    samples = ep.penalty_samples(states, penalty, model=net_of(torch.float64), takes="named_parameters")
    fit = er.fit_penalty(*samples)
    assert (fit.quadratic, fit.value_precision, fit.tol) == ("diagonal quadratic", "float32", PENALTY_TOL["float64"])
    assert ep.save_penalty(tmp_path / "theirs.npz", states, penalty, model=net_of(torch.float64),
                           takes="named_parameters") == PENALTY_TOL["float64"]
    result = ep.diagnose_penalty(states, tasks, penalty, model=net_of(torch.float64), likelihood="categorical",
                                 takes="named_parameters", lam=LAMBDA)
    assert (result.fit.quadratic, result.tol) == ("diagonal quadratic", PENALTY_TOL["float64"])
    assert (result.combination, result.curvature.estimator, result.factor_expression) == ("separate", "exact", "1")
    code = main(["diagnose-penalty", *(str(HERE / f"model_{t}.npz") for t in (1, 2, 3)), "--data",
                 *(str(HERE / f"data_{t}.npz") for t in (1, 2, 3)), str(tmp_path / "theirs.npz"),
                 "--lambda", str(LAMBDA), "--json", "--quiet"])
    assert code == 0
    cli = json.loads(capsys.readouterr().out)
    assert (cli["penalty_fit"]["quadratic"], cli["penalty_fit"]["value_precision"], cli["combination"]) == (
        "diagonal quadratic", "float32", "separate")


def test_a_plain_ewc_loss_of_the_module_avalanche_style_on_a_custom_module():
    """def ewc_loss(model): lambda sum_t sum_i F_t (theta - theta*_t)^2 (no 1/2), F_t exact: separate, factor 2.
    The module's parameters() order is not the MLP's; a column misplaced would break the fit."""
    past, data = custom_tasks()
    fishers = [ep.fisher(m, d, "exact", likelihood=nn.CrossEntropyLoss()) for m, d in zip(past, data, strict=True)]
    anchors = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in past]

    def ewc_loss(model):
        return 0.3 * sum((f[n] * (p - a[n]) ** 2).sum() for f, a in zip(fishers, anchors, strict=True)
                         for n, p in model.named_parameters())

    net = custom_tasks(tasks=1)[0][0]
    result = ep.diagnose_penalty(past, data, ewc_loss, model=net, likelihood=nn.CrossEntropyLoss(), lam=0.3)
    assert result.combination == "separate" and result.factor_expression == "2"
    assert (result.curvature.estimator, result.curvature.row) == ("exact", "sum")
    assert result.curvature.scale == pytest.approx(0.6, rel=1e-8)


def test_a_mean_per_parameter_tensor_in_torch_is_named_with_1_over_p_t():
    """ewc_loss with .mean() of each tensor's terms instead of .sum() (a common port): no single lambda
    factor (before: 'none'); named separate, exact, factor 2/P_t with each tensor's P_t by its torch name."""
    past, data = custom_tasks()
    fishers = [ep.fisher(m, d, "exact", likelihood=nn.CrossEntropyLoss()) for m, d in zip(past, data, strict=True)]
    anchors = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in past]

    def ewc_loss(model):
        return 0.3 * sum((f[n] * (p - a[n]) ** 2).mean() for f, a in zip(fishers, anchors, strict=True)
                         for n, p in model.named_parameters())

    result = ep.diagnose_penalty(past, data, ewc_loss, model=custom_tasks(tasks=1)[0][0],
                                 likelihood=nn.CrossEntropyLoss(), lam=0.3)
    assert (result.combination, result.curvature.estimator, result.factor_expression) == ("separate", "exact", "2/P_t")
    assert result.per_tensor_mean == {"fc1.weight": 20, "fc1.bias": 5, "body.weight": 25, "head.weight": 15,
                                      "head.bias": 3}


def test_columns_are_in_the_model_files_order_for_a_module_registered_out_of_order():
    past, _ = custom_tasks(tasks=1)
    net = custom_tasks(tasks=1)[0][0]
    weights = {name: float(i + 1) for i, (name, _) in enumerate(net.named_parameters())}  # 1/2 w_n ||p_n||^2
    theta, value, grad = ep.penalty_samples(past, lambda m: sum(0.5 * weights[n] * (p ** 2).sum()
                                                                 for n, p in m.named_parameters()), model=net)
    model, _, _ = ep.to_model(net, "categorical")
    assert model.param_names[0] == "fc1.weight" != next(iter(weights))
    expected = np.concatenate([np.full(model.unflatten(theta[0])[n].size, weights[n]) for n in model.param_names])
    np.testing.assert_allclose(grad, theta * expected, rtol=1e-15)
    np.testing.assert_allclose(value, 0.5 * (theta ** 2) @ expected, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style", STYLES)
def test_property_a_diagonal_quadratic_written_in_torch_is_read_back(style, dtype):
    """Over drawn architectures (1-3 layers, every activation and likelihood) in both module styles and
    both dtypes: 1/2 sum_i W_i (theta_i - a_i)^2 over named_parameters() gives back W and a (module
    restored). To the fit's threshold: exact products in float64; float32 gradients of float32 points
    err by ~eps32 |theta - a| / |step| ~ 1e-6 relative, inside 1e-4."""

    @settings(max_examples=10, deadline=None)
    @given(torch_models_and_data(styles=(style,), dtype=dtype, max_layers=3, max_width=6), st.integers(0, 2**32 - 1))
    def check(drawn, seed):
        module, lik, _, _, _ = drawn
        model, _, _ = ep.to_model(module, lik)
        rng = np.random.default_rng(seed)
        weights = rng.uniform(0.5, 2.0, model.n_params)  # (P,) in the MLP's flat order
        anchor = model.theta.astype(np.float64) + 0.3 * rng.standard_normal(model.n_params)
        w, a = ({n: torch.from_numpy(v) for n, v in model.unflatten(vector).items()} for vector in (weights, anchor))

        def penalty(m):
            return 0.5 * sum((w[n] * (p - a[n]) ** 2).sum() for n, p in m.named_parameters())

        before = snapshot(module)
        fit = er.fit_penalty(*ep.penalty_samples([module], penalty, model=module))
        assert_unchanged(module, before)
        assert fit.quadratic == "diagonal quadratic"
        assert fit.precision == ("float32" if dtype == np.float32 else "float64")
        tol = PENALTY_TOL[fit.precision]
        np.testing.assert_allclose(fit.weights, weights, rtol=tol)
        np.testing.assert_allclose(fit.anchor, anchor, rtol=0, atol=tol * np.max(np.abs(anchor)))

    check()
