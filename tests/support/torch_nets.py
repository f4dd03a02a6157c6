"""Small torch modules and data for the bridge tests (tests/pytorch/): a module with custom names
registered out of forward's order, float64 weights of a fixed seed, and data of each likelihood.

torch is installed by the test command (the `torch` extra, CPU build); nothing here is mocked.
Tolerances: the reference and torch compute the same float64 sums in a different order, so
identities hold to round-off; 1e-12 relative (normwise) is far above it at these sizes (P < 200,
N <= 40) and far below any wrong permutation, factor or batch boundary (>= 1e-3 here). Verdict
scales are checked to 1e-8 relative, diagnose's float64 round-off threshold.
"""

from __future__ import annotations

import torch
from torch import nn


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
