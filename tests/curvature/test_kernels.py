"""Every fast kernel of ewc_ref.curvature.kernels against its naive twin, on Hypothesis-drawn shapes.

Tolerances (Higham, "Accuracy and Stability of Numerical Algorithms", section 3.1: a sum of m
products computed in any order has absolute error <= gamma_m sum |terms|, gamma_m ~ m u):

* fill_per_sample_grads: each entry is ONE product (or a copy), so the numba kernel and the
  NumPy broadcast are bit-identical: compared with array_equal.
* Gram matrices and KFAC factors: |fast - naive| <= 2 m u (|G|^T |G|) elementwise, with m the
  number of rows summed and u the unit round-off of the dtype (2^-53 float64, 2^-24 float32);
  the factor 2 covers both computations' errors. This bound holds for any summation order
  (BLAS blocking, einsum) and for both dtypes, so nothing is loosened for float32.
* Diagonals: sums of non-negative terms, so the same bound is relative to the value itself:
  |fast - naive| <= 4 m u |naive| (each term is itself a product of up to three roundings).
* Whole accumulator (fast path vs the original NumPy, naive.outer_sums_naive): normwise relative error
  1e-12 in float64 (observed ~1e-16), 1e-5 in float32 (~50 u for the hundreds of
  operations of a small network's forward and backward pass before the sums).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ewc_ref.curvature import kernels
from ewc_ref.curvature.accumulator import FisherAccumulator
from ewc_ref.curvature.estimators import output_vectors
from ewc_ref.curvature.naive import outer_sums_naive
from ewc_ref.strategies import models_and_data
from ewc_ref.verify.gradcheck import relative_error

DTYPES = [np.float64, np.float32]



@pytest.fixture(autouse=True)
def _numba_for_any_size(monkeypatch):
    """The kernels run in numba whatever the array size (unless EWC_REF_NO_NUMBA), so the small
    arrays of these tests exercise the compiled loops (kernels.NUMBA_MIN_SIZE)."""
    monkeypatch.setattr(kernels, "NUMBA_MIN_SIZE", 0)


def test_numba_is_loaded_only_for_big_arrays_or_when_already_loaded(monkeypatch):
    import sys

    monkeypatch.setattr(kernels, "USE_NUMBA", True)
    monkeypatch.setattr(kernels, "NUMBA_MIN_SIZE", 100)
    assert kernels.numba_pays(100)
    assert kernels.numba_pays(99) == ("numba" in sys.modules)
    monkeypatch.setitem(sys.modules, "numba", sys.modules.get("numba", object()))
    assert kernels.numba_pays(1)  # once loaded, a kernel costs nothing more to use
    monkeypatch.setattr(kernels, "USE_NUMBA", False)
    assert not kernels.numba_pays(10**9)  # EWC_REF_NO_NUMBA wins

def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


@st.composite
def layer_factors(draw, max_k=4, max_n=9, max_out=6, max_in=7):
    """(delta : (K, n, out), a : (n, in), weight, has_bias, dtype) of one Linear layer."""
    k, n = draw(st.integers(1, max_k)), draw(st.integers(1, max_n))
    n_out, n_in = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    delta = rng.standard_normal((k, n, n_out)).astype(dtype)
    if draw(st.booleans()):  # a strided delta, as np.moveaxis gives for the exact Fisher
        delta = np.moveaxis(np.ascontiguousarray(np.moveaxis(delta, 0, -1)), -1, 0)
    a = rng.standard_normal((n, n_in)).astype(dtype)
    weight = draw(st.sampled_from([1.0, 0.5, 1.0 / 3.0]))
    return delta, a, weight, draw(st.booleans()), dtype


@given(models_and_data(max_width=8, dtype=np.float64) | models_and_data(max_width=8, dtype=np.float32),
       st.integers(1, 4), st.booleans())
def test_stacked_backward_matches_the_model_backward(case, k, strided):
    model, _, x, _ = case
    f, cache = model.forward(x)
    df = np.random.default_rng(k).standard_normal((k, *f.shape)).astype(model.dtype)
    if strided:  # the exact Fisher passes np.moveaxis(Q, -1, 0), not C-contiguous
        df = np.moveaxis(np.ascontiguousarray(np.moveaxis(df, 0, -1)), -1, 0)
    fast, naive = kernels.backward_deltas(model.weights, cache.activation_caches, df), model.backward_deltas(cache, df)
    # Each layer differs from the next by one GEMM of width <= 8 and an elementwise product;
    # errors compound over <= 4 layers: 1e-12 (float64) / 1e-5 (float32) normwise, ~ 100 u.
    rtol = 1e-12 if model.dtype == np.float64 else 1e-5
    for a, b in zip(fast, naive, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative_error(a, b) <= rtol


@given(models_and_data(max_width=8, dtype=np.float64) | models_and_data(max_width=8, dtype=np.float32),
       st.integers(1, 4), st.sampled_from([1.0, 0.5]))
def test_squared_delta_sums_match_the_squares_of_the_backward_deltas(case, k, weight):
    model, _, x, _ = case
    f, cache = model.forward(x)
    df = np.random.default_rng(k).standard_normal((k, *f.shape)).astype(model.dtype)
    fast = kernels.squared_delta_sums(model.weights, cache.activation_caches, df, weight)
    naive = [weight * (d**2).sum(axis=0) for d in model.backward_deltas(cache, df)]
    # phi'^2 (w sum_k da^2) against w sum_k (phi' da)^2: the same terms, rounded in another order,
    # after the backward pass of test_stacked_backward_matches_the_model_backward (its tolerance).
    rtol = 1e-12 if model.dtype == np.float64 else 1e-5
    assert len(fast) == len(naive)
    for a, b in zip(fast, naive, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative_error(a, b) <= rtol


@given(layer_factors())
def test_diag_second_moment_matches_squared_per_example_gradients(factors):
    delta, a, weight, has_bias, dtype = factors
    fast_w, fast_b = kernels.diag_second_moment(delta, a, weight, has_bias)
    naive_w, naive_b = kernels.diag_second_moment_naive(delta, a, weight, has_bias)
    m = delta.shape[0] * delta.shape[1]
    bound = 4 * m * unit_roundoff(dtype)
    assert fast_w.dtype == dtype and fast_w.shape == naive_w.shape
    assert np.all(np.abs(fast_w - naive_w) <= bound * np.abs(naive_w))
    if has_bias:
        assert fast_b.dtype == dtype
        assert np.all(np.abs(fast_b - naive_b) <= bound * np.abs(naive_b))
    else:
        assert fast_b is None and naive_b is None


@given(layer_factors(), st.integers(0, 5), st.integers(0, 5))
def test_numba_fill_is_bit_identical_to_the_numpy_broadcast(factors, left, right):
    delta, a, _, has_bias, dtype = factors
    k, n, n_out = delta.shape
    width = left + n_out * (a.shape[1] + int(has_bias)) + right
    fast = np.full((k * n, width), np.nan, dtype=dtype)
    naive = fast.copy()
    kernels.fill_per_sample_grads(fast, delta, a, left, has_bias)
    kernels.fill_per_sample_grads_numpy(naive, delta, a, left, has_bias)
    assert np.array_equal(fast, naive, equal_nan=True)  # the columns outside the block stay NaN
    assert np.isnan(fast[:, :left]).all() and np.isnan(fast[:, width - right :]).all()
    # the block holds delta_n a_n^T row-major, then delta_n: the definition, written out
    block = fast[:, left : width - right].reshape(k, n, -1)
    expected = np.einsum("kno,ni->knoi", delta, a).reshape(k, n, -1)
    if has_bias:
        expected = np.concatenate([expected, delta], axis=-1)
    assert np.array_equal(block, expected)


def test_numba_fill_is_used_unless_disabled():
    assert kernels.USE_NUMBA == (os.environ.get("EWC_REF_NO_NUMBA", "") not in ("1", "true", "yes", "on"))
    if kernels.USE_NUMBA:
        fill = kernels._numba_fill()
        assert len(fill.signatures) == 2  # float64 and float32 compiled eagerly, never per call


@given(st.integers(1, 30), st.integers(1, 12), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_gram_matrices_match_the_sum_of_outer_products(m, p, dtype, seed):
    G = np.random.default_rng(seed).standard_normal((m, p)).astype(dtype)
    naive = kernels.gram_naive(G)
    bound = 2 * m * unit_roundoff(dtype) * (np.abs(G).T @ np.abs(G))
    for fast in (kernels.gram(G), kernels.gram_syrk(G)):
        assert fast.dtype == dtype
        assert np.array_equal(fast, fast.T)  # one triangle computed, mirrored exactly
        assert np.all(np.abs(fast - naive) <= bound)


@given(st.integers(1, 30), st.integers(1, 12), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.booleans())
def test_in_place_gram_update_adds_to_the_lower_triangle(m, p, dtype, seed, strided):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((m, p)).astype(dtype)
    if strided:  # a Fortran-ordered G: the strips are views with other strides
        G = np.asfortranarray(G)
    start = rng.standard_normal((p, p)).astype(dtype)
    start = start + start.T  # a running sum is symmetric
    total = start.copy()
    kernels.gram_update(total, G, block=4)  # strips of 4 rows: diagonal blocks and strips both exercised
    expected = start + kernels.gram_naive(G)
    bound = 2 * m * unit_roundoff(dtype) * (np.abs(G).T @ np.abs(G)) + 2 * unit_roundoff(dtype) * np.abs(start)
    lower = np.tril_indices(p)
    assert total.dtype == dtype
    assert np.all(np.abs(total - expected)[lower] <= bound[lower])
    kernels.mirror_lower(total, block=3)  # blocks of 3 rows: diagonal blocks and strips both exercised
    assert np.array_equal(total, total.T)
    assert np.all(np.abs(total - expected) <= bound + bound.T)


@given(layer_factors())
def test_kfac_factors_match_the_outer_product_sums(factors):
    delta, a, weight, has_bias, dtype = factors
    fast_a, fast_b = kernels.kfac_factors(delta, a, weight, has_bias)
    naive_a, naive_b = kernels.kfac_factors_naive(delta, a, weight, has_bias)
    u = unit_roundoff(dtype)
    abar = np.concatenate([a, np.ones((a.shape[0], 1), dtype)], axis=1) if has_bias else a
    d = np.abs(delta.reshape(-1, delta.shape[-1]))
    assert fast_a.dtype == fast_b.dtype == dtype
    assert np.all(np.abs(fast_a - naive_a) <= 2 * a.shape[0] * u * (np.abs(abar).T @ np.abs(abar)))
    assert np.all(np.abs(fast_b - naive_b) <= 3 * d.shape[0] * u * weight * (d.T @ d))


@given(models_and_data(max_width=8, dtype=np.float64) | models_and_data(max_width=8, dtype=np.float32),
       st.sampled_from(["empirical", "exact", "mc", "pred", "ggn"]),
       st.sampled_from(["diag", "full", "block", "kfac-joined", "kfac-separate"]))
def test_accumulator_fast_path_matches_the_original_numpy(case, estimator, structure):
    model, lik, x, y = case
    structure, _, kfac_bias = structure.partition("-")
    kfac_bias = kfac_bias or None
    acc = FisherAccumulator(model, lik, estimator, structure, samples=2 if estimator == "mc" else None,
                            rng=5 if estimator == "mc" else None,
                            kfac_bias=kfac_bias)
    f, cache = model.forward(x)
    r, weight = output_vectors(lik, f, y, estimator, 2, np.random.default_rng(5))
    fast = acc._outer_sums(cache, r, weight)
    naive = outer_sums_naive(model, structure, cache, r, weight, kfac_bias=kfac_bias or "joined")
    rtol = 1e-12 if model.dtype == np.float64 else 1e-5
    pairs = zip(fast, naive, strict=True) if isinstance(fast, list) else [(fast, naive)]
    for a, b in pairs:
        for fa, nb in zip(a, b, strict=True) if isinstance(a, tuple) else [(a, b)]:
            # float32 stays float32 on the fast path, unless the likelihood promoted r itself
            assert fa.dtype == np.result_type(r, model.dtype) == nb.dtype
            assert relative_error(fa, nb) <= rtol



@pytest.mark.parametrize("structure", ["diag", "full", "block", "kfac"])
@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
def test_float32_mc_fisher_stays_float32_in_every_structure(likelihood, structure):
    """Found by the thorough profile: gaussian labels drawn as f + sigma * float64 noise made a
    float32 model's mc Fisher float64 for full/block/kfac but float32 for diag."""
    import ewc_ref as er

    model = er.MLP.random([3, 4, 2], "tanh", rng=0, dtype=np.float32)
    lik = er.get_likelihood(likelihood, 1.0 if likelihood == "gaussian" else None)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    y = lik.most_probable(model.predict(x))
    assert lik.sample(model.predict(x), np.random.default_rng(2), 2).dtype.kind in "iu" or likelihood != "categorical"
    if likelihood != "categorical":
        assert lik.sample(model.predict(x), np.random.default_rng(2), 2).dtype == np.float32
    F = er.fisher(model, lik, x, y, "mc", structure, samples=2, rng=3)
    parts = F.data if isinstance(F.data, list) else [F.data]
    assert all(np.asarray(p).dtype == np.float32 for part in parts for p in (part if isinstance(part, tuple) else [part]))


SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ewc_ref as er
    from ewc_ref.curvature import kernels
    from ewc_ref.model.likelihoods import Categorical
    model = er.MLP.random([5, 7, 4], activation="tanh", rng=3)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((23, 5)), rng.integers(0, 4, 23)
    out = {"use_numba": np.array(kernels.USE_NUMBA)}
    for structure in ("full", "block", "diag", "kfac"):
        F = er.fisher(model, Categorical(), x, y, "exact", structure, chunk_size=6)
        out[structure] = F.to_dense()
    np.savez(sys.argv[1], **out)
    """
)


@pytest.mark.parametrize("flag", ["1", ""])
def test_numpy_fallback_selected_by_environment_gives_identical_results(tmp_path, flag):
    """EWC_REF_NO_NUMBA=1 in a fresh process swaps the numba kernels for their NumPy twins, and
    every structure comes out bit-identical (fill_per_sample_grads only multiplies pairs of
    numbers; gated_square_sum rounds as its twin, and einsum sums over k in order here)."""
    paths = {}
    for name, value in (("run", flag), ("reference", "")):
        env = dict(os.environ, EWC_REF_NO_NUMBA=value)
        paths[name] = tmp_path / f"{name}.npz"
        subprocess.run([sys.executable, "-c", SCRIPT, str(paths[name])], env=env, check=True, timeout=120)
    run, reference = np.load(paths["run"]), np.load(paths["reference"])
    assert bool(run["use_numba"]) == (flag != "1")
    assert bool(reference["use_numba"])
    for structure in ("full", "block", "diag", "kfac"):
        assert np.array_equal(run[structure], reference[structure]), structure


@given(layer_factors(max_k=11, max_n=9, max_out=9), st.booleans(), st.sampled_from(["relu", "tanh"]))
def test_gated_square_sum_matches_its_numpy_twin(factors, gate, activation):
    delta, _, weight, _, dtype = factors
    da = np.ascontiguousarray(delta)  # as the stacked GEMM returns it
    rng = np.random.default_rng(da.shape[0])
    z = rng.standard_normal(da.shape[1:]).astype(dtype)
    # relu's phi' is 0/1, tanh's any value in (0, 1]: both kinds of gate
    derivative = (z > 0).astype(dtype) if activation == "relu" else (1 - np.tanh(z) ** 2).astype(dtype)
    fast_da, naive_da = da.copy(), da.copy()
    fast = kernels.gated_square_sum(fast_da, derivative, weight, gate)
    naive = kernels.gated_square_sum_numpy(naive_da, derivative, weight, gate)
    assert fast.dtype == naive.dtype == dtype and fast.shape == naive.shape == da.shape[1:]
    # The same roundings; the order over k is the twin's unless einsum reorders it (it does when
    # da_k are single numbers, n * m = 1): a sum of K squares, then two products, both ways.
    k = da.shape[0]
    assert np.all(np.abs(fast - naive) <= 2 * (k + 2) * unit_roundoff(dtype) * np.abs(naive))
    # da is gated in place exactly when asked, one product per entry
    assert np.array_equal(fast_da, naive_da)
    assert np.array_equal(fast_da, da * derivative if gate else da)
    # and both are the definition w sum_k (phi' da_k)^2, to the bound of the module docstring
    definition = weight * ((derivative * da) ** 2).sum(axis=0)
    assert np.all(np.abs(fast - definition) <= 4 * da.shape[0] * unit_roundoff(dtype) * np.abs(definition))


def test_gated_square_sum_falls_back_to_the_twin_for_strided_input():
    da = np.random.default_rng(0).standard_normal((3, 4, 5))
    strided = np.moveaxis(np.ascontiguousarray(np.moveaxis(da, 0, -1)), -1, 0)  # not C-contiguous
    derivative = np.linspace(0.1, 1.0, 20).reshape(4, 5)
    expected = kernels.gated_square_sum_numpy(strided, derivative, 0.5, False)
    assert np.array_equal(kernels.gated_square_sum(strided, derivative, 0.5, False), expected)
    gated = np.moveaxis(np.ascontiguousarray(np.moveaxis(da, 0, -1)), -1, 0)  # a fresh strided copy
    assert not gated.flags.c_contiguous
    kernels.gated_square_sum(gated, derivative, 0.5, True)
    assert np.array_equal(gated, da * derivative)  # gated in place through the twin
    if kernels.USE_NUMBA:
        assert len(kernels._numba_gated_square_sum().signatures) == 2  # float64 and float32, compiled once
