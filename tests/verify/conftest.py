"""Shared problems of the diagnose tests (tests/support/digits.py holds how they are built)."""

import numpy as np
import pytest
from support.digits import digits_net, relu_net_per_example_gradients

import ewc_ref as er


@pytest.fixture(scope="session")
def digits():
    """(model, likelihood, x, y, G): the issue-28 user's net on the 1,797 digits and its per-example
    gradients by hand, checked against ewc_ref's (1e-9 relative: float64 round-off of two orders of sums)."""
    model, lik, x, y = digits_net()
    G = relu_net_per_example_gradients(model, x, y)
    np.testing.assert_allclose(G, er.per_sample_gradients(model, lik, x, y), rtol=1e-9, atol=1e-12)
    return model, lik, x, y, G
