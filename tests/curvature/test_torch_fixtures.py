"""Cross-check against committed PyTorch fixtures (tests/fixtures/make_torch_fixtures.py).

torch is not a test dependency: the arrays were computed once by torch.func, BackPACK
and curvlinops and committed. Both sides are float64 and compute the same sums in a
different order, so agreement is to round-off: 1e-12 relative (normwise per array).
"""

from pathlib import Path

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.verify.gradcheck import relative_error

FIXTURES = Path(__file__).parents[1] / "fixtures" / "torch"
NAMES = ["categorical", "gaussian", "bernoulli"]


def load(name):
    model, lik = er.load_model(FIXTURES / f"{name}_model.npz")
    x, y = er.load_data(FIXTURES / f"{name}_data.npz", model, lik)
    reference = dict(np.load(FIXTURES / f"{name}_reference.npz", allow_pickle=False))
    return model, lik, x, y, reference


@pytest.mark.parametrize("name", NAMES)
def test_outputs_losses_and_gradients_match_torch(name):
    model, lik, x, y, ref = load(name)
    assert lik.name == name
    assert relative_error(model.predict(x), ref["outputs"]) <= 1e-12
    assert relative_error(er.per_example_losses(model, lik, x, y), ref["losses"]) <= 1e-12
    loss, grad = er.loss_and_grad(model, lik, x, y)
    assert abs(loss - float(ref["mean_loss"])) <= 1e-12 * abs(float(ref["mean_loss"]))
    assert relative_error(grad, ref["grad"]) <= 1e-12
    assert relative_error(er.per_sample_gradients(model, lik, x, y), ref["per_sample_grads"]) <= 1e-12
    assert relative_error(model.jacobian(x), ref["jacobian"]) <= 1e-12


def test_gaussian_fixture_has_a_layer_without_bias():
    model, lik, *_ = load("gaussian")
    assert model.has_bias == [True, False]
    assert lik.sigma == 0.7
