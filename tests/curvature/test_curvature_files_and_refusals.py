"""Curvature files (save, load, foreign files) and the refusals of er.fisher: bad arguments, budgets, non-finite.

Round trips are bit-exact (assert_array_equal); refusals are matched on the message naming the argument.
"""

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.curvature.result import Curvature
from ewc_ref.curvature.structures import STRUCTURES


@pytest.mark.parametrize("structure", STRUCTURES)
def test_save_load_round_trip(tmp_path, structure):
    model = er.MLP.random([3, 4, 2], "tanh", bias=[True, False], rng=0)
    x = np.random.default_rng(1).standard_normal((5, 3))
    y = np.array([0, 1, 1, 0, 1])
    F = er.fisher(model, er.Categorical(), x, y, "exact", structure)
    F.save(tmp_path / "F.npz")
    G = Curvature.load(tmp_path / "F.npz", model)
    assert (G.structure, G.estimator, G.n) == (structure, "exact", 5)
    np.testing.assert_array_equal(G.to_dense(), F.to_dense())
    keys = set(np.load(tmp_path / "F.npz").files)
    if structure == "diag":
        assert {"0.weight", "0.bias", "2.weight"} <= keys
    if structure == "full":
        assert "full" in keys


def test_diag_file_in_foreign_key_order_is_put_in_model_order(tmp_path):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    F = er.fisher(model, er.Categorical(), np.ones((2, 3)), np.array([0, 1]), "exact", "diag")
    arrays = F.arrays
    np.savez(tmp_path / "theirs.npz", **{k: arrays[k] for k in reversed(list(arrays))})
    loaded = Curvature.load(tmp_path / "theirs.npz", model)
    np.testing.assert_array_equal(loaded.flat, F.flat)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "fisher"}, "estimator: expected one of"),
        ({"structure": "lowrank"}, "structure: expected one of"),
        ({"estimator": "mc", "samples": 0}, "samples: expected an integer >= 1"),
        ({"estimator": "mc", "samples": 2.5}, "samples: expected an integer"),
        ({"estimator": "empirical", "samples": 3}, "samples: only used by estimator='mc'"),
        ({"estimator": "batched"}, "batch_size: required"),
        ({"estimator": "batched", "batch_size": 0}, "batch_size: expected an integer >= 1"),
        ({"estimator": "batched", "batch_size": 6}, "batch_size: expected an integer <= 5"),
        ({"estimator": "exact", "batch_size": 2}, "batch_size: only used by estimator='batched'"),
        ({"estimator": "batched", "structure": "kfac", "batch_size": 2}, "kfac"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x = np.ones((5, 3))
    with pytest.raises((ValueError, TypeError), match=message):
        er.fisher(model, er.Categorical(), x, np.zeros(5, int), **kwargs)


def test_bad_data_and_parameters_are_named():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    with pytest.raises(ValueError, match="y: categorical labels must lie in 0..1"):
        er.fisher(model, er.Categorical(), np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="x: contains 1 non-finite"):
        er.fisher(model, er.Categorical(), np.array([[1.0, np.nan, 0.0]]), np.array([0]))
    model.theta[0] = np.inf
    with pytest.raises(ValueError, match="model: parameters contain NaN or inf"):
        er.fisher(model, er.Categorical(), np.ones((2, 3)), np.array([0, 1]))


def test_full_structure_refuses_a_matrix_too_large(monkeypatch):
    from ewc_ref.curvature import budget

    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 1000)
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    with pytest.raises(ValueError, match="structure='full': a 26 x 26 matrix needs .* use structure='diag', 'block' or 'kfac'"):
        er.fisher(model, er.Categorical(), np.ones((2, 3)), np.array([0, 1]), structure="full")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"__param_names__": np.array(["0.weight", "9.weight"])}, "missing \\['9.weight'\\]"),
        ({"__n__": np.array("abc")}, "key '__n__' must be a 0-d non-negative integer array, got <U3 'abc'"),
        ({"__n__": np.array(2.5)}, "key '__n__' must be a 0-d non-negative integer array, got float64 2.5"),
        ({"__samples__": np.array([1, 2])}, "key '__samples__' must be a 0-d .* shape \\(2,\\)"),
        ({"__batch_size__": np.array(-1)}, "key '__batch_size__' must be a 0-d non-negative"),
    ],
)
def test_foreign_curvature_metadata_errors_name_the_key(tmp_path, edit, message):
    arrays = {"0.weight": np.ones((2, 3)), "0.bias": np.ones(2), "__structure__": np.array("diag"), **edit}
    np.savez(tmp_path / "F.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        er.Curvature.load(tmp_path / "F.npz")


def test_samples_beyond_the_memory_budget_are_refused_with_the_numbers():
    model, lik = er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical()
    x, y = np.ones((5, 3)), np.array([0, 1, 0, 1, 1])
    # K x (C + widths) = 10**9 x (3 + 4 + 2) float64 for one example: 67.1 GiB
    with pytest.raises(ValueError, match="samples: 1000000000 labels per example need 67.1 GiB .*1000000000 x 9 float64.*at most 29826161 fit"):
        er.fisher(model, lik, x, y, "mc", samples=10**9)


def test_chunk_beyond_the_memory_budget_is_refused(monkeypatch):
    from ewc_ref.curvature import budget

    model, lik = er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical()
    x, y = np.ones((50, 3)), np.zeros(50, int)
    monkeypatch.setattr(budget, "MAX_DENSE_BYTES", 8 * 9 * 10)  # ten rows of (3 + 4 + 2) numbers
    assert er.fisher(model, lik, x, y, "empirical", chunk_size=10).n == 50
    with pytest.raises(ValueError, match="chunk_size: 11 rows need .*11 x 1 x 9 float64.*at most 10 rows fit"):
        er.fisher(model, lik, x, y, "empirical", chunk_size=11)


@pytest.mark.parametrize("structure", ["diag", "full", "block", "kfac"])
def test_save_refuses_a_non_finite_curvature_naming_the_parameter(tmp_path, structure):
    model, lik = er.MLP.random([3, 4, 2], "relu", rng=0), er.Categorical()
    x, y = np.random.default_rng(0).standard_normal((6, 3)), np.array([0, 1, 0, 1, 1, 0])
    F = er.fisher(model, lik, x, y, "exact", structure)
    assert F.first_non_finite() is None
    item = F.data[1] if isinstance(F.data, list) else F.data  # the second layer ('2.weight', '2.bias')
    array = item[1] if isinstance(item, tuple) else item  # kfac: its G factor
    index = {"diag": 16 + 1, "full": (16 + 1, 16 + 1)}.get(structure, (0, 0))  # diag/full: 2nd entry of '2.weight'
    array[index] = np.nan
    assert F.first_non_finite() == "2.weight"
    with pytest.raises(ValueError, match="F.npz: refusing to write a curvature that is not finite .*first in parameter '2.weight'"):
        F.save(tmp_path / "F.npz")
    assert list(tmp_path.iterdir()) == []
