"""The two KFAC bias conventions (ewc_ref/curvature/structures.py, KFAC_BIAS_TABLE) and what relates them.

For a Linear layer with per-example gradient g_n = [vec_row(delta_n a_n^T), delta_n] and
G = mean_n delta_n delta_n^T (summed over the backward vectors with their weights):

    joined    A = mean [a, 1][a, 1]^T, block G (x) A   (cross W-b terms G (x) mean a)
    separate  A = mean a a^T, weight block G (x) A, bias block G, cross W-b terms 0

Derived identities, each a test below:
1. Same weight block: A_sep = A_joined[:in, :in], G_sep = G_joined.
2. Same bias block, and it is the EXACT bias block of the estimator for every N (the bias gradient
   is delta_n, so mean delta delta^T is no approximation).
3. joined - separate = the W-b cross terms of joined, G (x) mean_n a_n (the last column of A_joined).
4. N = 1: joined = the exact block; separate = the exact block with its W-b cross terms zeroed.
Plus: matvec and diagonal of separate equal the dense block (naive twin: np.kron), files round-trip.

Tolerance: 1e-10 relative (float64 identities differing only in summation order, ~1e-15 observed).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.curvature.accumulator import FisherAccumulator
from ewc_ref.curvature.result import Curvature
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-10
KFAC_ESTIMATORS = ["empirical", "exact", "mc", "pred", "ggn"]


def kw(estimator):
    return {"samples": 2, "rng": 3} if estimator == "mc" else {}


def both(model, lik, x, y, estimator):
    joined = er.fisher(model, lik, x, y, estimator, "kfac", kfac_bias="joined", **kw(estimator))
    separate = er.fisher(model, lik, x, y, estimator, "kfac", kfac_bias="separate", **kw(estimator))
    return joined, separate


def layer_parts(model, dense, l):
    """(weight-weight, bias-bias, weight-bias) sub-blocks of layer l of a dense (P, P) matrix."""
    w, b = model.weight_slices[l], model.bias_slices[l]
    if b is None:
        return dense[w, w], None, None
    return dense[w, w], dense[b, b], dense[w, b]


@pytest.mark.parametrize("estimator", KFAC_ESTIMATORS)
@given(case=models_and_data(max_width=7))
def test_the_conventions_share_the_weight_factors(estimator, case):
    model, lik, x, y = case
    joined, separate = both(model, lik, x, y, estimator)
    assert (joined.kfac_bias, separate.kfac_bias) == ("joined", "separate")
    for (A_j, G_j), (A_s, G_s, bias_G), (_, n_in), has_bias in zip(joined.data, separate.data, model.shapes,
                                                                   model.has_bias, strict=True):
        assert A_s.shape == (n_in, n_in)
        assert relative_error(A_s, A_j[:n_in, :n_in]) <= RTOL
        assert relative_error(G_s, G_j) <= RTOL
        assert (bias_G is None) == (not has_bias)
    J, S = joined.to_dense(), separate.to_dense()
    for l in range(model.n_layers):
        assert relative_error(layer_parts(model, S, l)[0], layer_parts(model, J, l)[0]) <= RTOL


@pytest.mark.parametrize("estimator", KFAC_ESTIMATORS)
@given(case=models_and_data(max_width=7))
def test_both_bias_blocks_are_the_exact_bias_block_for_any_n(estimator, case):
    model, lik, x, y = case
    joined, separate = both(model, lik, x, y, estimator)
    block = er.fisher(model, lik, x, y, estimator, "full", **kw(estimator)).data  # same labels for mc (same seed)
    J, S = joined.to_dense(), separate.to_dense()
    for l in range(model.n_layers):
        exact_bias = layer_parts(model, block, l)[1]
        if exact_bias is None:
            continue
        assert relative_error(layer_parts(model, S, l)[1], exact_bias) <= RTOL
        assert relative_error(layer_parts(model, J, l)[1], exact_bias) <= RTOL


@given(case=models_and_data(max_width=7))
def test_joined_minus_separate_is_the_cross_term_g_kron_mean_input(case):
    model, lik, x, y = case
    joined, separate = both(model, lik, x, y, "exact")
    J, S = joined.to_dense(), separate.to_dense()
    _, cache = model.forward(x)
    scale = np.abs(J).max()
    for l, (_, G) in enumerate(joined.data):
        cross_J, cross_S = layer_parts(model, J, l)[2], layer_parts(model, S, l)[2]
        if cross_J is None:
            continue
        mean_a = cache.inputs[l].mean(axis=0)
        # W-b entry (o i, o') = G[o, o'] mean a_i  (independently of A's last column)
        expected = np.einsum("op,i->oip", G, mean_a).reshape(cross_J.shape)
        assert np.abs(cross_J - expected).max() <= RTOL * scale
        assert not np.any(cross_S)
    # Off the cross terms the two dense matrices are the same.
    D = J - S
    for l in range(model.n_layers):
        if model.bias_slices[l] is not None:
            w, b = model.weight_slices[l], model.bias_slices[l]
            D[w, b] = D[b, w] = 0
    assert np.abs(D).max() <= RTOL * scale


@pytest.mark.parametrize("estimator", KFAC_ESTIMATORS)
@given(case=models_and_data(n=1, max_width=7))
def test_one_example_joined_is_exact_separate_is_exact_without_cross_terms(estimator, case):
    model, lik, x, y = case
    joined, separate = both(model, lik, x, y, estimator)
    block = er.fisher(model, lik, x, y, estimator, "block", **kw(estimator)).to_dense()
    assert relative_error(joined.to_dense(), block) <= RTOL
    zeroed = block.copy()
    for w, b in zip(model.weight_slices, model.bias_slices, strict=True):
        if b is not None:
            zeroed[w, b] = zeroed[b, w] = 0
    assert relative_error(separate.to_dense(), zeroed) <= RTOL


@given(case=models_and_data(max_width=7), seed=st.integers(0, 99))
def test_separate_matvec_and_diagonal_are_the_dense_block(case, seed):
    """Naive twin of the separate matvec/diagonal: to_dense, built by np.kron and block_diag."""
    model, lik, x, y = case
    F = er.fisher(model, lik, x, y, "exact", "kfac", kfac_bias="separate")
    dense = F.to_dense()
    v = np.random.default_rng(seed).standard_normal((model.n_params, 3))
    assert relative_error(F.matvec(v), dense @ v) <= RTOL
    assert relative_error(F.matvec(v[:, 0]), dense @ v[:, 0]) <= RTOL
    assert relative_error(F.diagonal, np.diagonal(dense)) <= RTOL
    # The dense weight block entry by entry from its definition G[o, o'] A[i, i'].
    for l, (A, G, _) in enumerate(F.data):
        w = model.weight_slices[l]
        n_out, n_in = model.shapes[l]
        expected = np.einsum("op,ij->oipj", G, A).reshape(n_out * n_in, n_out * n_in)
        assert np.array_equal(dense[w, w], expected)


@pytest.mark.parametrize("kfac_bias", ["joined", "separate"])
def test_save_load_round_trip_both_conventions(tmp_path, kfac_bias):
    model = er.MLP.random([3, 4, 2], "tanh", bias=[True, False], rng=0)
    x = np.random.default_rng(1).standard_normal((5, 3))
    y = np.array([0, 1, 1, 0, 1])
    F = er.fisher(model, er.Categorical(), x, y, "exact", "kfac", kfac_bias=kfac_bias)
    F.save(tmp_path / "F.npz")
    keys = set(np.load(tmp_path / "F.npz").files)
    factors = {"kfac.0.A", "kfac.0.G", "kfac.2.A", "kfac.2.G"}
    assert keys - factors == {"__estimator__", "__structure__", "__param_names__", "__n__", "__kfac_bias__"} | (
        {"kfac.0.bias_G"} if kfac_bias == "separate" else set())
    assert str(np.load(tmp_path / "F.npz")["__kfac_bias__"]) == kfac_bias
    G = Curvature.load(tmp_path / "F.npz", model)
    assert (G.structure, G.kfac_bias, G.estimator, G.n) == ("kfac", kfac_bias, "exact", 5)
    np.testing.assert_array_equal(G.to_dense(), F.to_dense())
    assert np.load(tmp_path / "F.npz")["kfac.0.A"].shape == ((4, 4) if kfac_bias == "joined" else (3, 3))


def test_a_file_without_the_convention_key_is_read_by_its_keys(tmp_path):
    """Files written before '__kfac_bias__' existed are joined; '.bias_G' keys mean separate."""
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = np.random.default_rng(1).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    for kfac_bias in ("joined", "separate"):
        arrays = er.fisher(model, er.Categorical(), x, y, "exact", "kfac", kfac_bias=kfac_bias).to_arrays()
        del arrays["__kfac_bias__"]
        assert Curvature.load(_save(tmp_path / f"{kfac_bias}.npz", arrays), model).kfac_bias == kfac_bias


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("keep_convention_key", "edit", "message"), [
    (True, {"__kfac_bias__": np.array("separate")}, r"kfac\.0\.A' \(3, 3\).*'separate'"),
    (True, {"__kfac_bias__": np.array("both")}, r"'__kfac_bias__': expected one of \['joined', 'separate'\]"),
    (False, {"kfac.0.bias_G": np.eye(4)}, r"kfac\.0\.A' \(3, 3\)"),  # a bias_G key means separate
    (True, {"kfac.0.bias_G": np.eye(4)}, r"unknown keys \['kfac\.0\.bias_G'\]"),  # not silently ignored
    (True, {"kfac.0.extra": np.eye(4)}, r"unknown keys \['kfac\.0\.extra'\]"),
])
def test_inconsistent_kfac_files_are_refused_by_key(tmp_path, keep_convention_key, edit, message):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = np.random.default_rng(1).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    arrays = er.fisher(model, er.Categorical(), x, y, "exact", "kfac").to_arrays()
    if not keep_convention_key:
        del arrays["__kfac_bias__"]
    arrays.update(edit)
    with pytest.raises(ValueError, match=message):
        Curvature.load(_save(tmp_path / "F.npz", arrays), model)


def test_a_separate_file_needs_the_bias_block_of_every_biased_layer(tmp_path):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = np.random.default_rng(1).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    arrays = er.fisher(model, er.Categorical(), x, y, "exact", "kfac", kfac_bias="separate").to_arrays()
    del arrays["kfac.2.bias_G"]
    with pytest.raises(ValueError, match=r"'kfac\.2\.bias_G' \(2, 2\) expected: layer '2' has a bias"):
        Curvature.load(_save(tmp_path / "F.npz", arrays), model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"structure": "diag", "kfac_bias": "separate"}, "kfac_bias: only used by structure='kfac'"),
    ({"structure": "kfac", "kfac_bias": "both"}, r"kfac_bias: expected one of \['joined', 'separate'\], got 'both'"),
    ({"structure": "kfac", "kfac_bias": 1}, "kfac_bias: expected one of"),
])
def test_bad_kfac_bias_is_refused_by_name(kwargs, message):
    model = er.MLP.random([3, 2], rng=0)
    with pytest.raises(ValueError, match=message):
        er.fisher(model, er.Categorical(), np.ones((2, 3)), np.zeros(2, int), "exact", **kwargs)
    with pytest.raises(ValueError, match=message):
        FisherAccumulator(model, er.Categorical(), "exact", **kwargs)


def test_accumulators_of_different_conventions_do_not_merge():
    model = er.MLP.random([3, 2], rng=0)
    a = FisherAccumulator(model, er.Categorical(), "exact", "kfac", kfac_bias="joined")
    b = FisherAccumulator(model, er.Categorical(), "exact", "kfac", kfac_bias="separate")
    with pytest.raises(ValueError, match="kfac_bias"):
        a.merge(b)


def test_the_default_is_joined_and_merge_then_result_gives_separate_bias_blocks():
    model = er.MLP.random([3, 4, 2], rng=0)
    x, y = np.random.default_rng(2).standard_normal((6, 3)), np.array([0, 1, 1, 0, 1, 0])
    assert er.fisher(model, er.Categorical(), x, y, "exact", "kfac").kfac_bias == "joined"
    a = FisherAccumulator(model, er.Categorical(), "exact", "kfac", kfac_bias="separate").update(x[:2], y[:2])
    b = FisherAccumulator(model, er.Categorical(), "exact", "kfac", kfac_bias="separate").update(x[2:], y[2:])
    merged = a.merge(b).result()
    whole = er.fisher(model, er.Categorical(), x, y, "exact", "kfac", kfac_bias="separate")
    for (A, G, bias_G), (A1, G1, bias_G1) in zip(merged.data, whole.data, strict=True):
        assert relative_error(A, A1) <= RTOL and relative_error(G, G1) <= RTOL
        assert relative_error(bias_G, bias_G1) <= RTOL
        assert bias_G is not G  # its own array: editing one block does not edit the other
