"""diagnose on KFAC THEIRS (ewc_ref/verify/kfac.py): products G (x) A, both bias conventions.

Tolerances: kfac_fit against its naive twin (fit_scale on the dense to_dense() matrices): 1e-9
relative on the scale and 1e-8 absolute on the relative error (the dense residual itself loses
digits to cancellation near 0; the closed form (2) does not). Verdicts: the round-off threshold
of diagnose (1e-8 float64) and the mc test's own significance level.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.problems import rescaled, small_problem

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.diagnosis import diagnose
from ewc_ref.verify.kfac import kfac_fit, kronecker_blocks
from ewc_ref.verify.scale import fit_scale

LIBRARIES = Path(__file__).parents[1] / "fixtures" / "libraries"


@pytest.mark.parametrize("kfac_bias", ["joined", "separate"])
@given(case=models_and_data(max_width=6), scale=st.floats(0.01, 100), split=st.floats(0.1, 10),
       noise=st.sampled_from([0.0, 1e-6, 1e-2]), seed=st.integers(0, 99))
def test_kfac_fit_is_fit_scale_on_the_dense_products(kfac_bias, case, scale, split, noise, seed):
    model, lik, x, y = case
    ours = er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias=kfac_bias)
    if not any(np.any(A) and np.any(G) for A, G in kronecker_blocks(ours)):
        return  # a dead net: nothing to fit
    theirs = rescaled(ours, scale, split, np.random.default_rng(seed), noise)
    c, rel, _ = kfac_fit(kronecker_blocks(theirs), kronecker_blocks(ours))
    c_dense, rel_dense = fit_scale(theirs.to_dense(), ours.to_dense())
    assert abs(c - c_dense) <= 1e-9 * abs(c_dense)
    assert abs(rel - rel_dense) <= 1e-8
    if noise == 0.0:
        assert abs(c - scale) <= 1e-12 * scale and rel <= 1e-13


@pytest.mark.parametrize("kfac_bias", ["joined", "separate"])
@pytest.mark.parametrize(("estimator", "scale", "split"), [("exact", 1.0, 1.0), ("exact", 200.0, 1.0), ("exact", 1.0, 3.0),
                                                            ("empirical", 1.0, 0.5), ("pred", 0.5, 1.0)])
def test_a_kfac_of_each_estimator_and_scale_is_named(kfac_bias, estimator, scale, split):
    """The factors' split (A x 3, G / 3, as nngeometry) never changes the verdict or the scale."""
    model, lik, x, y = small_problem()
    ours = er.fisher(model, lik, x, y, estimator, "kfac", kfac_bias=kfac_bias)
    result = diagnose(model, lik, x, y, rescaled(ours, scale, split))
    assert (result.estimator, result.structure, result.kfac_bias) == (estimator, "kfac", kfac_bias)
    assert abs(result.scale - scale) <= 1e-10 * scale and result.rel_error <= 1e-12
    assert result.to_dict()["kfac_bias"] == kfac_bias


@pytest.mark.parametrize("kfac_bias", ["joined", "separate"])
def test_a_one_sample_mc_kfac_is_mc_and_a_wrong_input_factor_is_none(kfac_bias):
    model, lik, x, y = small_problem()
    mc = er.fisher(model, lik, x, y, "mc", "kfac", samples=1, rng=3, kfac_bias=kfac_bias)
    result = diagnose(model, lik, x, y, mc)
    assert result.estimator == "mc" and result.mc.accepted, result.mc.reason
    assert abs(result.scale - 1) <= 4 * result.mc.scale_se
    # A computed on other inputs: no estimator, and mc is refused by name (labels cannot change A)
    other = er.fisher(model, lik, x + 0.1, y, "mc", "kfac", samples=1, rng=3, kfac_bias=kfac_bias)
    wrong = rescaled(mc, 1.0, 1.0)
    wrong.data = [(o[0], *m[1:]) for o, m in zip(other.data, mc.data, strict=True)]
    result = diagnose(model, lik, x, y, wrong)
    assert result.estimator == "none"
    assert "the input factors A differ from ours" in result.mc.reason


# --------------------------------------------------------------------------- the real libraries
def library_kfac(fname, kfac_bias):
    """A library's fixture as an ewc_ref kfac file: the lines docs/verify-a-pytorch-ewc.md shows.

    nngeometry / curvlinops store <m>.A, <m>.G (joined: A with the bias column; curvlinops separate:
    the bias block is G alone); BackPACK p.kflr / p.kfac = [G, A] and bias [G]; laplace-torch's Kron
    the same under 'kron.'."""
    z = np.load(LIBRARIES / fname)
    arrays = {"__structure__": np.array("kfac"), "__kfac_bias__": np.array(kfac_bias)}
    for m in ("0", "2"):
        if f"{m}.A" in z.files:
            arrays |= {f"kfac.{m}.A": z[f"{m}.A"], f"kfac.{m}.G": z[f"{m}.G"]}
            if kfac_bias == "separate":
                arrays[f"kfac.{m}.bias_G"] = z[f"{m}.G"]
        else:
            p = "kron." if "kron.0.weight.A" in z.files else ""
            arrays |= {f"kfac.{m}.A": z[f"{p}{m}.weight.A"], f"kfac.{m}.G": z[f"{p}{m}.weight.G"],
                       f"kfac.{m}.bias_G": z[f"{p}{m}.bias.G"]}
    return arrays


@pytest.mark.parametrize(("fname", "net", "kfac_bias", "estimator", "scale"), [
    ("categorical_weak__nngeometry_fim_kfac.npz", "categorical_weak", "joined", "exact", 1.0),  # A x 3, G / 3
    ("categorical__curvlinops_kfac_type2_joined.npz", "categorical", "joined", "exact", 1.0),
    ("categorical__curvlinops_kfac_type2_separate.npz", "categorical", "separate", "exact", 1.0),
    ("categorical__backpack_kflr.npz", "categorical", "separate", "exact", 1.0),
    ("categorical__laplace.npz", "categorical", "separate", "exact", 1000.0),  # laplace-torch sums over N
    ("categorical__backpack_kfac_mc1.npz", "categorical", "separate", "mc", 1.0),
])
def test_real_library_kfacs_are_diagnosed(tmp_path, capsys, fname, net, kfac_bias, estimator, scale):
    model_path, data_path = LIBRARIES / f"{net}_model.npz", LIBRARIES / "categorical_data.npz"
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, **library_kfac(fname, kfac_bias))
    assert main(["diagnose", str(model_path), str(data_path), str(theirs), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["estimator"], result["structure"], result["kfac_bias"]) == (estimator, "kfac", kfac_bias)
    if estimator == "mc":
        assert result["mc_test"]["accepted"]
        assert result["rel_error"] > 1e-2  # a one-sample G, far from exact
        # x 1 lies in the noise band of a one-sample estimate: the simplest factor, never "x 2"
        assert result["scale_factor"] == "1", result["scale_words"]
    else:
        assert abs(result["scale"] - scale) <= 1e-10 * scale and result["rel_error"] <= 1e-12
        assert result["scale_factor"] == {1.0: "1", 1000.0: "N"}[scale], result["scale_words"]


# --------------------------------------------------------------------------- compare
def test_compare_kfac_files_on_their_products_not_their_factors(tmp_path, capsys):
    """nngeometry's factors are 3 A and G / 3 of ours: factor by factor they differ by 3x, the
    products agree to 2e-15 (the match); a product off by 1e-6 is a mismatch (exit 1); a file of
    the other bias convention cannot be compared (exit 2, one line naming __kfac_bias__)."""
    model, lik = er.load_model(LIBRARIES / "categorical_weak_model.npz")
    x, y = er.load_data(LIBRARIES / "categorical_data.npz")
    ours = tmp_path / "ours.npz"
    er.fisher(model, lik, x, y, "exact", "kfac").save(ours)
    theirs = tmp_path / "theirs.npz"
    arrays = library_kfac("categorical_weak__nngeometry_fim_kfac.npz", "joined")
    np.savez(theirs, **arrays)
    assert main(["compare", str(theirs), str(ours), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["products"] and set(result["keys"]) == {"kfac.0", "kfac.2"}
    assert max(e["max_rel_error"] for e in result["keys"].values()) <= 1e-13
    np.savez(theirs, **(arrays | {"kfac.2.G": arrays["kfac.2.G"] * (1 + 1e-6)}))
    assert main(["compare", str(theirs), str(ours)]) == 1
    out = capsys.readouterr().out
    assert "kfac.2" in out and "MISMATCH" in out and "kfac.0 " in out
    separate = tmp_path / "separate.npz"
    er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias="separate").save(separate)
    assert main(["compare", str(separate), str(ours)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "__kfac_bias__:" in err and "'separate' but" in err
