"""Torch's own float32 Fisher of a very confident net: diagnose's round-off model (verify/roundoff*.py).

The net is trained on well-separated classes until the median 1 - p_y is ~1e-11, so torch's float32
cross-entropy gradient loses 1 - p_y on most rows (r_y computed as 0) and its Fisher differs from the
exact one by ~1e-3 relative -- ten times the 1e-4 threshold, the case docs/pytorch.md describes.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ewc_ref.pytorch as ep
from ewc_ref.verify.roundoff import fisher_and_bound
from ewc_ref.verify.scale import fit_scale

N = 600


@pytest.fixture(scope="module")
def confident():
    torch.manual_seed(0)
    centres = 2 * torch.randn(3, 20)
    y = torch.randint(0, 3, (N,))
    x = centres[y] + torch.randn(N, 20)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    with torch.no_grad():
        p = torch.softmax(net(x).double(), dim=1)
    one_minus_p = (1 - p.gather(1, y[:, None])[:, 0]).numpy()
    assert 1e-13 < np.median(one_minus_p) < 1e-10 and (p.argmax(1) == y).all()
    return net, x, y


def batch_gradients(net, x, y, batch_size):
    """(K, P) torch's gradients of each minibatch's CrossEntropyLoss(mean), parameters() order, as float64."""
    out = []
    for start in range(0, len(x), batch_size):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[start:start + batch_size]), y[start:start + batch_size]).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone())
    return torch.stack(out).double().numpy()


def fisher_dict(net, x, y, batch_size):
    """The loop of published EWC code: squared minibatch gradients summed in float32, divided by N."""
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for start in range(0, len(x), batch_size):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[start:start + batch_size]), y[start:start + batch_size]).backward()
        for n, p in net.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    return {n: f / len(x) for n, f in fisher.items()}


def test_torch_float32_gradients_are_within_the_bound(confident):
    """The bound as a bound, on torch's own arithmetic: every row's squared gradient and the Fisher."""
    net, x, y = confident
    model, _, _ = ep.to_model(net, nn.CrossEntropyLoss())
    # the same flat order (a Sequential's parameters() order is the model's); the reference is ewc_ref's
    # float64 F, not torch's float64 gradients, which lose 1 - p_y ~ 1e-13 to ~1e-3 relative themselves
    np.testing.assert_array_equal(model.theta, torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy())
    g32 = batch_gradients(net, x, y, 1)
    xn, yn = x.double().numpy(), y.numpy()
    for n in range(0, N, 7):
        row = fisher_and_bound(model, xn[n:n + 1], yn[n:n + 1], np.array([1]))
        assert np.all(np.abs(g32[n] ** 2 - row.fisher) <= row.bound)
    whole = fisher_and_bound(model, xn, yn, np.ones(N, dtype=int))
    actual = np.abs((g32 ** 2).mean(0) - whole.fisher)
    assert np.all(actual <= whole.bound) and whole.cancelled_rows > 0.9
    assert fit_scale((g32 ** 2).mean(0), whole.fisher)[1] > 1e-4  # what the threshold alone cannot match
    assert fit_scale((g32 ** 2).mean(0), whole.modelled)[1] < 1e-5  # torch's float32 result, modelled


@pytest.mark.parametrize("batch_size", [1, 64], ids=["empirical", "batched"])
def test_a_confident_torch_fisher_is_named_within_float32_round_off(confident, batch_size):
    net, x, y = confident
    fisher = fisher_dict(net, x, y, batch_size)
    d = ep.diagnose(net, fisher, (x, y), likelihood=nn.CrossEntropyLoss())
    assert d.precision == "float32" and d.roundoff["matched"] and d.roundoff["exact_rel_error"] > 1e-4
    if batch_size == 1:
        assert (d.estimator, d.scale_factor) == ("empirical", "1")
    else:
        assert (d.estimator, d.batch_size, d.scale_factor) == ("batched", 64, "K/N")
    assert "within float32 round-off" in d.candidates[0].note and "float64" in d.report()


@pytest.mark.parametrize("batch_size", [1, 64], ids=["empirical", "batched"])
def test_a_1e_3_scale_bug_in_a_confident_torch_fisher_is_none(confident, batch_size):
    net, x, y = confident
    fisher = {n: 1.001 * f for n, f in fisher_dict(net, x, y, batch_size).items()}
    d = ep.diagnose(net, fisher, (x, y), likelihood=nn.CrossEntropyLoss())
    assert d.estimator == "none" and not d.roundoff["matched"] and d.roundoff["scale_factor"] is None
    assert "no simple factor" in d.causes[0]


def test_a_recorded_shuffled_loader_is_exact_within_float32_round_off(confident):
    """The loop of docs/pytorch.md on a confident net: the recorded batches, a short last one (600 = 9 x 64 + 24)."""
    net, x, y = confident
    loader = ep.Recorder(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True,
                                    generator=torch.Generator().manual_seed(1)))
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for xb, yb in loader:
        net.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        for n, p in net.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    fisher = {n: f / N for n, f in fisher.items()}
    d = ep.diagnose(net, fisher, loader, likelihood=nn.CrossEntropyLoss())
    assert (d.estimator, d.batch_size, d.variant) == ("batched", 64, "recorded") and d.roundoff["matched"]


def test_the_precision_paragraph_of_docs_pytorch_md():
    """docs/pytorch.md, **Precision**: its script with `centres = 2 * torch.randn(3, 20)` -- the figures quoted there."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "pytorch.md").read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S)[:2])
    assert code.count("centres = torch.randn(3, 20)") == 1 and code.count("print(d)") == 1
    namespace = {"__name__": "docs_pytorch"}
    exec(code.replace("centres = torch.randn(3, 20)", "centres = 2 * torch.randn(3, 20)").replace("print(d)", ""),
         namespace)
    d, loader, fisher, net = (namespace[k] for k in ("d", "loader", "fisher", "net"))
    r = d.roundoff
    assert (d.estimator, d.batch_size, d.variant, d.scale_factor) == ("batched", 64, "recorded", "K/N")
    assert r["matched"] and round(r["lost_rows"], 2) == 0.97 and f"{r['exact_rel_error']:.2g}" == "0.0017"
    assert r["modelled_rel_error"] < 1e-6  # quoted: 1.4e-7
    worse = ep.diagnose(net, {n: 1.001 * f for n, f in fisher.items()}, loader, likelihood=nn.CrossEntropyLoss())
    assert worse.estimator == "none" and "1.001" in worse.causes[0] and "no simple factor" in worse.causes[0]
