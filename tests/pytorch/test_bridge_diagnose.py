"""The PyTorch bridge's diagnose against real torch: script Fishers, library-style importances, files.

torch is real here, nothing mocked; the tolerances are those of tests/support/torch_nets.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from support.torch_nets import Custom, data, double
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ewc_ref as er
import ewc_ref.pytorch as ep


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
