"""The tables of ewc_ref, row by row: estimators, structures, likelihood rules, the package face.

Every test here is parametrized by a table itself, so a new row is tested the day it is added, and
``test_every_row_is_exercised`` fails if a row escapes the parametrization. Tolerances: identities
between float64 computations that differ in summation order, 1e-10 relative (observed ~1e-15);
quadrature identities are exact for the polynomial integrands used (degree <= 4 in y).
"""

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.curvature.dense_hessian import hessian
from ewc_ref.curvature.estimators import ESTIMATOR_TABLE, OUTER_PRODUCT_ESTIMATORS
from ewc_ref.curvature.naive import naive_fisher, project
from ewc_ref.curvature.result import curvature_from_arrays
from ewc_ref.curvature.structures import STRUCTURE_TABLE
from ewc_ref.model.likelihoods import LIKELIHOODS
from ewc_ref.verify.gradcheck import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import table_docs  # noqa: E402  (tools/table_docs.py: the docs' estimator tables from the rows)

RTOL = 1e-10
OPTION_VALUES = {"samples": 3, "batch_size": 2, "rng": 7}
EXERCISED = {"estimator": set(), "structure": set(), "likelihood": set()}


def _problem(likelihood="categorical", n=5):
    model = er.MLP.random([3, 4, 3], "tanh", rng=1)
    lik = er.get_likelihood(likelihood)
    x = np.random.default_rng(2).standard_normal((n, 3))
    y = lik.random_labels(model.forward(x)[0], np.random.default_rng(3))
    return model, lik, x, y


def _options(row):
    return {name: OPTION_VALUES[name] for name in row.options}


# --------------------------------------------------------------------------- estimator table
@pytest.mark.parametrize("name", list(ESTIMATOR_TABLE))
def test_estimator_row_matches_its_naive_definition_in_every_allowed_structure(name):
    row = ESTIMATOR_TABLE[name]
    model, lik, x, y = _problem()
    options = _options(row)
    if row.kind == "hessian":
        dense = hessian(model, lik, x, y)
    else:
        naive_options = {k: np.random.default_rng(v) if k == "rng" else v for k, v in options.items()}
        dense = naive_fisher(model, lik, x, y, name, **naive_options)
    for structure in row.structures:
        ours = er.fisher(model, lik, x, y, name, structure, **options)
        expected = project(dense, model, structure) if structure != "kfac" else None
        if expected is not None:
            pairs = zip(ours.data, expected, strict=True) if structure == "block" else [(ours.data, expected)]
            assert all(relative_error(a, b) <= RTOL for a, b in pairs)
        assert (ours.estimator, ours.samples, ours.batch_size) == (name, options.get("samples"), options.get("batch_size"))
    EXERCISED["estimator"].add(name)


@pytest.mark.parametrize("name", list(ESTIMATOR_TABLE))
def test_estimator_row_refuses_structures_and_options_it_does_not_take(name):
    row = ESTIMATOR_TABLE[name]
    model, lik, x, y = _problem()
    for structure in set(STRUCTURE_TABLE) - set(row.structures):
        with pytest.raises(ValueError, match=f"structure: '{structure}' is defined for per-example outer products"):
            er.fisher(model, lik, x, y, name, structure, **_options(row))
    for option in {"samples", "batch_size"} - set(row.options):
        with pytest.raises(ValueError, match=f"^{option}: only used by estimator="):
            er.fisher(model, lik, x, y, name, **_options(row), **{option: 2})


@pytest.mark.parametrize("name", list(ESTIMATOR_TABLE))
def test_backward_vectors_are_the_rows_of_its_output_vectors(name):
    row = ESTIMATOR_TABLE[name]
    model, lik, x, y = _problem()
    f = model.forward(x)[0]
    if row.output_vectors is None:
        assert row.kind in ("batched", "hessian") and name not in OUTER_PRODUCT_ESTIMATORS
        return
    samples = model.n_outputs + 2  # S != C, so the two kinds of row cannot be confused
    r, weight = row.output_vectors(lik, f, y, samples, np.random.default_rng(0))
    k = row.backward_vectors(samples, model.n_outputs)
    assert r.shape[1:] == f.shape and r.shape[0] <= k
    if k == model.n_outputs:  # factor columns: sum_k w r_k r_k^T = Lambda, the exact Fisher per example
        assert relative_error(weight * np.einsum("knc,knd->ncd", r, r), lik.hessian(f)) <= RTOL
    else:  # gradients at labels: a weighted mean over the K labels of one example
        assert weight * r.shape[0] == pytest.approx(1.0, rel=1e-15)


# --------------------------------------------------------------------------- structure table
@pytest.mark.parametrize("structure", list(STRUCTURE_TABLE))
def test_structure_row_views_agree_and_its_arrays_round_trip(structure):
    model, lik, x, y = _problem()
    ours = er.fisher(model, lik, x, y, "exact", structure)
    dense = ours.to_dense()
    v = np.random.default_rng(4).standard_normal((model.n_params, 2))
    assert relative_error(ours.diagonal, np.diagonal(dense)) <= RTOL
    assert ours.flat is not None and np.array_equal(ours.flat, ours.diagonal)
    assert relative_error(ours.matvec(v), dense @ v) <= RTOL
    back = curvature_from_arrays(ours.to_arrays(), model)
    assert back.structure == structure and relative_error(back.to_dense(), dense) == 0.0
    EXERCISED["structure"].add(structure)


def test_read_theirs_is_the_one_reader_of_a_foreign_file(tmp_path):
    from ewc_ref.curvature.result import as_theirs, read_theirs

    model, lik, x, y = _problem()
    ours = er.fisher(model, lik, x, y, "exact", "diag")
    arrays = {k: v for k, v in ours.to_arrays().items() if not k.startswith("__")}
    np.savez(tmp_path / "theirs.npz", **arrays)
    structure, t = as_theirs(read_theirs(tmp_path / "theirs.npz", model), model)
    assert structure == "diag" and np.array_equal(t, ours.diagonal)
    first, second = model.param_names[:2]
    arrays.pop(first)
    arrays[second] = arrays[second][:1]
    np.savez(tmp_path / "bad.npz", **arrays, extra=np.ones(2))
    with pytest.raises(ValueError, match=rf"bad.npz: does not match .*missing keys \['{first}'\]; unknown keys \['extra'\]; wrong shapes: {second}"):
        read_theirs(tmp_path / "bad.npz", model)


def test_full_curvature_diagonal_is_the_diagonal_not_the_matrix():
    model, lik, x, y = _problem()
    full = er.fisher(model, lik, x, y, "exact", "full")
    assert full.diagonal.shape == (model.n_params,)
    assert np.array_equal(full.diagonal, np.diagonal(full.data))


# --------------------------------------------------------------------------- likelihood rules
@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_label_quadrature_reproduces_the_score_identities(name):
    """E[d l/d f] = 0 and E[(d l/d f)(d l/d f)^T] = Lambda (Bartlett) under the quadrature."""
    lik = er.get_likelihood(name)
    f = np.random.default_rng(5).standard_normal((4, 3))
    labels, weights = lik.label_quadrature(f)
    assert np.allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    grads = np.stack([lik.grad(f, label) for label in labels], axis=1)  # (n, K, C)
    mean = np.einsum("nk,nkc->nc", weights, grads)
    second = np.einsum("nk,nkc,nkd->ncd", weights, grads, grads)
    assert np.abs(mean).max() <= 1e-12
    assert relative_error(second, lik.hessian(f)) <= RTOL
    EXERCISED["likelihood"].add(name)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_gradient_cumulants_are_the_moments_of_the_quadrature(name):
    lik = er.get_likelihood(name)
    f = np.random.default_rng(6).standard_normal((4, 2))
    cumulants = lik.gradient_cumulants(f)
    if cumulants is None:  # dependent outputs: diagnose enumerates the labels instead
        assert name == "categorical"
        return
    labels, weights = lik.label_quadrature(f)
    e = np.stack([lik.grad(f, label) for label in labels], axis=1)  # (n, K, C)
    m2 = np.einsum("nk,nkc->nc", weights, e**2)
    m4 = np.einsum("nk,nkc->nc", weights, e**4)
    assert relative_error(cumulants[0], m2) <= RTOL
    assert np.abs(cumulants[1] - (m4 - 3 * m2**2)).max() <= 1e-12 * max(1.0, np.abs(m4).max())


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_random_labels_lie_in_the_support_and_min_outputs_is_enough(name):
    lik = er.get_likelihood(name)
    f = np.random.default_rng(7).standard_normal((6, lik.min_outputs))
    y = lik.random_labels(f, np.random.default_rng(8))
    lik.check_labels(y, 6, lik.min_outputs)  # raises if outside the support
    assert lik.nll(f, y).shape == (6,)


# --------------------------------------------------------------------------- definitions written once
def test_the_docs_estimator_tables_are_the_rows():
    # README.md and docs/file-format.md section 6 show each row's definition (and README its cost);
    # after editing a row, `python tools/table_docs.py` rewrites them.
    assert table_docs.differing_pages() == {}


def test_a_changed_row_makes_the_docs_differ(monkeypatch):
    row = ESTIMATOR_TABLE["empirical"]
    monkeypatch.setitem(ESTIMATOR_TABLE, "empirical", dataclasses.replace(row, definition="F = 2/N sum_n g_n g_n^T"))
    assert set(table_docs.differing_pages()) == {"README.md", "docs/file-format.md"}
    monkeypatch.setitem(ESTIMATOR_TABLE, "twice", dataclasses.replace(row, name="twice"))  # a new row
    assert "--estimator {" + ",".join(ESTIMATOR_TABLE) + "}" in table_docs.differing_pages()["docs/file-format.md"]
    assert list(ESTIMATOR_TABLE)[-1] == "twice"


@pytest.mark.parametrize("name", list(ESTIMATOR_TABLE))
def test_estimator_row_has_its_definition_and_cost(name):
    row = ESTIMATOR_TABLE[name]
    assert row.definition and row.cost and "|" not in row.definition + row.cost  # a markdown table cell each


def test_the_docs_fisher_synopsis_lists_every_estimator():
    text = (Path(__file__).resolve().parents[2] / "docs" / "file-format.md").read_text()
    (choices,) = re.findall(r"ewc-ref fisher MODEL DATA --estimator \{([^}]*)\}", text)
    assert tuple(choices.split(",")) == tuple(ESTIMATOR_TABLE)


def test_a_new_likelihood_row_reaches_the_docs(monkeypatch):
    class TrialLikelihood(er.Bernoulli):  # the Bernoulli under another name: enough for the docs
        name = "trial"

    monkeypatch.setitem(LIKELIHOODS, "trial", TrialLikelihood)
    pages = table_docs.differing_pages()
    assert set(pages) == {"README.md", "docs/file-format.md"}
    assert "| `trial` | sum_c [log(1 + e^{f_c}) - y_nc f_c] |" in pages["docs/file-format.md"]
    assert "`categorical`, `gaussian`, `bernoulli` or `trial` (section 5)" in pages["docs/file-format.md"]
    assert "`__likelihood__` (`categorical`, `gaussian`, `bernoulli`, `trial`;" in pages["README.md"]


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_likelihood_row_has_its_formulas(name):
    row = LIKELIHOODS[name]
    assert row.name == name and row.nll_formula and row.lambda_formula and "|" not in row.nll_formula + row.lambda_formula


def test_the_docs_name_every_likelihood_of_the_table():
    # A likelihood is part of the file format: section 2's key table, section 5's table of losses and
    # README's list name exactly the table's rows (tools/table_docs.py writes them).
    root = Path(__file__).resolve().parents[2]
    spec, readme = (root / "docs" / "file-format.md").read_text(), (root / "README.md").read_text()
    (key_row,) = re.findall(r'^\| `"__likelihood__"` \|.*$', spec, re.M)
    section5 = spec[spec.index("## 5. Losses and likelihoods"):spec.index("## 6. Estimators")]
    (readme_list,) = re.findall(r"`__likelihood__` \(([^)]*)\)", readme)
    for where, text in {"file-format section 2": key_row, "README": readme_list}.items():
        assert re.findall(r"`(\w+)`", text.replace("`__sigma__`", "")) == list(LIKELIHOODS), where
    assert re.findall(r"^\| `(\w+)` \|", section5, re.M) == list(LIKELIHOODS)


# --------------------------------------------------------------------------- the package face
def test_every_lazy_name_resolves_and_is_listed():
    for name in er._LAZY:
        assert getattr(er, name) is getattr(importlib.import_module(er._LAZY[name]), name)
    assert {"fisher", "diagnose", "hessian", "Curvature"} <= set(dir(er))
    assert set(er.__all__) <= set(dir(er))


def test_hessian_and_diagnose_stay_functions_after_their_modules_are_imported():
    code = ("import ewc_ref as er, ewc_ref.curvature.second_order, ewc_ref.verify.diagnosis;"
            "import inspect; assert inspect.isfunction(er.hessian) and inspect.isfunction(er.diagnose);"
            "er.diagnose; assert inspect.isfunction(er.diagnose)")
    subprocess.run([sys.executable, "-c", code], check=True)


ROW_TESTS = {"estimator": ("test_estimator_row_matches_its_naive_definition_in_every_allowed_structure", ESTIMATOR_TABLE),
             "structure": ("test_structure_row_views_agree_and_its_arrays_round_trip", STRUCTURE_TABLE),
             "likelihood": ("test_label_quadrature_reproduces_the_score_identities", LIKELIHOODS)}


def test_every_row_is_exercised():
    """Every row of every table is a parametrization of its row test (read from the test's own
    parametrize mark, whatever subset of the suite was collected or which xdist worker runs this),
    and the row test runs to its end on every row here, in this test (EXERCISED records the end)."""
    module = sys.modules[__name__]
    for kind, (test, table) in ROW_TESTS.items():
        function = getattr(module, test)
        (mark,) = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
        assert list(mark.args[1]) == list(table), f"{test} is not parametrized by every row of its table"
        EXERCISED[kind].clear()
        for row in table:
            function(row)
        assert EXERCISED[kind] == set(table), f"{test} did not reach its end for {set(table) - EXERCISED[kind]}"
