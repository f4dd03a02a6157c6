"""The PyTorch bridge (ewc_ref.pytorch) against real torch: models, refusals, data, fisher, diagnose.

torch is installed by the test command (the `torch` extra, CPU build); nothing here is mocked.
Tolerances: the reference and torch compute the same float64 sums in a different order, so
identities hold to round-off; 1e-12 relative (normwise) is far above it at these sizes (P < 200,
N <= 40) and far below any wrong permutation, factor or batch boundary (>= 1e-3 here). Verdict
scales are checked to 1e-8 relative, diagnose's float64 round-off threshold.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-12


class Custom(nn.Module):
    """Custom names, registered in a different order than forward runs them, one layer without bias."""

    def __init__(self, activation=torch.tanh, d_in=4, hidden=5, c=3):
        super().__init__()
        self.head = nn.Linear(hidden, c)
        self.body = nn.Sequential(nn.Linear(hidden, hidden, bias=False), nn.Identity())
        self.fc1 = nn.Linear(d_in, hidden)
        self.activation = activation

    def forward(self, x):
        x = self.activation(self.fc1(x))
        x = self.activation(self.body(x))
        return self.head(x)


def double(module, seed=0):
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.6)
    return module.double()


def data(n=13, d=4, c=3, kind="categorical", seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "categorical":
        return x, torch.randint(0, c, (n,), generator=g)
    if kind == "bernoulli":
        return x, torch.randint(0, 2, (n, c), generator=g).to(dtype)
    return x, torch.randn(n, c, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- to_model
ACTIVATIONS = {  # how forward writes the activation -> ewc_ref's name
    "nn.ReLU": (lambda: nn.ReLU(), "relu"), "nn.Tanh": (lambda: nn.Tanh(), "tanh"),
    "nn.Sigmoid": (lambda: nn.Sigmoid(), "sigmoid"), "torch.relu": (lambda: torch.relu, "relu"),
    "torch.tanh": (lambda: torch.tanh, "tanh"), "F.relu": (lambda: F.relu, "relu"),
    "torch.sigmoid": (lambda: torch.sigmoid, "sigmoid"), "nn.Identity": (lambda: nn.Identity(), "identity"),
}


@pytest.mark.parametrize("written", sorted(ACTIVATIONS))
def test_custom_module_reads_with_its_names_and_forward(written):
    make, name = ACTIVATIONS[written]
    net = double(Custom(make()))
    model, lik, names = ep.to_model(net, nn.CrossEntropyLoss())
    assert model.activation.name == name and lik.name == "categorical"
    assert names == [n for n, _ in net.named_parameters()] == ["head.weight", "head.bias", "body.0.weight",
                                                                 "fc1.weight", "fc1.bias"]
    assert model.param_names == ["fc1.weight", "fc1.bias", "body.0.weight", "head.weight", "head.bias"]
    x, _ = data()
    assert relative_error(model.predict(x.numpy()), net(x).detach().numpy()) <= RTOL


def test_method_activation_and_input_flatten_read():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(4, 2)

        def forward(self, x):
            x = x.contiguous().view(x.size(0), -1)
            return self.b(self.a(x).relu())

    net = double(Flat())
    model, _, _ = ep.to_model(net, "categorical")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert model.activation.name == "relu"
    assert relative_error(model.predict(x.reshape(5, -1).numpy()), net(x).detach().numpy()) <= RTOL


def test_sequential_float32_is_kept_and_eval_dropout_ignored():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).eval()
    model, _, names = ep.to_model(net, "categorical")
    assert model.dtype == np.float32 and names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert model.module_names == ["0", "3"]
    x, _ = data(dtype=torch.float32)
    assert relative_error(model.predict(x.numpy()), net(x).detach().numpy()) <= 1e-6  # float32 round-off


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


class SoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return F.softmax(self.fc(x), dim=1)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class RawParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(4, 3))

    def forward(self, x):
        return x @ self.W


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


REFUSED = {  # module -> words the error must contain (the module or operation, and why)
    "Conv2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), "'0' (Conv2d)", "convolution"),
    "BatchNorm": (lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), "'1' (BatchNorm1d)", "batch normalisation"),
    "Dropout in train mode": (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 3)),
                              "'2' (Dropout)", "module.eval()"),
    "residual add": (Residual, "function add()", "residual add"),
    "softmax function": (SoftmaxInside, "function softmax()", "softmax inside forward"),
    "softmax module": (lambda: nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), "'1' (Softmax)", "softmax inside forward"),
    "shared module": (Shared, "'fc' (Linear)", "shared weights"),
    "tied parameters": (Tied, "'b.weight'", "shared weights"),
    "mixed activations": (Mixed, "mixed activations", "a -> b: relu, b -> c: tanh"),
    "activation after the last layer": (lambda: nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), "'1' (Sigmoid)", "after the last Linear"),
    "two activations in a row": (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 3)),
                                 "'1' (ReLU) then module '2' (Tanh)", "two activations"),
    "unused parameters": (Unused, "['spare.weight', 'spare.bias']", "does not use them"),
    "raw parameter": (RawParameter, "attribute 'W'", "through nn.Linear"),
    "control flow": (ControlFlow, "torch.fx cannot trace ControlFlow.forward", "chains of nn.Linear"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_name_the_module_or_operation_and_why(case):
    make, where, why = REFUSED[case]
    with pytest.raises(ValueError) as error:
        ep.to_model(make(), "categorical")
    assert where in str(error.value) and why in str(error.value), str(error.value)


def test_half_precision_and_non_modules_are_refused():
    with pytest.raises(ValueError, match="float32 or all float64"):
        ep.to_model(nn.Sequential(nn.Linear(2, 2)).half(), "categorical")
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        ep.to_model(lambda x: x, "categorical")


LOSSES = {
    "CE mean": (nn.CrossEntropyLoss(), "categorical"), "CE sum": (nn.CrossEntropyLoss(reduction="sum"), "categorical"),
    "MSE mean": (nn.MSELoss(), "gaussian"), "MSE sum": (nn.MSELoss(reduction="sum"), "gaussian"),
    "BCE mean": (nn.BCEWithLogitsLoss(), "bernoulli"), "BCE sum": (nn.BCEWithLogitsLoss(reduction="sum"), "bernoulli"),
    "F.cross_entropy": (F.cross_entropy, "categorical"), "F.mse_loss": (F.mse_loss, "gaussian"),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_likelihood_from_a_torch_loss(loss):
    given, name = LOSSES[loss]
    lik = ep.likelihood_from(given)
    assert lik.name == name and (name != "gaussian" or lik.sigma == 1.0)


@pytest.mark.parametrize("loss, words", [
    (nn.CrossEntropyLoss(weight=torch.ones(3)), "class weights"), (nn.CrossEntropyLoss(label_smoothing=0.1), "label smoothing"),
    (nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), "pos_weight"), (nn.NLLLoss(), "takes probabilities"),
    (nn.BCELoss(), "takes probabilities"), ("poisson", "expected one of"),
])
def test_likelihoods_that_are_not_ewc_refs_are_refused(loss, words):
    with pytest.raises(ValueError, match=words):
        ep.likelihood_from(loss)


# ----------------------------------------------------------------------------- the Recorder
def test_recorder_reproduces_a_shuffled_loader_with_drop_last_exactly(tmp_path):
    x, y = data(n=23)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(3))
    recorder = ep.Recorder(loader)
    seen_x, seen_y = [], []
    for xb, yb in recorder:  # the user's loop sees the loader's batches, unchanged
        seen_x.append(xb.numpy().copy())
        seen_y.append(yb.numpy().copy())
    assert np.array_equal(recorder.x, np.concatenate(seen_x)) and np.array_equal(recorder.y, np.concatenate(seen_y))
    assert recorder.batches.tolist() == [5, 5, 5, 5] and len(recorder) == 4
    assert not np.array_equal(recorder.x, x[:20].numpy())  # shuffled: not the file order
    recorder.save(tmp_path / "d.npz")
    x2, y2 = er.load_data(tmp_path / "d.npz")
    assert np.array_equal(x2, recorder.x) and np.array_equal(y2, recorder.y)
    assert er.load_loader(tmp_path / "d.npz").batches.tolist() == [5, 5, 5, 5]


def test_recorder_with_a_sampler_drawing_with_replacement_and_a_short_last_batch():
    x, y = data(n=10)
    sampler = WeightedRandomSampler(torch.ones(10), num_samples=17, replacement=True,
                                    generator=torch.Generator().manual_seed(0))
    recorder = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=4, sampler=sampler))
    indices = list(iter(WeightedRandomSampler(torch.ones(10), 17, True, generator=torch.Generator().manual_seed(0))))
    for _ in recorder:
        pass
    assert recorder.batches.tolist() == [4, 4, 4, 4, 1]
    assert np.array_equal(recorder.x, x.numpy()[indices]) and len(set(indices)) < 17  # rows repeat


# ----------------------------------------------------------------------------- fisher
def torch_per_example_grads(net, loss_of_one, x, y):
    """(N, P) gradients of each example's loss, in parameters() order, by N backward passes."""
    rows = []
    for i in range(len(x)):
        net.zero_grad()
        loss_of_one(net(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone())
    return torch.stack(rows)


def test_fisher_equals_an_independent_torch_empirical_fisher_diag_and_full():
    """The per-example gradient loop in torch against the bridge: catches names, order and 1/N."""
    net = double(Custom())
    x, y = data()
    G = torch_per_example_grads(net, lambda f, t: F.cross_entropy(f, t, reduction="sum"), x, y)
    diag = ep.fisher(net, (x, y), "empirical", "diag", likelihood=nn.CrossEntropyLoss())
    assert list(diag) == [n for n, _ in net.named_parameters()]
    flat = torch.cat([v.reshape(-1) for v in diag.values()])
    assert relative_error(flat.numpy(), (G**2).mean(0).numpy()) <= RTOL
    full = ep.fisher(net, (x, y), "empirical", "full", likelihood="categorical")["full"]
    assert relative_error(full.numpy(), (G.T @ G / len(x)).numpy()) <= RTOL


ESTIMATORS = [("empirical", {}), ("exact", {}), ("pred", {}), ("hessian", {}), ("batched", {"batch_size": 4}),
              ("mc", {"samples": 3, "rng": 7})]


@pytest.mark.parametrize("estimator, options, structure", [  # kfac: per-example outer products only
    (e, o, s) for e, o in ESTIMATORS for s in ("diag", "full", "block", "kfac") if not (e in ("hessian", "batched") and s == "kfac")])
def test_fisher_equals_er_fisher(estimator, options, structure):
    net = double(Custom())
    x, y = data()
    model, lik, names = ep.to_model(net, "categorical")
    ours = er.fisher(model, lik, x.numpy(), y.numpy(), estimator, structure, **options)
    got = ep.fisher(net, (x, y), estimator, structure, likelihood="categorical", **options)
    if structure == "diag":
        for name in names:
            assert relative_error(got[name].numpy(), ours.arrays[name]) <= RTOL
    elif structure == "full":  # parameters_to_vector order: permuted from the MLP's forward order
        order = np.concatenate([np.arange(s.start, s.stop) for n in names
                                for m, s in zip(model.param_names, model.param_slices, strict=True) if m == n])
        assert relative_error(got["full"].numpy(), ours.data[np.ix_(order, order)]) <= RTOL
    else:
        arrays = {k: v for k, v in ours.to_arrays().items() if not k.startswith("__")}
        assert sorted(got) == sorted(arrays)
        for key, value in arrays.items():
            assert relative_error(got[key].numpy(), value) <= RTOL
    assert all(t.dtype == torch.float64 for t in got.values())


def test_fisher_takes_the_batch_size_from_a_recorder_and_a_float32_module_in_float64():
    net = Custom().float()
    x, y = data(n=14, dtype=torch.float32)
    recorder = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=4))
    for _ in recorder:
        pass
    model, lik, _ = ep.to_model(net, "categorical")
    reference = model.with_theta(model.theta.astype(np.float64))
    ours = er.fisher(reference, lik, x.double().numpy(), y.numpy(), "batched", "diag", batch_size=4)
    got = ep.fisher(net, recorder, "batched", likelihood="categorical")
    assert relative_error(torch.cat([v.reshape(-1) for v in got.values()]).numpy(),
                          np.concatenate([ours.arrays[n].ravel() for n, _ in net.named_parameters()])) <= RTOL


def test_a_forward_the_mlp_does_not_match_is_refused():
    net = double(Custom())
    model, _, _ = ep.to_model(net, "categorical")
    wrong = model.with_theta(model.theta * 1.001)
    with pytest.raises(ValueError, match="forward on the data differs"):
        ep.check_forward(net, wrong, data()[0].numpy())


# ----------------------------------------------------------------------------- diagnose
def script_fisher(net, loader, loss):
    """The EWC Fisher of many scripts: square each minibatch's loss gradient, average over batches."""
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for xb, yb in loader:
        net.zero_grad()
        loss(net(xb), yb).backward()
        for n, p in net.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    return {n: f / len(loader) for n, f in fisher.items()}


C = 3
REDUCTIONS = {  # (loss, likelihood data kind, THEIRS / F_batched(B = 4)): the gradient of the torch loss of a
    # batch is (factor) x the gradient of ewc_ref's mean NLL over the batch; THEIRS scales by factor^2
    "CE mean": (nn.CrossEntropyLoss(), "categorical", 1.0),
    "CE sum": (nn.CrossEntropyLoss(reduction="sum"), "categorical", 4.0**2),
    "MSE mean": (nn.MSELoss(), "gaussian", (2.0 / C) ** 2),  # mean over B C of (f - y)^2 = 2/C x mean of |f-y|^2/2
    "MSE sum": (nn.MSELoss(reduction="sum"), "gaussian", (2.0 * 4) ** 2),
    "BCE mean": (nn.BCEWithLogitsLoss(), "bernoulli", (1.0 / C) ** 2),
    "BCE sum": (nn.BCEWithLogitsLoss(reduction="sum"), "bernoulli", 4.0**2),
}


@pytest.mark.parametrize("case", sorted(REDUCTIONS))
def test_diagnose_a_script_fisher_over_a_shuffled_recorded_loader(case):
    loss, kind, factor = REDUCTIONS[case]
    net = double(Custom(torch.relu))
    # B = 4. Mean: five full batches and a short last one of 2. Sum: a short batch's gradient would be
    # scaled by 2, not 4, so THEIRS is no multiple of F_batched; N = 24 keeps every batch full.
    x, y = data(n=22 if "mean" in case else 24, kind=kind)
    loader = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True,
                                    generator=torch.Generator().manual_seed(5)))
    theirs = script_fisher(net, loader, loss)
    d = ep.diagnose(net, theirs, loader, likelihood=loss)
    assert (d.estimator, d.batch_size) == ("batched", 4), str(d)
    assert abs(d.scale - factor) <= 1e-8 * factor, str(d)


class ParamData:
    """Avalanche's avalanche.training.utils.ParamData layout: name, shape and the tensor in .data."""

    def __init__(self, name, tensor):
        self.name, self.shape, self.data = name, tensor.shape, tensor


class EWCPluginLike:
    """Avalanche's EWCPlugin layout: importances {experience: {parameter name: ParamData}}."""

    def __init__(self, importances):
        self.importances = {0: {n: ParamData(n, t) for n, t in importances.items()}}


class PMatDiagLike:
    """nngeometry's PMatDiag layout: get_diag() returns the (P,) diagonal in parameters() order."""

    def __init__(self, diagonal):
        self._diag = diagonal

    def get_diag(self):
        return self._diag


def exact_fisher_torch(net, x):
    """nngeometry's FIM(variant='classif_logits') diagonal: 1/N sum_n sum_c p_c g_{n,c}^2, in torch."""
    total = None
    for i in range(len(x)):
        p = torch.softmax(net(x[i:i + 1]), dim=1).detach()[0]
        for c in range(len(p)):
            net.zero_grad()
            F.cross_entropy(net(x[i:i + 1]), torch.tensor([c])).backward()
            g2 = torch.cat([q.grad.reshape(-1) for q in net.parameters()]) ** 2 * p[c]
            total = g2 if total is None else total + g2
    return total / len(x)


@pytest.mark.parametrize("style", ["avalanche plugin", "avalanche importances", "list in parameters() order"])
def test_diagnose_avalanche_style_importances(style):
    net = double(Custom(nn.ReLU()))
    x, y = data(n=20)
    imp = script_fisher(net, DataLoader(TensorDataset(x, y), batch_size=6), nn.CrossEntropyLoss())  # Avalanche's loop
    theirs = {"avalanche plugin": EWCPluginLike(imp), "avalanche importances": EWCPluginLike(imp).importances[0],
              "list in parameters() order": list(imp.values())}[style]
    d = ep.diagnose(net, theirs, (x, y), likelihood=nn.CrossEntropyLoss())
    assert (d.estimator, d.batch_size) == ("batched", 6) and abs(d.scale - 1) <= 1e-8, str(d)


def test_diagnose_nngeometry_style_flat_diagonal_in_parameters_order():
    net = double(Custom(nn.ReLU()))
    x, y = data(n=15)
    d = ep.diagnose(net, PMatDiagLike(exact_fisher_torch(net, x)), (x, y), likelihood="categorical")
    assert d.estimator == "exact" and abs(d.scale - 1) <= 1e-8, str(d)
    assert str(d) == d.report() and json.loads(d.to_json()) == json.loads(json.dumps(d.to_dict()))


def test_diagnose_refuses_their_fisher_with_the_wrong_names():
    net = double(Custom())
    x, y = data()
    with pytest.raises(ValueError, match=r"missing \['fc1.bias'\], unknown \['fc1.b'\]"):
        ep.diagnose(net, {**{n: p.detach() ** 2 for n, p in net.named_parameters() if n != "fc1.bias"},
                          "fc1.b": torch.zeros(5)}, (x, y), likelihood="categorical")


def test_save_and_save_data_give_the_cli_the_same_verdict(tmp_path):
    net = double(Custom(nn.ReLU()))
    x, y = data(n=18)
    loader = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True,
                                    generator=torch.Generator().manual_seed(2)))
    theirs = script_fisher(net, loader, nn.CrossEntropyLoss())
    ep.save(net, tmp_path / "model.npz", likelihood=nn.CrossEntropyLoss())
    ep.save_data(tmp_path / "data.npz", loader)
    er.save_curvature(tmp_path / "theirs.npz", theirs)
    out = subprocess.run([sys.executable, "-m", "ewc_ref.cli", "diagnose", str(tmp_path / "model.npz"),
                          str(tmp_path / "data.npz"), str(tmp_path / "theirs.npz"), "--json"],
                         capture_output=True, text=True, check=True)
    cli = json.loads(out.stdout)
    bridge = ep.diagnose(net, theirs, loader, likelihood=nn.CrossEntropyLoss()).to_dict()
    assert (cli["estimator"], cli["batch_size"]) == (bridge["estimator"], bridge["batch_size"]) == ("batched", 5)
    assert abs(cli["scale"] - bridge["scale"]) <= 1e-12
    assert er.load_loader(tmp_path / "data.npz").batches.tolist() == [5, 5, 5, 3]


def test_batch_sizes_are_kept_only_when_the_order_is_theirs():
    """A Recorder, a list of batches and a non-shuffling DataLoader yield their loop's order; a shuffling
    DataLoader iterated again yields another, so its batch sizes would describe other batches."""
    x, y = data(n=10)
    dataset = TensorDataset(x, y)
    assert ep.rows(DataLoader(dataset, batch_size=4)).batches.tolist() == [4, 4, 2]
    assert ep.rows([(x[:6], y[:6]), (x[6:], y[6:])]).batches.tolist() == [6, 4]
    assert ep.rows(DataLoader(dataset, batch_size=4, shuffle=True)).batches is None
    assert ep.rows((x, y)).batches is None


def test_without_torch_the_bridge_names_the_extra():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
sys.meta_path.insert(0, Block())
try:
    import ewc_ref.pytorch
except ImportError as error:
    print(error)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ewc_ref.pytorch needs PyTorch: pip install 'ewc_ref[torch]'"
