"""The batched screen of diagnose-penalty (ewc_ref/continual/penalty_screen.py, eq S1) against er.fisher."""

from __future__ import annotations

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.continual.penalty_screen import (
    SCREEN_ENTRIES,
    batched_on_entries,
    grad_entries,
    screen_entries,
)


@pytest.mark.parametrize("n", [7, 24])  # 7: every B > 3 leaves a partial last batch
def test_batched_on_entries_equals_the_batched_fisher_on_those_entries(n):
    rng = np.random.default_rng(0)
    model, lik = er.MLP.random([4, 5, 3], "tanh", rng=1), er.Categorical()
    x, y = rng.standard_normal((n, 4)), rng.integers(0, 3, n)
    cols = np.array([0, 3, 17, 25, 30, model.n_params - 1])
    grads = grad_entries(model, lik, x, y, cols)
    np.testing.assert_allclose(grads, er.per_sample_gradients(model, lik, x, y)[:, cols], rtol=1e-12, atol=1e-15)
    on_entries = batched_on_entries(grads, range(2, n + 1))
    for b in range(2, n + 1):  # the naive twin: ewc_ref's batched Fisher, one minibatch-mean gradient per batch
        full = er.fisher(model, lik, x, y, estimator="batched", batch_size=b).diagonal
        np.testing.assert_allclose(on_entries[b], full[cols], rtol=1e-12, atol=1e-15)


def test_screen_entries_are_nonzero_and_at_most_the_budget():
    rng = np.random.default_rng(0)
    w = np.zeros(1000)
    w[::3] = 1.0
    cols = screen_entries(w, rng)
    assert cols.size == SCREEN_ENTRIES and np.all(w[cols] != 0) and np.all(np.diff(cols) > 0)
    assert list(screen_entries(w[:30], rng)) == list(range(0, 30, 3))
