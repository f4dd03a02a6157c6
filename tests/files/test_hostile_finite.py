"""Finite or refused, in the API (issue 25, item 5): the public functions x extreme inputs.

Every public function that returns numbers is wrapped where it is defined by one guard,
``ewc_ref._validate.finite_or_refused``. The table runs each of them on finite but extreme inputs
(weights of 1e200 and 1e308, a bias of 1e308, inputs of 1e300, Gaussian(1e-200), a prior precision
of 1e308) and checks, against the unguarded function (``__wrapped__``) as the oracle:
- where the unguarded function returns a NaN or inf, the guarded one raises ONE ValueError whose
  message starts with the argument that drove it (the row's expected driver) and names the function;
- where it returns finite numbers, the guarded one returns exactly them.
The nineteen calls of the issue are rows of this table (fisher, mean_loss, hessian,
hessian_vector_product, laplace_evidence, distributed.fisher).
"""

from __future__ import annotations

import numpy as np
import pytest

import ewc_ref as er
import ewc_ref.distributed as distributed
from ewc_ref._validate import finite_or_refused

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (8, 3))
Y_CLASS = RNG.integers(0, 2, 8)
Y_REAL = RNG.standard_normal((8, 2))


def _model(scale=1.0, shift=0.0):
    model = er.MLP.random([3, 4, 2], "relu", rng=0)
    return er.MLP.from_state_dict({k: v * scale if k.endswith("weight") else v + shift
                                   for k, v in model.state_dict().items()}, "relu")


# name -> ((model, lik, x, y), the argument expected to be named when a result overflows)
INPUTS = {
    "weights 1e200": ((_model(1e200), er.Categorical(), X, Y_CLASS), "model"),
    "weights 1e308": ((_model(1e308), er.Categorical(), X, Y_CLASS), "model"),
    "bias 1e308": ((_model(shift=1e308), er.Categorical(), X, Y_CLASS), "model"),
    "x 1e300": ((_model(), er.Categorical(), X * 1e300, Y_CLASS), "x"),
    "Gaussian(1e-200)": ((_model(), er.Gaussian(1e-200), X, Y_REAL), "lik"),
    "gaussian, weights 1e200": ((_model(1e200), er.Gaussian(), X, Y_REAL), "model"),
}
P = _model().n_params

# name -> (the public function, how to call it with (model, lik, x, y))
CALLS = {
    "fisher exact": (er.fisher, lambda f, m, l, x, y: f(m, l, x, y, "exact")),
    "fisher empirical": (er.fisher, lambda f, m, l, x, y: f(m, l, x, y, "empirical")),
    "fisher hessian full": (er.fisher, lambda f, m, l, x, y: f(m, l, x, y, "hessian", "full")),
    "mean_loss": (er.mean_loss, lambda f, m, l, x, y: f(m, l, x, y)),
    "per_example_losses": (er.per_example_losses, lambda f, m, l, x, y: f(m, l, x, y)),
    "loss_and_grad": (er.loss_and_grad, lambda f, m, l, x, y: f(m, l, x, y)),
    "per_sample_gradients": (er.per_sample_gradients, lambda f, m, l, x, y: f(m, l, x, y)),
    "hessian": (er.hessian, lambda f, m, l, x, y: f(m, l, x, y)),
    "hessian_diag": (er.hessian_diag, lambda f, m, l, x, y: f(m, l, x, y)),
    "hessian_blocks": (er.hessian_blocks, lambda f, m, l, x, y: f(m, l, x, y)),
    "hessian_vector_product": (er.hessian_vector_product, lambda f, m, l, x, y: f(m, l, x, y, np.ones(P))),
    "ggn_vector_product": (er.ggn_vector_product, lambda f, m, l, x, y: f(m, l, x, y, np.ones(P))),
    "laplace_evidence": (er.laplace_evidence, lambda f, m, l, x, y: f(m, l, x, y, prior_precision=1.0)),
    "log_likelihood": (er.log_likelihood, lambda f, m, l, x, y: f(m, l, x, y)),
    "distributed.fisher": (distributed.fisher, lambda f, m, l, x, y: f(m, l, x, y, "exact", chunk_rows=3)),
}


def _finite(result) -> bool:
    if hasattr(result, "first_non_finite"):
        return result.first_non_finite() is None
    if hasattr(result, "log_evidence"):
        return all(np.isfinite([result.log_evidence, result.log_likelihood, result.log_prior, result.log_det_precision]))
    if isinstance(result, list | tuple):
        return all(_finite(item) for item in result)
    return bool(np.all(np.isfinite(result)))


def _same(a, b) -> bool:
    if hasattr(a, "flat") and hasattr(a, "first_non_finite"):
        return np.array_equal(a.flat, b.flat)
    if hasattr(a, "log_evidence"):
        return a == b
    if isinstance(a, list | tuple):
        return all(_same(p, q) for p, q in zip(a, b, strict=True))
    return np.array_equal(a, b)


def test_every_call_is_guarded():
    for name, (function, _) in CALLS.items():
        assert hasattr(function, "__wrapped__"), name


@pytest.mark.parametrize("call_name", list(CALLS))
@pytest.mark.parametrize("input_name", list(INPUTS))
def test_a_public_function_returns_finite_numbers_or_names_the_input(input_name, call_name):
    (model, lik, x, y), driver = INPUTS[input_name]
    function, call = CALLS[call_name]
    try:
        oracle = call(function.__wrapped__, model, lik, x, y)
    except ValueError:  # the function's own check refused already (laplace_evidence's curvature check)
        oracle = None
    if oracle is not None and _finite(oracle):
        assert _same(call(function, model, lik, x, y), oracle)
        return
    with pytest.raises(ValueError) as raised:
        call(function, model, lik, x, y)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{driver}: "), message
    assert "not finite" in message


def test_the_issue_rows_are_refused():
    """The 19 calls of the issue, each refused (not a silent inf): the table above at these rows."""
    rows = [("weights 1e200", c) for c in ("fisher exact", "mean_loss", "hessian", "hessian_vector_product",
                                             "laplace_evidence", "distributed.fisher")]
    rows += [("weights 1e308", c) for c in ("fisher exact", "mean_loss", "hessian", "hessian_vector_product",
                                             "distributed.fisher")]
    rows += [("x 1e300", c) for c in ("fisher exact", "laplace_evidence", "distributed.fisher")]
    rows += [("Gaussian(1e-200)", c) for c in ("fisher exact", "mean_loss", "hessian", "hessian_vector_product")]
    assert len(rows) == 18
    for input_name, call_name in rows:
        (model, lik, x, y), driver = INPUTS[input_name]
        function, call = CALLS[call_name]
        with pytest.raises(ValueError, match=f"^{driver}: "):
            call(function, model, lik, x, y)
    # the nineteenth: a prior precision of 1e308 (weights x 10 make alpha |theta|^2 overflow)
    with pytest.raises(ValueError, match="^prior_precision: the Laplace log_prior is -inf"):
        er.laplace_evidence(_model(10.0), er.Categorical(), X, Y_CLASS, prior_precision=1e308)


def test_the_guard_names_the_most_extreme_input_and_the_quantity():
    @finite_or_refused
    def overflow(model, x, scale=1.0):
        with np.errstate(over="ignore"):
            return np.array([1.0, x.max() * scale * 1e10])

    np.testing.assert_array_equal(overflow(_model(), np.ones(3), scale=2.0), [1.0, 2e10])
    with pytest.raises(ValueError, match=r"^x: overflow would return the result, 1 of its 2 numbers not finite"):
        overflow(_model(), np.full(3, 1e300))
    with pytest.raises(ValueError, match=r"^scale: .*most likely driven by scale \(\|value\| up to 1e\+305\)"):
        overflow(_model(), np.ones(3), scale=1e305)
