"""Hypothesis strategies for torch modules, built from ewc_ref.strategies' architectures.

Needs the `strategies` and `torch` extras. Every module is the torch twin of an ewc_ref MLP drawn by
``ewc_ref.strategies.mlps`` (same weights, biases and activation), written in one of the styles
users write::

    'sequential'  nn.Sequential(Linear, ReLU(), Linear, ...): parameters '0.weight', '2.bias', ...
    'custom'      a module with Linear attributes fc1, fc2, ... and the activation called as
                  torch.relu / torch.tanh / torch.sigmoid in forward: 'fc1.weight', ...

so a property over them covers both tracing paths of ewc_ref.pytorch and shrinks to one layer.
"""

from __future__ import annotations

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError("ewc_ref.pytorch.strategies needs Hypothesis: pip install 'ewc_ref[strategies]'") from error

import torch
from torch import nn

from ..model.mlp import MLP
from ..strategies import ACTIVATION_NAMES, LIKELIHOOD_NAMES, models_and_data

STYLES = ("sequential", "custom")
_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
_FUNCTIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


class DrawnNet(nn.Module):
    """Linear layers fc1..fcL with an activation function between them (the 'custom' style)."""

    def __init__(self, linears: list, activation: str):
        super().__init__()
        self.n_layers = len(linears)
        for i, linear in enumerate(linears, start=1):
            setattr(self, f"fc{i}", linear)
        self.activation = activation

    def forward(self, x):
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n_layers and self.activation != "identity":
                x = _FUNCTIONS[self.activation](x)
        return x


def module_from_mlp(model: MLP, style: str = "sequential") -> nn.Module:
    """The torch module computing the same f(x) as `model`, in its dtype, written in `style` (STYLES)."""
    dtype = torch.float32 if model.dtype == np.float32 else torch.float64
    linears = []
    for (out, inp), w, b in zip(model.shapes, model.weights, model.biases, strict=True):
        linear = nn.Linear(inp, out, bias=b is not None).to(dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(w)))
            if b is not None:
                linear.bias.copy_(torch.from_numpy(np.array(b)))
        linears.append(linear)
    name = model.activation.name
    if style == "custom":
        return DrawnNet(linears, name)
    if style != "sequential":
        raise ValueError(f"style: expected one of {list(STYLES)}, got {style!r}")
    layers = []
    for i, linear in enumerate(linears):
        layers.append(linear)
        if i < len(linears) - 1:
            layers.append(_MODULES[name]() if name in _MODULES else nn.Identity())
    return nn.Sequential(*layers)


@st.composite
def torch_models_and_data(draw, styles=STYLES, likelihood_names=tuple(LIKELIHOOD_NAMES),
                          activations=tuple(ACTIVATION_NAMES), dtype=np.float64, n=None, max_layers=4, max_width=12):
    """(module, lik, x, y, model): a torch module from ``models_and_data``'s MLP `model` in a drawn
    style, its ewc_ref Likelihood, and x, y as torch tensors (labels int64 or the model's float type)."""
    model, lik, x, y = draw(models_and_data(n=n, likelihood_names=likelihood_names, activations=activations,
                                            dtype=dtype, max_layers=max_layers, max_width=max_width))
    module = module_from_mlp(model, draw(st.sampled_from(list(styles))))
    return module, lik, torch.from_numpy(x), torch.from_numpy(np.asarray(y)), model


__all__ = ["STYLES", "DrawnNet", "module_from_mlp", "torch_models_and_data"]
