"""ewc_ref.strategies: valid draws, float32 on request, and shrinking to the smallest network."""

import numpy as np
import pytest
from hypothesis import find, given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.model.likelihoods import LIKELIHOODS, Bernoulli
from ewc_ref.strategies import (
    LIKELIHOOD_NAMES,
    architectures,
    datasets,
    dtypes,
    likelihoods,
    mlps,
    models_and_data,
)


@given(models_and_data(dtype=dtypes()))
def test_models_and_data_are_consistent(case):
    model, lik, x, y = case
    assert x.dtype == model.dtype and x.shape == (len(x), model.n_inputs) and len(x) >= 1
    lik.check_labels(y, len(x), model.n_outputs)  # raises if the labels are outside the support
    if y.dtype.kind == "f":
        assert y.dtype == model.dtype
    if isinstance(lik, er.Categorical):
        assert model.n_outputs >= 2
    f = model.predict(x)
    assert f.dtype == model.dtype and np.all(np.isfinite(f))


@given(st.data())
def test_datasets_for_a_given_model(data):
    model = data.draw(mlps(dtype=np.float32))
    lik = data.draw(likelihoods(["gaussian", "bernoulli"]))
    x, y = data.draw(datasets(model, lik, n=5, labels="model"))
    assert x.shape == (5, model.n_inputs) and x.dtype == np.float32 and y.dtype == np.float32


@given(architectures(max_layers=3, max_width=5))
def test_architectures_respect_their_bounds(sizes):
    assert 2 <= len(sizes) <= 4 and all(1 <= s <= 5 for s in sizes)


def test_shrinking_reaches_a_small_network():
    """find() returns an example that satisfies the predicate and is small; how small exactly
    depends on Hypothesis's shrinker (not part of its API), so the bounds leave room for one step
    more or less. Strategies that shrank towards large networks or many rows would fail here."""
    sizes = find(architectures(), lambda sizes: True)
    assert len(sizes) == 2 and max(sizes) <= 2
    model = find(mlps(), lambda m: True)
    assert model.n_layers == 1 and max(model.layer_sizes) <= 2
    model, lik, x, y = find(models_and_data(), lambda case: True)
    assert model.n_layers == 1 and len(x) <= 2 and model.dtype == np.float64
    assert find(dtypes(), lambda d: True) is np.float64
    # A property that needs a hidden layer of width >= 3 shrinks to about that.
    sizes = find(architectures(), lambda s: len(s) >= 3 and s[1] >= 3)
    assert len(sizes) == 3 and 3 <= sizes[1] <= 4 and sizes[0] + sizes[2] <= 3


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_likelihoods_draws_every_row_of_the_likelihood_table_by_name(name):
    drawn = find(likelihoods([name]), lambda lik: True)
    assert type(drawn) is LIKELIHOODS[name] and drawn.name == name
    assert LIKELIHOOD_NAMES == list(LIKELIHOODS)  # the default draws from every row


def test_a_newly_listed_likelihood_is_drawn_as_itself(monkeypatch):
    # Before the strategy built likelihoods by name, any name other than categorical and gaussian
    # came out as a Bernoulli: a new row of the table would have been tested as another likelihood.
    class Poisson(Bernoulli):
        name = "poisson"

    monkeypatch.setitem(LIKELIHOODS, "poisson", Poisson)
    assert type(find(likelihoods(["poisson"]), lambda lik: True)) is Poisson
