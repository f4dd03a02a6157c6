"""The committed torch problems as data: network x likelihood x data, with torch / BackPACK / curvlinops
reference quantities (tests/fixtures/torch/README.md, written by tests/fixtures/make_torch_fixtures.py).

``TORCH_PROBLEMS`` is the case table (one dict per problem); tests take them through the parametrized
fixture ``torch_problem`` of tests/conftest.py, whose ids are the names, or load one by name.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

import ewc_ref as er

TORCH_FIXTURES = Path(__file__).parents[1] / "fixtures" / "torch"

TORCH_PROBLEMS = [
    {"name": "categorical", "net": "5-8-6-4, tanh", "likelihood": "categorical", "n": 48},
    {"name": "gaussian", "net": "3-7-2, sigmoid, last layer without bias", "likelihood": "gaussian, sigma = 0.7", "n": 40},
    {"name": "bernoulli", "net": "4-6-5-3, relu", "likelihood": "bernoulli, 3 outputs", "n": 36},
]


def load_torch_problem(name: str) -> SimpleNamespace:
    """One committed problem: name, model, lik, x, y, reference (dict of float64 arrays), model_path, data_path."""
    model_path, data_path = TORCH_FIXTURES / f"{name}_model.npz", TORCH_FIXTURES / f"{name}_data.npz"
    model, lik = er.load_model(model_path)
    x, y = er.load_data(data_path, model, lik)
    reference = dict(np.load(TORCH_FIXTURES / f"{name}_reference.npz", allow_pickle=False))
    return SimpleNamespace(name=name, model=model, lik=lik, x=x, y=y, reference=reference,
                           model_path=model_path, data_path=data_path)
