"""The PyTorch side of docs/verify-a-pytorch-ewc.md: train a digits classifier, compute its EWC
Fisher the way many public repositories do, and export everything per docs/file-format.md.

Needs torch, not ewc_ref. From the repository root, in an environment of its own (ignored by git):

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
    .venv-torch/bin/python docs/verify_example.py ewc_example
    ewc-ref diagnose ewc_example/model.npz ewc_example/data.npz ewc_example/fisher_wild.npz

The one argument is the output folder (default ``ewc_example`` in the current folder).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

out = Path(sys.argv[1] if len(sys.argv) > 1 else "ewc_example")
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# Task A: the first 1000 handwritten digits (8x8 pixels, 10 classes), shipped with ewc_ref.
digits = np.load(Path(__file__).resolve().parents[1] / "ewc_ref" / "data" / "digits.npz")
x = torch.tensor(digits["x"][:1000] / 16.0, dtype=torch.float32)
y = torch.tensor(digits["y"][:1000], dtype=torch.int64)
net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
for _epoch in range(30):
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True):
        optimizer.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        optimizer.step()


# ---- The Fisher, as found in the wild -------------------------------------------------------
def fisher_wild(net, dataset, batch_size=32):
    """Square the gradient of each minibatch's mean loss, sum, divide by the dataset size."""
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for xb, yb in loader:
        net.zero_grad()
        F.cross_entropy(net(xb), yb).backward()  # observed labels, mean over the minibatch
        for n, p in net.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    return {n: f / len(dataset) for n, f in fisher.items()}


# ---- A second routine: per example, sampled labels, but summed --------------------------------
def fisher_sampled_sum(net, x):
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(x)):
        net.zero_grad()
        logits = net(x[i : i + 1])
        label = torch.distributions.Categorical(logits=logits).sample()
        F.cross_entropy(logits, label).backward()
        for n, p in net.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    return fisher  # no division by N


wild = fisher_wild(net, TensorDataset(x, y))
sampled = fisher_sampled_sum(net, x)

# ---- Export, exactly the lines of docs/file-format.md -------------------------------------------------
np.savez(out / "model.npz", **{k: v.detach().cpu().double().numpy() for k, v in net.state_dict().items()},
         __activation__=np.array("relu"), __likelihood__=np.array("categorical"))
np.savez(out / "data.npz", x=x.double().numpy(), y=y.numpy())
np.savez(out / "fisher_wild.npz", **{k: v.cpu().double().numpy() for k, v in wild.items()})
np.savez(out / "fisher_sampled_sum.npz", **{k: v.cpu().double().numpy() for k, v in sampled.items()})
accuracy = (net(x).argmax(1) == y).float().mean().item()
print(f"wrote {out}/model.npz, data.npz, fisher_wild.npz, fisher_sampled_sum.npz (train accuracy {accuracy:.3f})")
