"""The PyTorch bridge's data and fisher against real torch: recorded loaders, every estimator, refusals.

torch is real here, nothing mocked; the tolerances are those of tests/support/torch_nets.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.torch_nets import Custom, data, double
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-12


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
