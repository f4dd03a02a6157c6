"""Exceptions by contract (issue 25, item 6): every bad argument of the public API is refused by name.

A table of calls, each with the exception type it must raise and the argument its message must
start with: paths that are not str / os.PathLike (TypeError naming the path argument), a folder
as an output (ValueError naming the argument, never the temporary file), rng where it is used
and refused where it means nothing, likelihood parameters that are not numbers, param_names that
do not match the model or the file. No output or temporary file may be left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.atomic import atomic_savez
from ewc_ref.continual.datasets import write_idx
from ewc_ref.io import read_npz
from ewc_ref.safe_files import read_npy
from ewc_ref.safe_idx import read_idx


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = np.random.default_rng(0).uniform(-1, 1, (6, 3)), np.array([0, 1, 0, 1, 1, 0])
    er.save_model("m.npz", model, er.Categorical())
    er.save_data("d.npz", x, y)
    er.fisher(model, er.Categorical(), x, y, "exact").save("F.npz")
    os.mkdir("folder")
    return model, x, y


def _cases(model, x, y):
    lik = er.Categorical()
    P = model.n_params
    def fisher():
        return er.Curvature.load("F.npz", model)

    diag = {name: np.ones(shape) for name, shape in zip(model.param_names, model.param_shapes, strict=True)}
    return {
        # paths: str or os.PathLike, else TypeError naming the argument
        "load_model(bytes)": (lambda: er.load_model(b"m.npz"), TypeError, "path: expected a path"),
        "load_model(int)": (lambda: er.load_model(3), TypeError, "path: expected a path"),
        "load_model(None)": (lambda: er.load_model(None), TypeError, "path: expected a path"),
        "load_data(bytes)": (lambda: er.load_data(b"d.npz"), TypeError, "path: expected a path"),
        "Curvature.load(bytes)": (lambda: er.Curvature.load(b"F.npz"), TypeError, "path: expected a path"),
        "read_npz(bytes)": (lambda: read_npz(b"F.npz"), TypeError, "path: expected a path"),
        "read_npy(list)": (lambda: read_npy(["a"]), TypeError, "path: expected a path"),
        "read_idx(bytes)": (lambda: read_idx(b"x.idx"), TypeError, "path: expected a path"),
        "load_mnist(int)": (lambda: er.load_mnist(3), TypeError, "data_dir: expected a path"),
        "write_idx(bytes)": (lambda: write_idx(b"x.idx", np.zeros(3, np.uint8)), TypeError, "path: expected a path"),
        "write_idx(folder)": (lambda: write_idx("folder", np.zeros(3, np.uint8)), ValueError, "path: folder is a folder"),
        "load_model('')": (lambda: er.load_model(""), ValueError, "path: expected a file name"),
        "load_model(NUL)": (lambda: er.load_model("m\x00.npz"), ValueError, "path: a path may not contain a NUL"),
        "save_model(bytes)": (lambda: er.save_model(b"out.npz", model, lik), TypeError, "path: expected a path"),
        "save_data(bytes)": (lambda: er.save_data(b"out.npz", x, y), TypeError, "path: expected a path"),
        "Curvature.save(bytes)": (lambda: fisher().save(b"out.npz"), TypeError, "path: expected a path"),
        "save_curvature(bytes)": (lambda: er.save_curvature(b"out.npz", diag), TypeError, "path: expected a path"),
        "Curvature.load(path, 'm')": (lambda: er.Curvature.load("F.npz", "m"), TypeError, "model: expected an ewc_ref.MLP"),
        # a folder as an output: ValueError naming the argument
        "save_model(folder)": (lambda: er.save_model("folder", model, lik), ValueError, "path: folder is a folder"),
        "save_model('.')": (lambda: er.save_model(".", model, lik), ValueError, "path: . is a folder"),
        "save_data(folder)": (lambda: er.save_data("folder", x, y), ValueError, "path: folder is a folder"),
        "Curvature.save(folder)": (lambda: fisher().save(Path("folder")), ValueError, "path: folder is a folder"),
        "save_curvature(folder)": (lambda: er.save_curvature("folder", diag), ValueError, "path: folder is a folder"),
        "atomic_savez(folder/)": (lambda: atomic_savez("folder/", {"a": np.ones(2)}), ValueError, "path: folder is a folder"),
        # rng: validated where used, refused where it means nothing
        "fisher mc rng=-1": (lambda: er.fisher(model, lik, x, y, "mc", rng=-1), ValueError, "rng: expected an integer seed >= 0"),
        "fisher mc rng='1'": (lambda: er.fisher(model, lik, x, y, "mc", rng="1"), TypeError, "rng: expected a numpy.random.Generator"),
        "fisher mc rng=True": (lambda: er.fisher(model, lik, x, y, "mc", rng=True), TypeError, "rng: expected"),
        "fisher exact rng=3": (lambda: er.fisher(model, lik, x, y, "exact", rng=3), ValueError, "rng: only used by estimator='mc'"),
        "fisher empirical rng=Generator": (lambda: er.fisher(model, lik, x, y, "empirical", rng=np.random.default_rng(0)),
                                           ValueError, "rng: only used by estimator='mc'"),
        "FisherAccumulator hessian rng=3": (lambda: er.FisherAccumulator(model, lik, "hessian", rng=3), ValueError,
                                            "rng: only used by estimator='mc'"),
        "MLP.random rng=-1": (lambda: er.MLP.random([2, 2], rng=-1), ValueError, "rng: expected an integer seed >= 0"),
        # likelihood parameters are numbers
        "Gaussian('1')": (lambda: er.Gaussian("1"), TypeError, "sigma: expected a number"),
        "Gaussian(None)": (lambda: er.Gaussian(None), TypeError, "sigma: expected a number"),
        "Gaussian(True)": (lambda: er.Gaussian(True), TypeError, "sigma: expected a number"),
        "Gaussian([1.0])": (lambda: er.Gaussian([1.0]), TypeError, "sigma: expected a number"),
        "Gaussian(0)": (lambda: er.Gaussian(0), ValueError, "sigma: expected a finite number > 0"),
        "get_likelihood sigma='1'": (lambda: er.get_likelihood("gaussian", "1"), TypeError, "sigma: expected a number"),
        "save_model sigma='1'": (lambda: er.save_model("out.npz", model.state_dict(), activation="tanh",
                                                       likelihood="gaussian", sigma="1"), TypeError, "sigma: expected a number"),
        # param_names matched to the model and to the file
        "save_curvature full, names not the model's": (
            lambda: er.save_curvature("out.npz", {"full": np.eye(P)}, param_names=["a"], model=model),
            ValueError, "param_names: expected the model's parameter names"),
        "save_curvature full, names reordered": (
            lambda: er.save_curvature("out.npz", {"full": np.eye(P)}, param_names=model.param_names[::-1], model=model),
            ValueError, "param_names: expected the model's parameter names"),
        "save_curvature diag, names not its keys": (
            lambda: er.save_curvature("out.npz", diag, param_names=["a"]), ValueError, "param_names: a diag file's parameters are its keys"),
        "save_curvature names repeated": (
            lambda: er.save_curvature("out.npz", {"full": np.eye(P)}, param_names=["a", "a"]), ValueError, "param_names: expected distinct"),
        "save_curvature names a string": (
            lambda: er.save_curvature("out.npz", {"full": np.eye(P)}, param_names="abc"), TypeError, "param_names: expected a list"),
    }


CASE_NAMES = list(_cases(er.MLP.random([3, 4, 2], "tanh", rng=0), np.zeros((6, 3)), np.zeros(6, int)))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_argument_is_refused_by_name(name, work):
    call, kind, start = _cases(*work)[name]
    before = sorted(os.listdir("."))
    with pytest.raises(kind) as raised:
        call()
    message = str(raised.value)
    assert message.startswith(start), message
    assert "\n" not in message and ".tmp" not in message
    assert sorted(os.listdir(".")) == before  # no output, no temporary file
    assert os.listdir("folder") == []


def test_paths_may_be_str_or_pathlike(work):
    model, x, y = work
    er.save_model(Path("p.npz"), model, er.Categorical())
    loaded, _ = er.load_model(Path("p.npz"))
    np.testing.assert_array_equal(loaded.theta, model.theta)
    assert er.Curvature.load(Path("F.npz"), model).n_params == model.n_params


def test_rng_is_used_by_mc_as_a_seed(work):
    """The seed that is accepted is the one used: two equal seeds give equal draws, different ones do not."""
    model, x, y = work
    a, b, c = (er.fisher(model, er.Categorical(), x, y, "mc", samples=2, rng=seed).flat for seed in (4, 4, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_matching_param_names_are_written(work):
    model, _, _ = work
    er.save_curvature("full.npz", {"full": np.eye(model.n_params)}, param_names=model.param_names, model=model)
    assert list(read_npz("full.npz")["__param_names__"]) == model.param_names
