"""Hypothesis strategies for property tests of curvature code (needs the `strategies` extra).

Every strategy shrinks towards small networks (one layer, width 1) and few
examples, so a failing property is reported on the smallest model that breaks it.
Models are float64 unless `dtype` says otherwise: pass ``dtype=np.float32`` or a strategy
such as ``dtypes()`` (float64 and float32, shrinking to float64) to test float32 code paths.

    from hypothesis import given
    from ewc_ref.strategies import models_and_data

    @given(models_and_data())
    def test_something(case):
        model, lik, x, y = case

The same networks as torch modules (nn.Sequential or custom-named): ewc_ref.pytorch.strategies.
"""

from __future__ import annotations

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as error:  # an optional extra: say which one
    raise ImportError("ewc_ref.strategies needs Hypothesis: pip install 'ewc_ref[strategies]' "
                      "(the test extra includes it)") from error

from .model.activations import ACTIVATIONS
from .model.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model.mlp import MLP

ACTIVATION_NAMES = sorted(ACTIVATIONS)
LIKELIHOOD_NAMES = list(LIKELIHOODS)  # every row of the likelihood table, in its order


def dtypes():
    """float64 or float32 (shrinks to float64)."""
    return st.sampled_from([np.float64, np.float32])


def _draw_dtype(draw, dtype):
    return draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype


@st.composite
def architectures(draw, min_layers=1, max_layers=4, min_width=1, max_width=12, max_outputs=None):
    """Layer sizes [d_in, h_1, ..., C] with 1-4 Linear layers and widths 1-12."""
    n_layers = draw(st.integers(min_layers, max_layers))
    sizes = draw(st.lists(st.integers(min_width, max_width), min_size=n_layers + 1, max_size=n_layers + 1))
    if max_outputs is not None:
        sizes[-1] = min(sizes[-1], max_outputs)
    return sizes


@st.composite
def likelihoods(draw, names=tuple(LIKELIHOOD_NAMES)) -> Likelihood:
    """One of the likelihood table's rows, built by name (``get_likelihood``); gaussian with sigma in [0.3, 3]."""
    name = draw(st.sampled_from(list(names)))
    if name == "gaussian":
        return get_likelihood(name, draw(st.floats(0.3, 3.0)))
    return get_likelihood(name)


@st.composite
def mlps(draw, sizes=None, activations=tuple(ACTIVATION_NAMES), dtype=np.float64, scale=None):
    """A random MLP: architecture from `architectures()` unless `sizes` is given,
    any activation, each layer with or without bias, weights ~ N(0, scale^2 / fan_in).
    `dtype` is a NumPy float type or a strategy of them (``dtypes()``)."""
    dtype = _draw_dtype(draw, dtype)
    if sizes is None:
        sizes = draw(architectures())
    activation = draw(st.sampled_from(list(activations)))
    n_layers = len(sizes) - 1
    bias = draw(st.lists(st.booleans(), min_size=n_layers, max_size=n_layers))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.floats(0.5, 2.0)) if scale is None else scale
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((sizes[l + 1], sizes[l])) * scale / np.sqrt(sizes[l]) for l in range(n_layers)]
    biases = [rng.standard_normal(sizes[l + 1]) * 0.5 if bias[l] else None for l in range(n_layers)]
    return MLP([w.astype(dtype) for w in weights], [b if b is None else b.astype(dtype) for b in biases], activation)


@st.composite
def datasets(draw, model: MLP, lik: Likelihood, n=None, labels="random"):
    """(x, y) that fit `model` and `lik`: x ~ N(0, 1), y random in the support
    (labels="random") or drawn from the model itself (labels="model")."""
    if n is None:
        n = draw(st.integers(1, 12))
    elif not isinstance(n, int):
        n = draw(n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, model.n_inputs)).astype(model.dtype)
    f = model.forward(x)[0]
    if labels == "model":
        y = lik.sample(f, rng)
        return x, y.astype(model.dtype) if y.dtype.kind == "f" else y
    y = lik.random_labels(f, rng)
    return x, y.astype(model.dtype) if y.dtype.kind == "f" else y


@st.composite
def models_and_data(draw, n=None, likelihood_names=tuple(LIKELIHOOD_NAMES), activations=tuple(ACTIVATION_NAMES),
                    dtype=np.float64, max_layers=4, max_width=12, labels="random"):
    """(model, lik, x, y) with everything drawn; categorical models get >= 2 outputs.
    `dtype` is a NumPy float type or a strategy of them (``dtypes()``); x and float labels follow it."""
    dtype = _draw_dtype(draw, dtype)
    lik = draw(likelihoods(likelihood_names))
    sizes = draw(architectures(max_layers=max_layers, max_width=max_width))
    sizes[-1] = max(sizes[-1], lik.min_outputs)
    model = draw(mlps(sizes=sizes, activations=activations, dtype=dtype))
    x, y = draw(datasets(model, lik, n=n, labels=labels))
    return model, lik, x, y
