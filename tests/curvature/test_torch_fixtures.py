"""Cross-check against committed PyTorch fixtures (tests/fixtures/make_torch_fixtures.py).

torch is not a test dependency: the arrays were computed once by torch.func, BackPACK
and curvlinops and committed. Both sides are float64 and compute the same sums in a
different order, so agreement is to round-off: 1e-12 relative (normwise per array) for the
outputs, losses and gradients; the curvatures (every estimator x structure, and the Hessian) to
1e-10 relative, the tolerance of the curvature identities (tests/support/curvature.py).
"""


import numpy as np
import pytest
from support.curvature import RTOL, close
from support.torch_problems import TORCH_PROBLEMS, load_torch_problem

import ewc_ref as er
from ewc_ref.curvature.naive import project
from ewc_ref.verify.gradcheck import relative_error

# The problems (network x likelihood x data) are the case table support.torch_problems.TORCH_PROBLEMS,
# given by the parametrized fixture `torch_problem` (tests/conftest.py).


def test_outputs_losses_and_gradients_match_torch(torch_problem):
    p = torch_problem
    model, lik, x, y, ref = p.model, p.lik, p.x, p.y, p.reference
    assert lik.name == p.name
    assert relative_error(model.predict(x), ref["outputs"]) <= 1e-12
    assert relative_error(er.per_example_losses(model, lik, x, y), ref["losses"]) <= 1e-12
    loss, grad = er.loss_and_grad(model, lik, x, y)
    assert abs(loss - float(ref["mean_loss"])) <= 1e-12 * abs(float(ref["mean_loss"]))
    assert relative_error(grad, ref["grad"]) <= 1e-12
    assert relative_error(er.per_sample_gradients(model, lik, x, y), ref["per_sample_grads"]) <= 1e-12
    assert relative_error(model.jacobian(x), ref["jacobian"]) <= 1e-12


def test_gaussian_fixture_has_a_layer_without_bias():
    problem = load_torch_problem("gaussian")
    model, lik = problem.model, problem.lik
    assert model.has_bias == [True, False]
    assert lik.sigma == 0.7


# --------------------------------------------------------------------------- torch fixtures
FIXTURE_KEYS = [
    ("empirical", "diag", "empirical_diag", {}), ("empirical", "full", "empirical_full", {}),
    ("exact", "diag", "exact_diag", {}), ("exact", "full", "exact_full", {}), ("ggn", "full", "exact_full", {}),
    ("batched", "diag", "batched_diag_b8", {"batch_size": 8}), ("batched", "full", "batched_full_b8", {"batch_size": 8}),
    ("pred", "diag", "pred_diag", {}),
]


# indirect: the case table through the fixture, its ids last as when this was parametrized by name.
@pytest.mark.parametrize("torch_problem", TORCH_PROBLEMS, ids=[case["name"] for case in TORCH_PROBLEMS], indirect=True)
@pytest.mark.parametrize(("estimator", "structure", "key", "kw"), FIXTURE_KEYS, ids=[k[2] + "-" + k[0] for k in FIXTURE_KEYS])
def test_matches_torch_backpack_curvlinops_fixtures(torch_problem, estimator, structure, key, kw):
    p = torch_problem
    model, lik, x, y, reference = p.model, p.lik, p.x, p.y, p.reference[key]
    for chunk_size in (None, 7):
        F = er.fisher(model, lik, x, y, estimator, structure, chunk_size=chunk_size, **kw)
        if np.all(reference == 0):  # gaussian 'pred': y = f, every gradient is zero
            assert np.all(F.data == 0)
        else:
            assert relative_error(F.data, reference) <= RTOL


# --------------------------------------------------------------------------- hessian estimator
def test_hessian_estimator_matches_torch_hessian(torch_problem):
    p = torch_problem
    model, lik, x, y, reference = p.model, p.lik, p.x, p.y, p.reference["hessian_full"]
    for structure in ("full", "diag", "block"):
        H = er.fisher(model, lik, x, y, "hessian", structure, chunk_size=11)
        assert close(H.data, project(reference, model, structure))
