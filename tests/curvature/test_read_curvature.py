"""The one reader of foreign curvature, ``ewc_ref.curvature.result.read_curvature`` (issue 27, item 3).

Every form of THEIRS (a file, a dict by name, a Curvature, a (P,) or (P, P) array) gives the same
Curvature, and each check fires with the name of its source; the diagnose command's --batch-sizes is
checked once, by er.diagnose (the CLI relabels the message).
"""

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.curvature.result import read_curvature


def _problem():
    model = er.MLP.random([3, 4, 3], "tanh", rng=1)
    lik = er.get_likelihood("categorical")
    x = np.random.default_rng(2).standard_normal((6, 3))
    y = lik.random_labels(model.forward(x)[0], np.random.default_rng(3))
    return model, lik, x, y


@pytest.mark.parametrize("form", ["file", "dict", "curvature", "flat array", "full array"])
def test_every_form_of_theirs_reads_to_the_same_curvature(tmp_path, form):
    model, lik, x, y = _problem()
    structure = "full" if form == "full array" else "diag"
    ours = er.fisher(model, lik, x, y, "exact", structure)
    arrays = {k: v for k, v in ours.to_arrays().items() if not k.startswith("__")}
    np.savez(tmp_path / "theirs.npz", **arrays)
    source = {"file": tmp_path / "theirs.npz", "dict": arrays, "curvature": ours, "flat array": ours.diagonal,
              "full array": ours.data}[form]
    read = read_curvature(source, model)
    assert read.structure == structure and read.param_names == model.param_names
    assert np.array_equal(read.data, ours.data)


def test_each_check_names_its_source(tmp_path):
    model, lik, x, y = _problem()
    ours = er.fisher(model, lik, x, y, "exact", "diag")
    arrays = {k: v for k, v in ours.to_arrays().items() if not k.startswith("__")}
    first = model.param_names[0]
    nan = {**arrays, first: np.where(np.arange(arrays[first].size).reshape(arrays[first].shape) == 0, np.nan,
                                     arrays[first])}
    with pytest.raises(ValueError, match=rf"^theirs: key '{first}' contains 1 non-finite value\(s\)"):
        read_curvature(nan, model)
    np.savez(tmp_path / "nan.npz", **nan)
    with pytest.raises(ValueError, match=rf"nan.npz: key '{first}' contains 1 non-finite value\(s\)"):
        read_curvature(tmp_path / "nan.npz", model)
    bad = er.Curvature("diag", "unknown", ours.param_names, ours.param_shapes, np.where(ours.data > 0, np.inf, 0.0))
    with pytest.raises(ValueError, match="^theirs: contains non-finite values"):
        read_curvature(bad, model)
    with pytest.raises(ValueError, match="^theirs: all entries are zero"):
        read_curvature(np.zeros(model.n_params), model)
    block = er.fisher(model, lik, x, y, "exact", "block")
    with pytest.raises(ValueError, match=r"^theirs: diagnose reads 'diag', 'full' or 'kfac' curvatures"):
        read_curvature(block, model)
    with pytest.raises(ValueError, match=r"^theirs: has P = 3 parameters"):
        read_curvature(er.Curvature("diag", "unknown", ["theta"], [(3,)], np.ones(3)), model)
    # validate=False (Curvature.load, as_theirs): zeros are a valid curvature file
    assert not np.any(read_curvature(np.zeros(model.n_params), model, validate=False).data)


def test_diagnose_command_checks_batch_sizes_once_against_n(tmp_path, capsys):
    model, lik, x, y = _problem()
    er.save_model(tmp_path / "m.npz", model, lik)
    er.save_data(tmp_path / "d.npz", x, y)
    np.savez(tmp_path / "t.npz", flat=er.fisher(model, lik, x, y, "empirical", "diag").diagonal)
    assert main(["diagnose", str(tmp_path / "m.npz"), str(tmp_path / "d.npz"), str(tmp_path / "t.npz"),
                 "--batch-sizes", "2", "7", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "ewc-ref diagnose: error: --batch-sizes: expected an integer <= 6, got 7"
