"""ewc_ref.testing.assert_fisher_is on real torch modules and loaders, and on ewc_ref MLPs.

A passing call is an entrywise match (assert_is_estimator, rtol 1e-7 in float64); a failing one must
carry diagnose's verdict, which names what THEIRS is instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.testing import assert_fisher_is


def net_and_data(n=21, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    return net, torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def script_fisher(net, loader):
    fisher = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    for xb, yb in loader:
        net.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        for k, p in net.named_parameters():
            fisher[k] += p.grad.detach() ** 2
    return {k: f / len(loader) for k, f in fisher.items()}


def test_passes_on_a_recorded_shuffled_loader_with_the_batch_size_taken_from_it():
    net, x, y = net_and_data()
    loader = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)))
    theirs = script_fisher(net, loader)  # batches 4 x 5 and a short last one of 1
    assert_fisher_is(theirs, net, loader, estimator="batched", likelihood=nn.CrossEntropyLoss())
    assert_fisher_is({k: 3 * v for k, v in theirs.items()}, net, loader, estimator="batched", batch_size=4,
                     scale=3.0, likelihood="categorical")


def test_fails_with_the_verdict_batched_not_exact():
    net, x, y = net_and_data()
    loader = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)))
    theirs = {k: v * len(loader) for k, v in script_fisher(net, loader).items()}  # summed over K, not averaged
    with pytest.raises(AssertionError) as error:
        assert_fisher_is(theirs, net, loader, estimator="exact", likelihood=nn.CrossEntropyLoss())
    message = str(error.value)
    assert message.startswith("THEIRS is batched, B = 4, the recorded batches x K, not exact x 1"), message
    assert "verdict     batched, B = 4" in message and "worst entries" in message


def test_an_ewc_ref_mlp_needs_no_torch_and_fails_with_the_verdict():
    model = er.MLP.random([3, 5, 2], "relu", rng=0)
    lik = er.Categorical()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 3)), rng.integers(0, 2, 12)
    exact = er.fisher(model, lik, x, y, "exact")
    assert_fisher_is(exact, model, (x, y), estimator="exact", likelihood=lik)
    empirical = er.fisher(model, lik, x, y, "empirical").diagonal
    with pytest.raises(AssertionError, match=r"^THEIRS is empirical x 1, not exact x 1"):
        assert_fisher_is(empirical, model, (x, y), estimator="exact", likelihood="categorical")


def test_bad_arguments_name_the_argument():
    net, x, y = net_and_data()
    with pytest.raises(TypeError, match="likelihood: required"):
        assert_fisher_is({}, net, (x, y))
    with pytest.raises(TypeError, match="data: with an ewc_ref MLP"):
        assert_fisher_is(np.ones(3), er.MLP.random([1, 1]), [1], likelihood="gaussian")


def test_a_float32_fisher_passes_normwise_where_tiny_entries_miss_entrywise():
    net, x, y = net_and_data(n=40)
    net = net.float()
    loader = ep.Recorder(DataLoader(TensorDataset(x.float(), y), batch_size=8))
    theirs = script_fisher(net, loader)
    theirs = {k: v.clone() for k, v in theirs.items()}
    smallest = min(theirs, key=lambda k: theirs[k].abs().min())
    flat = theirs[smallest].view(-1)
    flat[flat.abs().argmin()] *= 1.01  # one tiny entry 1% off: entrywise fails, normwise it is round-off
    assert_fisher_is(theirs, net, loader, estimator="batched", rtol=1e-4, likelihood="categorical")
    with pytest.raises(AssertionError, match="THEIRS is batched, B = 8, the recorded batches x 1, not batched, B = 8 x 2"):
        assert_fisher_is(theirs, net, loader, estimator="batched", scale=2.0, rtol=1e-4, likelihood="categorical")
