"""The catalogue's torch penalties on the committed fixtures, and the module checks of the torch penalty tests.

Shared by tests/pytorch/test_penalty_*.py (the `catalogue` fixture is in tests/pytorch/conftest.py).
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

import numpy as np
import torch
from torch import nn

from support.penalty_catalogue import CATALOGUE, HERE

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
