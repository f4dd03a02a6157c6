"""ewc_ref.pytorch.diagnose_penalty against real torch: THEIR penalty as a torch callable, named.

The penalties are the catalogue's own torch formulas (tests/fixtures/penalties/make_penalties.py,
imported, not rewritten), built on the committed fixtures' weights and data, so the torch path and
``ewc-ref diagnose-penalty`` on the committed files read the same penalties at different points
(the files: 9 points around theta*_3; here: the optima, their midpoints and three lines). A
quadratic's W and anchor do not depend on the points, so both paths must give the same verdict,
and the fitted W, anchor and scale agree to the fit's round-off threshold (1e-8 relative in
float64, 1e-4 in float32: verify/penalty_fit.py, PENALTY_TOL).

The module is compared bit for bit (torch.equal) after every call, returned or raised.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.penalty_catalogue import CATALOGUE, HERE, verdict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.cli import main
from ewc_ref.pytorch.strategies import STYLES, torch_models_and_data
from ewc_ref.verify.penalty_fit import PENALTY_TOL, ROUNDED_VALUE_TOL, read_penalty_samples

LAMBDA, GAMMA = CATALOGUE["lambda"], CATALOGUE["gamma"]


def _make_penalties():
    """The catalogue script as a module; it sets torch's default dtype to float64 on import, which is undone."""
    default = torch.get_default_dtype()
    spec = importlib.util.spec_from_file_location("make_penalties", HERE / "make_penalties.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_default_dtype(default)
    return module


MAKE = _make_penalties()


def net_of(dtype):
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def fixture_tasks(models: str, dtype) -> tuple[list, list]:
    """The committed theta*_t as state_dicts of `dtype` tensors and each task's (x, y), as the script made them."""
    data_name = "data32" if models == "model32" else "data"
    states, tasks = [], []
    for t in range(1, CATALOGUE["tasks"] + 1):
        with np.load(HERE / f"{models}_{t}.npz") as f:
            states.append({k: torch.from_numpy(f[k]).to(dtype) for k in f.files if not k.startswith("__")})
        with np.load(HERE / f"{data_name}_{t}.npz") as f:
            tasks.append((torch.from_numpy(f["x"]).to(dtype), torch.from_numpy(f["y"])))
    return states, tasks


class Catalogue:
    """The catalogue's penalties (callables of a dict {name: parameter}) on the fixtures, float64 and float32."""

    def __init__(self):
        self.states, self.tasks = fixture_tasks("model", torch.float64)
        self.states32, self.tasks32 = fixture_tasks("model32", torch.float32)
        self.net = net_of(torch.float64)  # the script's net: fisher_at_theta writes its weights
        self.net32 = net_of(torch.float32)
        self.entries = {name: penalty for name, (penalty, _) in MAKE.entries(self.net, self.states, self.tasks).items()}
        self.entries["avalanche_separate_float32"] = MAKE.entries(self.net32, self.states32, self.tasks32)["avalanche_separate"][0]

    def inputs(self, name):
        """(states, tasks, penalty, a fresh module of the entry's dtype)."""
        if name.endswith("float32"):
            return self.states32, self.tasks32, self.entries[name], net_of(torch.float32)
        return self.states, self.tasks, self.entries[name], net_of(torch.float64)


@pytest.fixture(scope="module")
def catalogue():
    return Catalogue()


def snapshot(module):
    return ([(p.detach().clone(), p.requires_grad, p.grad, None if p.grad is None else p.grad.detach().clone())
             for p in module.parameters()], [m.training for m in module.modules()],
            [b.detach().clone() for b in module.buffers()])


def assert_unchanged(module, before):
    params, training, buffers = before
    assert [m.training for m in module.modules()] == training
    assert all(torch.equal(b, value) for b, value in zip(module.buffers(), buffers, strict=True))
    for p, (value, requires_grad, grad, grad_value) in zip(module.parameters(), params, strict=True):
        assert torch.equal(p.detach(), value) and p.dtype == value.dtype  # bit for bit (no NaN here)
        assert p.requires_grad == requires_grad and p.grad is grad
        assert grad is None or torch.equal(grad, grad_value)


def with_grads(module):
    """A module in the state a training loop leaves it: .grad set on all but one parameter, one frozen, eval mode."""
    params = list(module.parameters())
    for i, p in enumerate(params[:-1]):
        p.grad = torch.full_like(p, 0.125 * (i + 1))
    params[1].requires_grad_(False)
    return module.eval()


# ----------------------------------------------------------------------------- the catalogue, named
@pytest.mark.parametrize("name", sorted(CATALOGUE["entries"]))
def test_catalogue_penalty_named_through_torch_as_the_cli_names_its_file(name, catalogue):
    states, tasks, penalty, module = catalogue.inputs(name)
    with_grads(module)
    before = snapshot(module)
    result = ep.diagnose_penalty(states, tasks, penalty, model=module, likelihood=nn.CrossEntropyLoss(),
                                 takes="named_parameters", lam=LAMBDA, gamma=GAMMA).to_dict()
    assert_unchanged(module, before)
    cli = verdict(name)
    meta = CATALOGUE["entries"][name]
    assert result["combination"] == cli["combination"] == meta["combination"], result["causes"]
    assert result["penalty_fit"]["quadratic"] == cli["penalty_fit"]["quadratic"]
    assert result["penalty_fit"]["precision"] == cli["penalty_fit"]["precision"]
    assert result["factor_expression"] == cli["factor_expression"]
    assert result["n_params"] == cli["n_params"] and result["penalty_fit"]["n_points"] == 2 * 3 - 1 + 2 * 3
    if cli["curvature"] is None:
        assert result["curvature"] is None and result["causes"]
        return
    tol = PENALTY_TOL[cli["penalty_fit"]["precision"]]
    ours, theirs = result["curvature"], cli["curvature"]
    for key in ("estimator", "batch_size", "row"):
        assert ours[key] == theirs[key], key
    assert ours["scale"] == pytest.approx(theirs["scale"], rel=tol)
    assert (result["gamma_fitted"] is None) == (cli["gamma_fitted"] is None)
    if cli["gamma_fitted"] is not None:
        assert result["gamma_fitted"] == pytest.approx(cli["gamma_fitted"], rel=tol)
    assert (result["anchor"] or {}).get("name") == (cli["anchor"] or {}).get("name")
    assert [(d["estimator"], d["batch_size"]) for d in result["per_task"]] == [
        (d["estimator"], d["batch_size"]) for d in cli["per_task"]]


@pytest.mark.parametrize("name", ["avalanche_separate", "schwarz_online", "wrong_anchor", "avalanche_separate_float32"])
def test_w_and_anchor_from_torch_equal_those_of_the_committed_file(name, catalogue):
    """The fit itself: W (P,) and the anchor (P,) read at our points equal those read from the file's 9 points,
    coordinate by coordinate (a column permuted or a gradient of the wrong point would differ by O(1))."""
    states, _, penalty, module = catalogue.inputs(name)
    theta, value, grad = ep.penalty_samples(states, penalty, model=module, takes="named_parameters")
    ours, theirs = er.fit_penalty(theta, value, grad), er.fit_penalty(*read_penalty_samples(HERE / f"{name}.npz"))
    assert ours.quadratic == theirs.quadratic == "diagonal quadratic"
    tol = PENALTY_TOL[theirs.precision]
    scale = np.max(np.abs(theirs.weights))
    np.testing.assert_allclose(ours.weights, theirs.weights, rtol=0, atol=tol * scale)
    penalised = np.abs(theirs.weights) > 1e-3 * scale  # the anchor of a tiny W_i is ill-conditioned
    np.testing.assert_allclose(ours.anchor[penalised], theirs.anchor[penalised], rtol=0, atol=10 * tol)


def test_the_points_are_the_optima_their_midpoints_and_lines_rounded_to_the_module_dtype(catalogue):
    theta32, _, _ = ep.penalty_samples(catalogue.states32, catalogue.entries["avalanche_separate_float32"],
                                       model=net_of(torch.float32), takes="named_parameters")
    theta, _, _ = ep.penalty_samples(catalogue.states, catalogue.entries["avalanche_separate"],
                                     model=net_of(torch.float64), takes="named_parameters")
    optima = [torch.nn.utils.parameters_to_vector(s.values()).numpy() for s in catalogue.states]
    np.testing.assert_array_equal(theta[:3], np.stack(optima))
    np.testing.assert_array_equal(theta[3:5], [0.5 * (optima[0] + optima[1]), 0.5 * (optima[1] + optima[2])])
    steps = theta[5:] - optima[2]
    np.testing.assert_allclose(steps[1::2], 2 * steps[0::2], rtol=1e-12, atol=1e-15)  # theta + d, theta + 2 d
    assert theta32.dtype == np.float64 and np.array_equal(theta32, theta32.astype(np.float32).astype(np.float64))
    assert not np.array_equal(theta, theta.astype(np.float32).astype(np.float64))


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


class Custom(nn.Module):
    """Parameters registered in another order than forward uses them (head first), one layer without bias,
    and a buffer forward does not use (a step counter)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.head = nn.Linear(5, 3)
        self.body = nn.Linear(5, 5, bias=False)
        self.fc1 = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.body(torch.tanh(self.fc1(x)))))


def custom_tasks(dtype=torch.float64, tasks=2):
    torch.manual_seed(3)
    modules, data = [], []
    for _ in range(tasks):
        module = Custom().to(dtype)
        for p in module.parameters():
            nn.init.normal_(p, std=0.6)
        modules.append(module)
        data.append((torch.randn(20, 4, dtype=dtype), torch.randint(0, 3, (20,))))
    return modules, data


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


# ----------------------------------------------------------------------------- the module is restored
def test_the_module_the_penalty_writes_into_is_restored_bit_for_bit(catalogue):
    """fisher_at_theta copies the point into the script's net and runs backward on it (zero_grad, .grad):
    with that net as `model`, every value, .grad object and flag is put back."""
    states, tasks, penalty, _ = catalogue.inputs("fisher_at_theta")
    net = with_grads(catalogue.net)
    try:
        before = snapshot(net)
        result = ep.diagnose_penalty(states, tasks, penalty, model=net, likelihood="categorical",
                                     takes="named_parameters", lam=LAMBDA)
        assert result.fit.quadratic == "not quadratic" and result.curvature.row == "at theta"
        assert_unchanged(net, before)
    finally:  # the shared net back as the catalogue's penalties use it
        for p in net.parameters():
            p.requires_grad_(True)
            p.grad = None
        net.train()


class Fails:
    """A penalty that works at the first `after` points, then does `how` (raise, return non-finite ...)."""

    def __init__(self, after: int, how: str):
        self.calls, self.after, self.how = 0, after, how

    def __call__(self, module):
        self.calls += 1
        module.train()  # as a Fisher loop inside a penalty would: train mode, .grad cleared, a counter stepped
        module.zero_grad()
        module.calls += 1
        value = sum((p ** 2).sum() for p in module.parameters())
        if self.calls <= self.after:
            return value
        if self.how == "raise":
            raise RuntimeError("their code failed")
        make = {"nan": lambda: value * float("nan"), "inf": lambda: value / 0.0,
                "vector": lambda: torch.stack([value, value]), "detached": value.detach, "float": lambda: float(value.detach()), "half": value.half}
        return make[self.how]()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how, error, words", [
    ("raise", RuntimeError, "their code failed"),
    ("nan", ValueError, r"^penalty: non-finite value or gradient at point 2"),
    ("inf", ValueError, r"^penalty: non-finite value or gradient at point 2"),
    ("vector", ValueError, r"^penalty: expected a scalar tensor, got shape \(2,\) at point 2"),
    ("detached", ValueError, r"^penalty: returned a tensor not connected to the module's parameters at point 2 \(requires_grad is False\)"),
    ("half", ValueError, r"^penalty: expected a float32 or float64 tensor, got torch.float16 at point 2"),
    ("float", TypeError, r"^penalty: expected it to return a scalar torch tensor, got float at point 2"),
])
def test_a_failing_penalty_is_refused_naming_it_and_the_module_restored(how, error, words, dtype):
    past, data = custom_tasks(dtype)
    net = with_grads(custom_tasks(dtype, tasks=1)[0][0])
    before = snapshot(net)
    penalty = Fails(2, how)
    with pytest.raises(error, match=words):
        ep.diagnose_penalty(past, data, penalty, model=net, likelihood="categorical")
    assert penalty.calls == 3  # two points evaluated (the module then held them), failed at the third
    assert_unchanged(net, before)


def test_a_penalty_of_other_tensors_than_the_parameters_is_refused():
    past, data = custom_tasks()
    other = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^penalty: .* not connected .* \(its graph reaches none of them\)"):
        ep.diagnose_penalty(past, data, lambda module: (other ** 2).sum(), model=custom_tasks(tasks=1)[0][0],
                            likelihood="categorical")


@pytest.mark.parametrize("change, error, words", [
    (dict(penalty=3.0), TypeError, r"^penalty: expected a callable"),
    (dict(takes="weights"), ValueError, r"^takes: expected one of"),
    (dict(model="net"), TypeError, r"^model: expected the torch nn.Module"),
    (dict(likelihood=None), TypeError, r"^likelihood: required"),
    (dict(models=[{"fc1.weight": torch.zeros(5, 4)}]), ValueError, r"^models\[0\]: does not match model's parameters: missing"),
    (dict(models=[3]), TypeError, r"^models\[0\]: expected an nn.Module or a state_dict"),
    (dict(data=[(torch.zeros(20, 4), torch.zeros(20, dtype=torch.long))]), ValueError, r"^data: expected one .* per past task \(2\)"),
    (dict(directions=0), ValueError, r"^directions: expected an integer >= 1"),
    (dict(scale=-0.1), ValueError, r"^scale: expected a finite number > 0"),
    (dict(seed=0.5), TypeError, r"^seed: expected an integer"),
    (dict(models=[]), TypeError, r"^models: expected a list .*, got an empty list"),
    (dict(lam=-1.0), ValueError, r"^lam: expected a finite number > 0"),
])
def test_bad_arguments_are_refused_naming_them(change, error, words):
    past, data = custom_tasks()
    net = with_grads(custom_tasks(tasks=1)[0][0])
    before = snapshot(net)
    arguments = dict(models=past, data=data, penalty=lambda m: sum((p ** 2).sum() for p in m.parameters()),
                     model=net, likelihood="categorical") | change
    with pytest.raises(error, match=words):
        ep.diagnose_penalty(arguments.pop("models"), arguments.pop("data"), arguments.pop("penalty"), **arguments)
    assert_unchanged(net, before)


def test_a_plain_list_of_one_tasks_batches_is_refused_and_a_list_inside_the_list_is_that_task():
    """The rule for `data`: a list is one entry per past task. One task's four batches as a plain list
    are ambiguous (four tasks?) and refused naming data; [[batches]] is the task, the same verdict as (x, y)."""
    past, data = custom_tasks(tasks=1)
    x, y = data[0]
    batches = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5)]
    fisher = ep.fisher(past[0], (x, y), "exact", likelihood=nn.CrossEntropyLoss())
    anchor = {n: p.detach().clone() for n, p in past[0].named_parameters()}

    def penalty(model):
        return 0.3 * sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())

    net = custom_tasks(tasks=1)[0][0]
    with pytest.raises(ValueError, match=r"^data: expected one entry per past task \(1\), oldest first; got a plain "
                                         r"list of 4 \(x, y\) pairs, ambiguous .* \[\[\(x1, y1\), \(x2, y2\), ...\]\]"):
        ep.diagnose_penalty(past, batches, penalty, model=net, likelihood="categorical")
    results = [ep.diagnose_penalty(past, form, penalty, model=net, likelihood="categorical", lam=0.3).to_dict()
               for form in ([batches], (x, y))]
    assert results[0] == results[1] and (results[0]["combination"], results[0]["factor_expression"]) == ("single task", "2")


# ----------------------------------------------------------------------------- the file for the command line
def test_save_penalty_gives_the_command_line_the_verdict_of_the_torch_path(catalogue, tmp_path, capsys):
    states, tasks, penalty, module = catalogue.inputs("avalanche_online")
    result = ep.diagnose_penalty(states, tasks, penalty, model=module, likelihood="categorical",
                                 takes="named_parameters", lam=LAMBDA, gamma=GAMMA)
    paths = []
    for t, (state, task) in enumerate(zip(states, tasks, strict=True)):
        past = net_of(torch.float64)
        past.load_state_dict(state)
        ep.save(past, tmp_path / f"model_{t}.npz", likelihood="categorical")
        ep.save_data(tmp_path / f"data_{t}.npz", task)
        paths.append((str(tmp_path / f"model_{t}.npz"), str(tmp_path / f"data_{t}.npz")))
    assert ep.save_penalty(tmp_path / "theirs.npz", states, penalty, model=module,
                           takes="named_parameters") == PENALTY_TOL["float64"]
    with np.load(tmp_path / "theirs.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["grad", "theta", "value"] and f["theta"].shape == (11, 51)
    code = main(["diagnose-penalty", *(m for m, _ in paths), "--data", *(d for _, d in paths), str(tmp_path / "theirs.npz"),
                 "--lambda", str(LAMBDA), "--gamma", str(GAMMA), "--json", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == json.loads(result.to_json())
