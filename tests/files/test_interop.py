"""Models with any module names, and the export helpers er.save_model(state_dict) / er.save_curvature (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.io import named_arrays


def simple_mlp_state(rng, d_in=6, hidden=5, classes=3) -> dict:
    """An Avalanche SimpleMLP's state_dict names: features = Sequential(Linear, ReLU, Dropout), classifier = Linear."""
    return {
        "features.0.weight": rng.standard_normal((hidden, d_in)),
        "features.0.bias": rng.standard_normal(hidden),
        "classifier.weight": rng.standard_normal((classes, hidden)),
        "classifier.bias": rng.standard_normal(classes),
    }


@pytest.fixture
def renamed():
    rng = np.random.default_rng(0)
    state = simple_mlp_state(rng)
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    return state, x, y


def test_renamed_modules_compute_what_the_sequential_computes(renamed):
    """Same arrays under '0.'/'2.' and 'features.0.'/'classifier.': same outputs and curvature, own names."""
    state, x, y = renamed
    model = er.MLP.from_state_dict(state, "relu")
    sequential = er.MLP.from_state_dict(dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], state.values(), strict=True)), "relu")
    assert model.param_names == list(state)
    assert model.module_names == ["features.0", "classifier"]
    np.testing.assert_array_equal(model.predict(x), sequential.predict(x))
    for structure in ("diag", "block", "kfac"):
        ours = er.fisher(model, er.Categorical(), x, y, "exact", structure)
        reference = er.fisher(sequential, er.Categorical(), x, y, "exact", structure)
        np.testing.assert_array_equal(ours.to_dense(), reference.to_dense())
    assert list(er.fisher(model, er.Categorical(), x, y, "exact", "diag").arrays) == list(state)


def test_layers_follow_file_order_not_alphabetical(renamed):
    """'features.0' comes before 'classifier' in the file although it sorts after it."""
    state, _, _ = renamed
    model = er.MLP.from_state_dict(state, "relu")
    assert model.shapes == [(5, 6), (3, 5)]
    reordered = {k: state[k] for k in ("classifier.weight", "classifier.bias", "features.0.weight", "features.0.bias")}
    with pytest.raises(ValueError, match="does not chain"):
        er.MLP.from_state_dict(reordered, "relu")


def test_integer_modules_are_sorted_numerically():
    rng = np.random.default_rng(1)
    state = {"10.weight": rng.standard_normal((2, 4)), "2.weight": rng.standard_normal((4, 3))}
    model = er.MLP.from_state_dict(state, "tanh")
    assert model.param_names == ["2.weight", "10.weight"]
    assert model.module_indices == [2, 10]


def test_renamed_curvature_files_round_trip(tmp_path, renamed):
    """Every structure's file keeps the user's names ('block.features.0', 'kfac.classifier.A')."""
    state, x, y = renamed
    model = er.MLP.from_state_dict(state, "relu")
    for structure in ("diag", "full", "block", "kfac"):
        curvature = er.fisher(model, er.Categorical(), x, y, "exact", structure)
        curvature.save(tmp_path / f"{structure}.npz")
        keys = set(np.load(tmp_path / f"{structure}.npz").files)
        expected = {"diag": set(state), "full": {"full"}, "block": {"block.features.0", "block.classifier"},
                    "kfac": {"kfac.features.0.A", "kfac.features.0.G", "kfac.classifier.A", "kfac.classifier.G"}}
        assert expected[structure] <= keys
        loaded = er.Curvature.load(tmp_path / f"{structure}.npz", model)
        np.testing.assert_array_equal(loaded.to_dense(), curvature.to_dense())
        assert loaded.param_names == list(state)


def test_diagnose_reads_curvature_keyed_by_the_users_names(renamed):
    """A diag dict keyed by the user's state_dict names is read; the old '0.weight' names are refused by name."""
    state, x, y = renamed
    model = er.MLP.from_state_dict(state, "relu")
    theirs = er.fisher(model, er.Categorical(), x, y, "empirical", "diag")
    report = er.diagnose(model, er.Categorical(), x, y, dict(theirs.arrays))
    assert report.estimator == "empirical" and report.rel_error <= 1e-12
    sequential_names = dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], theirs.arrays.values(), strict=True))
    with pytest.raises(ValueError, match="features.0.weight"):
        er.diagnose(model, er.Categorical(), x, y, sequential_names)


def test_save_model_from_a_state_dict_round_trips(tmp_path, renamed):
    state, x, _ = renamed
    torch_like = {k: v.tolist() for k, v in state.items()}  # any array-like goes through np.asarray
    er.save_model(tmp_path / "m.npz", torch_like, activation="tanh", likelihood="gaussian", sigma=0.5)
    model, lik = er.load_model(tmp_path / "m.npz")
    assert model.param_names == list(state)
    assert model.activation.name == "tanh" and lik == er.Gaussian(0.5)
    np.testing.assert_array_equal(model.theta, np.concatenate([v.ravel() for v in state.values()]))


def test_save_model_old_form_still_works(tmp_path):
    model = er.MLP.random([3, 4, 2], "sigmoid", rng=0)
    er.save_model(tmp_path / "m.npz", model, er.Bernoulli())
    loaded, lik = er.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.theta, model.theta)
    assert lik == er.Bernoulli()


def test_save_model_nested_flax_like_params(tmp_path):
    """Nested mappings join with '.': a Flax tree converted with .T to (out, in) weights."""
    rng = np.random.default_rng(2)
    flax = {"Dense_0": {"kernel": rng.standard_normal((3, 4)), "bias": rng.standard_normal(4)},
            "Dense_1": {"kernel": rng.standard_normal((4, 2)), "bias": rng.standard_normal(2)}}
    state = {f"{name}.{'weight' if leaf == 'kernel' else 'bias'}": value.T if leaf == "kernel" else value
             for name, layer in flax.items() for leaf, value in layer.items()}
    er.save_model(tmp_path / "m.npz", state, activation="relu", likelihood="categorical")
    model, _ = er.load_model(tmp_path / "m.npz")
    x = rng.standard_normal((5, 3))
    expected = np.maximum(x @ flax["Dense_0"]["kernel"] + flax["Dense_0"]["bias"], 0) @ flax["Dense_1"]["kernel"] + flax["Dense_1"]["bias"]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-13)
    assert named_arrays({"a": {"b": {"c": [1.0]}}}) == {"a.b.c": np.array([1.0])}


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((), {"activation": "relu"}, TypeError, "activation"),
    ((), {"activation": "relu", "likelihood": "poisson"}, ValueError, "likelihood"),
    ((), {"activation": "softplus", "likelihood": "categorical"}, ValueError, "activation"),
    ((er.Categorical(),), {"activation": "relu", "likelihood": "categorical"}, TypeError, "lik"),
    ((), {"activation": "relu", "likelihood": "categorical", "sigma": 1.0}, ValueError, "sigma"),
])
def test_save_model_state_dict_errors_name_the_argument(tmp_path, renamed, args, kwargs, error, match):
    state, _, _ = renamed
    with pytest.raises(error, match=match):
        er.save_model(tmp_path / "m.npz", state, *args, **kwargs)
    assert not (tmp_path / "m.npz").exists()


def test_save_model_refuses_bad_keys_and_non_mappings(tmp_path):
    with pytest.raises(ValueError, match="'features.0.running_mean'"):
        er.save_model(tmp_path / "m.npz", {"features.0.running_mean": np.zeros(3)}, activation="relu", likelihood="categorical")
    with pytest.raises(TypeError, match="^model: .*state_dict"):
        er.save_model(tmp_path / "m.npz", [np.zeros((2, 2))], activation="relu", likelihood="categorical")
    with pytest.raises(TypeError, match="activation"):
        er.save_model(tmp_path / "m.npz", er.MLP.random([2, 2], rng=0), er.Categorical(), activation="relu")


def test_save_curvature_diag_and_full_round_trip(tmp_path, renamed):
    state, x, y = renamed
    model = er.MLP.from_state_dict(state, "relu")
    F = er.fisher(model, er.Categorical(), x, y, "empirical", "diag")
    er.save_curvature(tmp_path / "d.npz", {k: v.tolist() for k, v in F.arrays.items()}, estimator="empirical", n=40)
    loaded = er.Curvature.load(tmp_path / "d.npz", model)
    np.testing.assert_array_equal(loaded.data, F.data)
    assert (loaded.estimator, loaded.n, loaded.param_names) == ("empirical", 40, list(state))
    full = er.fisher(model, er.Categorical(), x, y, "exact", "full")
    er.save_curvature(tmp_path / "f.npz", {"full": full.data}, param_names=model.param_names, model=model)
    loaded = er.Curvature.load(tmp_path / "f.npz", model)
    np.testing.assert_array_equal(loaded.data, full.data)
    assert loaded.estimator == "unknown"
    assert list(np.load(tmp_path / "f.npz")["__param_names__"]) == list(state)


@pytest.mark.parametrize(("arrays", "kwargs", "match"), [
    ({"a.weight": [np.nan]}, {}, "non-finite"),
    ({"a.weight": ["x"]}, {}, "numeric"),
    ({"a.weight": [1.0], "__n__": 3}, {}, "reserved"),
    ({"a.weight": [1.0]}, {"estimator": "fancy"}, "estimator"),
    ({"a.weight": [1.0]}, {"n": 0}, "n"),
    ({"full": np.ones((2, 3))}, {}, "square"),
])
def test_save_curvature_refuses_what_the_readers_refuse(tmp_path, arrays, kwargs, match):
    with pytest.raises(ValueError, match=match):
        er.save_curvature(tmp_path / "c.npz", arrays, **kwargs)
    assert not (tmp_path / "c.npz").exists()


def test_save_curvature_checks_against_the_model(tmp_path, renamed):
    state, _, _ = renamed
    model = er.MLP.from_state_dict(state, "relu")
    wrong = {k: np.ones(np.shape(v)) for k, v in state.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match="classifier.bias"):
        er.save_curvature(tmp_path / "c.npz", wrong, model=model)


# ------------------------------------------------------------------------------ the command line
def write_case(tmp_path, renamed, likelihood="categorical"):
    state, x, y = renamed
    er.save_model(tmp_path / "model.npz", state, activation="tanh", likelihood=likelihood)
    er.save_data(tmp_path / "data.npz", x, y)
    return str(tmp_path / "model.npz"), str(tmp_path / "data.npz")


def test_cli_laplace_json_equals_the_library(tmp_path, renamed, capsys):
    from ewc_ref.cli import main

    model_path, data_path = write_case(tmp_path, renamed)
    assert main(["laplace", model_path, data_path, "--prior-precision", "0.5", "--structure", "kfac", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, lik = er.load_model(model_path)
    x, y = er.load_data(data_path)
    expected = er.laplace_evidence(model, lik, x, y, prior_precision=0.5, structure="kfac").to_dict()
    assert report == {"model": model_path, "data": data_path, **expected}
    assert {"log_evidence", "log_likelihood", "log_prior", "log_det_precision", "prior_precision", "estimator",
            "structure", "kfac_bias"} <= set(report)
    assert main(["laplace", model_path, data_path, "--prior-precision", "0.5", "-o", str(tmp_path / "r.txt")]) == 0
    assert "log evidence" in (tmp_path / "r.txt").read_text()


@pytest.mark.parametrize(("flags", "match"), [
    (["--prior-precision", "0"], "--prior-precision"),
    (["--prior-precision", "1", "--kfac-bias", "separate"], "--kfac-bias"),
    (["--prior-precision", "1", "--estimator", "mc"], "--estimator"),
    (["--prior-precision", "1", "--structure", "kfac", "--estimator", "hessian"], "--estimator"),
    ([], "--prior-precision"),
])
def test_cli_laplace_errors_name_the_flag(tmp_path, renamed, capsys, flags, match):
    from ewc_ref.cli import main

    model_path, data_path = write_case(tmp_path, renamed)
    assert main(["laplace", model_path, data_path, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_cli_laplace_indefinite_is_one_short_line(tmp_path, capsys):
    """An untrained net's Hessian with a tiny prior: exit 2 with the smallest eigenvalue, not P numbers."""
    from ewc_ref.cli import main

    rng = np.random.default_rng(1)
    model = er.MLP.random([4, 30, 3], "tanh", rng=rng)
    x, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    er.save_model(tmp_path / "m.npz", model, er.Categorical())
    er.save_data(tmp_path / "d.npz", x, y)
    smallest = np.linalg.eigvalsh(60 * er.hessian(model, er.Categorical(), x, y)).min()
    assert smallest < 0
    argv = ["laplace", str(tmp_path / "m.npz"), str(tmp_path / "d.npz"), "--prior-precision", "1e-6",
            "--estimator", "hessian", "--structure", "full", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 250 and "--prior-precision" in err and "smallest eigenvalue" in err
    assert float(err.split("smallest eigenvalue")[1].strip()) == pytest.approx(smallest + 1e-6, rel=1e-5)


def test_cli_diagnose_reads_a_flat_vector_and_the_users_names(tmp_path, renamed, capsys):
    """THEIRS as one key 'flat' (P,) in the model's flat order, or keyed by the renamed modules."""
    from ewc_ref.cli import main

    model_path, data_path = write_case(tmp_path, renamed)
    model, lik = er.load_model(model_path)
    x, y = er.load_data(data_path)
    F = er.fisher(model, lik, x, y, "empirical", "diag")
    np.savez(tmp_path / "flat.npz", flat=3.0 * F.data)
    np.savez(tmp_path / "named.npz", **{k: 3.0 * v for k, v in F.arrays.items()})
    verdicts = []
    for name in ("flat.npz", "named.npz"):
        assert main(["diagnose", model_path, data_path, str(tmp_path / name), "--json", "--quiet"]) == 0
        verdicts.append(json.loads(capsys.readouterr().out))
    assert verdicts[0] == verdicts[1]
    np.savez(tmp_path / "short.npz", flat=F.data[:-1])
    assert main(["diagnose", model_path, data_path, str(tmp_path / "short.npz")]) == 2
    assert f"({model.n_params},)" in capsys.readouterr().err
    loaded = er.Curvature.load(tmp_path / "flat.npz", model)
    assert loaded.param_names == list(renamed[0]) and np.array_equal(loaded.data, 3.0 * F.data)
