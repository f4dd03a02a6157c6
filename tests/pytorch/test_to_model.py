"""The PyTorch bridge (ewc_ref.pytorch) reads torch modules and losses: models, refusals, likelihoods.

torch is real here, nothing mocked; the tolerances are those of tests/support/torch_nets.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.torch_nets import Custom, data, double
from torch import nn

import ewc_ref.pytorch as ep
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-12


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
