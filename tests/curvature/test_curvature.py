"""Every Fisher estimator, proven equal where mathematics says so and different where it does not.

Tolerances. Identities between float64 computations that differ only in summation order
(fast vs naive, full vs diag, chunked vs one-shot): 1e-10 relative, normwise per matrix; the
observed residuals are ~1e-15 (see the closing note of issue [B]). Gauss-Hermite quadrature
is exact for the quadratic integrand g g^T, so enumeration identities hold to round-off too.
Monte Carlo: per-entry z-scores against the CLT standard error from the samples, |z| <= 5
with a fixed seed (a 5-sigma excursion has probability ~6e-7 per entry).
"""

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ewc_ref as er
from ewc_ref.curvature.estimators import ESTIMATORS, OUTER_PRODUCT_ESTIMATORS
from ewc_ref.curvature.naive import expected_outer_product, naive_fisher, naive_labels, project
from ewc_ref.curvature.result import Curvature
from ewc_ref.curvature.structures import KFAC_BIASES, STRUCTURES
from ewc_ref.strategies import LIKELIHOOD_NAMES, models_and_data
from ewc_ref.verify.gradcheck import relative_error

RTOL = 1e-10
FIXTURES = Path(__file__).parents[1] / "fixtures" / "torch"


def close(a, b, rtol=RTOL):
    if isinstance(a, list | tuple):  # block: [P_l x P_l]; kfac: [(A_l, G_l)] or [(A_l, G_l, Gb_l or None)]
        return len(a) == len(b) and all(close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    return relative_error(a, b) <= rtol


def kwargs_for(estimator, n, draw_batch=None):
    if estimator == "mc":
        return {"samples": 3, "rng": 11}
    if estimator == "batched":
        return {"batch_size": draw_batch or max(1, n // 2)}
    return {}


# --------------------------------------------------------------------------- 4g: naive twins
# Every estimator x structure x likelihood the code accepts, named by pytest (so a report says
# which one broke), with Hypothesis drawing only the network, the data, the chunking and the
# batch size inside each case. The tables are the code's own: adding an estimator or a
# structure adds rows here, and a row without a naive twin fails instead of being skipped.
KFAC_ESTIMATORS = OUTER_PRODUCT_ESTIMATORS  # kfac is defined for per-example outer products only
ACCEPTED = [(e, s) for e in ESTIMATORS for s in STRUCTURES if s != "kfac" or e in KFAC_ESTIMATORS]
REFUSED = [(e, s) for e in ESTIMATORS for s in STRUCTURES if (e, s) not in ACCEPTED]
# Each parametrized case draws few examples (the product has ~90 cases); the thorough profile
# draws proportionally more.
PER_CASE = settings(max_examples=max(5, settings.default.max_examples // 8))
SMALL_NETS = {"max_layers": 3, "max_width": 6}  # P <= ~100: naive loops, P HVPs and P^2 residuals stay fast


def _cases():
    for estimator, structure in ACCEPTED:
        for likelihood in LIKELIHOOD_NAMES:
            if estimator == "mc":
                extras = [("samples", 1), ("samples", 3)]
            elif estimator == "batched":
                extras = [("last_batch", "full"), ("last_batch", "partial")]
            else:
                extras = [(None, None)]
            for extra in extras:
                for kfac_bias in (KFAC_BIASES if structure == "kfac" else (None,)):
                    yield pytest.param(estimator, structure, likelihood, extra, kfac_bias,
                                       id=f"{estimator}-{structure}" + (f"-{kfac_bias}" if kfac_bias else "")
                                       + f"-{likelihood}" + (f"-{extra[0]}={extra[1]}" if extra[0] else ""))


def naive_kfac(model, lik, x, y, estimator, samples=1, rng=None, kfac_bias="joined"):
    """[(A_l, G_l)] by a loop over examples: A_l = 1/N sum_n abar_n abar_n^T (abar = [a, 1] with a
    bias and kfac_bias='joined', else a; 'separate' appends the bias block G_l, or None) and
    G_l = 1/N sum_n sum_k w_k delta_nk delta_nk^T, with delta_nk the back-propagated errors of
    the labels naive_fisher uses (drawn from `rng` example by example for mc) or, for
    exact/ggn, D_ln^T Lambda_n D_ln with D_ln : (C, out_l) = d f_n / d z_l from unit vectors."""
    n, c = x.shape[0], model.n_outputs
    extra = [int(b and kfac_bias == "joined") for b in model.has_bias]
    A = [np.zeros((i + e, i + e)) for (_, i), e in zip(model.shapes, extra, strict=True)]
    G = [np.zeros((o, o)) for o, _ in model.shapes]
    for i in range(n):
        f, cache = model.forward(x[i : i + 1])
        if estimator in ("exact", "ggn"):
            D = model.backward_deltas(cache, np.eye(c)[:, None, :])  # per layer (C, 1, out_l)
            lam = lik.hessian(f)[0]
            terms = [d[:, 0].T @ lam @ d[:, 0] for d in D]
        else:
            labels, weight = naive_labels(lik, f, y[i : i + 1], estimator, samples, rng)  # as naive_fisher
            terms = [0.0] * model.n_layers
            for label in labels:
                for l, d in enumerate(model.backward_deltas(cache, lik.grad(f, label))):
                    terms[l] = terms[l] + weight * np.outer(d[0], d[0])
        for l in range(model.n_layers):
            a = cache.inputs[l][0]
            if model.has_bias[l] and kfac_bias == "joined":
                a = np.append(a, 1.0)
            A[l] += np.outer(a, a)
            G[l] += terms[l]
    if kfac_bias == "joined":
        return [(a / n, g / n) for a, g in zip(A, G, strict=True)]
    return [(a / n, g / n, g / n if bias else None) for a, g, bias in zip(A, G, model.has_bias, strict=True)]


def naive_hessian(model, lik, x, y):
    """GGN from the materialised Jacobian + the residual by the second-order forward pass:
    neither uses the R-backward pass of the fast Hessian (tests/curvature/test_hessian.py)."""
    J = model.jacobian(x)
    ggn = np.einsum("ncp,ncd,ndq->pq", J, lik.hessian(model.predict(x)), J) / x.shape[0]
    return ggn + er.hessian_residual(model, lik, x, y)


@pytest.mark.parametrize(("estimator", "structure", "likelihood", "extra", "kfac_bias"), list(_cases()))
@PER_CASE
@given(data=st.data())
def test_every_estimator_matches_its_naive_per_example_loop(estimator, structure, likelihood, extra, kfac_bias, data):
    n_rows = st.integers(3, 8) if extra == ("last_batch", "partial") else st.integers(1, 8)
    model, lik, x, y = data.draw(models_and_data(n=n_rows, likelihood_names=(likelihood,), **SMALL_NETS), label="case")
    n = x.shape[0]
    chunk_size = data.draw(st.integers(1, n), label="chunk_size")
    kw, naive_kw = {}, {}
    if estimator == "mc":
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        kw = {"samples": extra[1], "rng": seed}
        naive_kw = {"samples": extra[1], "rng": np.random.default_rng(seed)}  # the same labels
    if estimator == "batched":
        # B from 1..N with N % B == 0 (every minibatch full) or != 0 (a partial last minibatch).
        partial = extra[1] == "partial"
        batch_size = data.draw(st.sampled_from([b for b in range(1, n + 1) if (n % b != 0) == partial]), label="B")
        assert (n % batch_size != 0) == partial
        kw = naive_kw = {"batch_size": batch_size}
    fast = er.fisher(model, lik, x, y, estimator, structure, chunk_size=chunk_size, kfac_bias=kfac_bias, **kw)
    if structure == "kfac":
        slow = naive_kfac(model, lik, x, y, estimator, kfac_bias=kfac_bias, **naive_kw)
    else:
        dense = naive_hessian(model, lik, x, y) if estimator == "hessian" else naive_fisher(model, lik, x, y, estimator, **naive_kw)
        slow = project(dense, model, structure)
    assert (fast.estimator, fast.structure, fast.n, fast.kfac_bias) == (estimator, structure, n, kfac_bias)
    assert close(fast.data, slow)


@pytest.mark.parametrize(("estimator", "structure"), REFUSED)
def test_structures_an_estimator_does_not_define_are_refused(estimator, structure):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = np.ones((5, 3)), np.zeros(5, int)
    kw = {"batch_size": 2} if estimator == "batched" else {}
    with pytest.raises(ValueError, match="structure: 'kfac' is defined for per-example outer products"):
        er.fisher(model, er.Categorical(), x, y, estimator, structure, **kw)


def test_the_parametrized_table_is_every_combination():
    """Accepted and refused partition ESTIMATORS x STRUCTURES; kfac is refused exactly for the
    estimators that are not per-example outer products (batched, hessian)."""
    assert sorted(ACCEPTED + REFUSED) == sorted(itertools.product(ESTIMATORS, STRUCTURES))
    assert REFUSED == [("batched", "kfac"), ("hessian", "kfac")]
    cases = [case.values for case in _cases()]
    assert {c[:3] for c in cases} == {(e, s, lik) for (e, s) in ACCEPTED for lik in LIKELIHOOD_NAMES}
    assert {c[4] for c in cases if c[1] == "kfac"} == set(KFAC_BIASES)
    extras = {e: {c[3] for c in cases if c[0] == e} for e in ESTIMATORS}
    assert extras["mc"] == {("samples", 1), ("samples", 3)}
    assert extras["batched"] == {("last_batch", "full"), ("last_batch", "partial")}


# --------------------------------------------------------------------------- 4a: Bartlett
@given(models_and_data(n=1, max_width=6, labels="model").filter(lambda c: c[0].n_outputs <= 5))
def test_bartlett_identity_by_enumeration(case):
    """E_{y~p}[g g^T] (all labels, exact weights) == J^T Lambda J, per example."""
    model, lik, x, y = case
    enumerated = expected_outer_product(model, lik, x)
    exact = er.fisher(model, lik, x, y, "exact", "full").data
    ggn = er.fisher(model, lik, x, y, "ggn", "full").data
    assert close(exact, enumerated)
    assert close(ggn, enumerated)


# --------------------------------------------------------------------------- 4b: CLT
CLT_CASES = [("categorical", "tanh", [4, 6, 3]), ("bernoulli", "sigmoid", [3, 5, 2]), ("gaussian", "relu", [3, 5, 2])]


@pytest.mark.parametrize(("likelihood", "activation", "sizes"), CLT_CASES)
def test_empirical_fisher_with_model_labels_converges_to_the_expected_hessian(likelihood, activation, sizes):
    """F_emp(y ~ model) -> E[F_emp] = exact Fisher = E_y[Hessian] (Bartlett), at rate 1/sqrt(S).

    Each of S label sets gives one empirical Fisher; their mean must sit within 5 standard
    errors of the exact Fisher entrywise. For the rate, the root-mean-square deviation over
    10 independent replicates must shrink ~4x from S = 40 to 16 S = 640 (one replicate's
    ratio is too noisy: heavy-tailed g g^T entries).
    """
    lik = er.get_likelihood(likelihood, 0.8 if likelihood == "gaussian" else None)
    model = er.MLP.random(sizes, activation, rng=3)
    x = np.random.default_rng(4).standard_normal((6, sizes[0]))
    exact = er.fisher(model, lik, x, lik.most_probable(model.predict(x)), "exact", "full").data
    rng = np.random.default_rng(5)
    f = model.predict(x)

    def draws(S):
        return np.stack([er.fisher(model, lik, x, lik.sample(f, rng), "empirical", "full").data for _ in range(S)])

    sample = draws(1600)
    stderr = sample.std(axis=0, ddof=1) / np.sqrt(len(sample))
    mask = stderr > 1e-12 * np.abs(exact).max()
    z = (sample.mean(axis=0) - exact)[mask] / stderr[mask]
    assert np.all(np.abs(z) <= 5), np.abs(z).max()

    def rms_deviation(S, replicates=10):
        return np.sqrt(np.mean([np.sum((draws(S).mean(0) - exact) ** 2) for _ in range(replicates)]))

    ratio = rms_deviation(640) / rms_deviation(40)
    assert 0.15 < ratio < 0.4, ratio  # expected 1/sqrt(16) = 0.25


def test_mc_estimator_is_unbiased_within_clt_bound():
    lik = er.Categorical()
    model = er.MLP.random([4, 6, 3], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((8, 4))
    y = np.zeros(8, dtype=int)
    exact = er.fisher(model, lik, x, y, "exact", "diag").flat
    runs = np.stack([er.fisher(model, lik, x, y, "mc", "diag", samples=20, rng=seed).flat for seed in range(200)])
    z = (runs.mean(0) - exact) / (runs.std(0, ddof=1) / np.sqrt(len(runs)))
    assert np.all(np.abs(z) <= 5), np.abs(z).max()


# --------------------------------------------------------------------------- 4c: counter-case
def test_empirical_fisher_is_not_the_fisher_when_labels_are_not_from_the_model():
    """A confident logistic regression that is wrong on every example: observed labels give
    g = (p - y) x with |p - y| ~ 1, the model's own labels weigh p (1 - p) ~ 0. The traces
    must differ by more than 10x, not by sampling noise."""
    w = np.array([[4.0, -3.0]])
    model = er.MLP([w], [np.array([0.5])], "identity")
    x = np.random.default_rng(0).standard_normal((40, 2))
    f = model.predict(x)
    y = (f < 0).astype(float)  # always the improbable label
    empirical = er.fisher(model, er.Bernoulli(), x, y, "empirical", "full").data
    exact = er.fisher(model, er.Bernoulli(), x, y, "exact", "full").data
    assert np.trace(empirical) > 10 * np.trace(exact)
    # Same model, labels drawn from it: the two agree in expectation (test above); here,
    # with the model's own most-probable labels, pred underestimates the Fisher instead.
    pred = er.fisher(model, er.Bernoulli(), x, y, "pred", "full").data
    assert np.trace(pred) < np.trace(exact)


# --------------------------------------------------------------------------- 4e: scaling
@given(models_and_data(n=1, max_width=6), st.integers(2, 9), st.sampled_from(["empirical", "exact", "pred", "ggn", "batched"]))
def test_copies_of_one_example_leave_every_mean_estimator_unchanged(case, copies, estimator):
    """Mean, not sum: an estimator that forgot the 1/N (or divided twice) would scale by N."""
    model, lik, x, y = case
    kw1 = {"batch_size": 1} if estimator == "batched" else {}
    kwn = {"batch_size": copies} if estimator == "batched" else {}
    one = er.fisher(model, lik, x, y, estimator, "full", **kw1).data
    many = er.fisher(model, lik, np.repeat(x, copies, 0), np.repeat(y, copies, 0), estimator, "full", **kwn).data
    assert close(many, one)


# --------------------------------------------------------------------------- 4f: consistency
@given(models_and_data(max_width=8), st.sampled_from(["empirical", "exact", "mc", "pred", "ggn", "batched"]))
def test_diag_and_blocks_are_parts_of_full(case, estimator):
    model, lik, x, y = case
    kw = kwargs_for(estimator, x.shape[0])
    full = er.fisher(model, lik, x, y, estimator, "full", **kw)
    diag = er.fisher(model, lik, x, y, estimator, "diag", **kw)
    block = er.fisher(model, lik, x, y, estimator, "block", **kw)
    assert close(diag.flat, np.diagonal(full.data))
    assert close(block.data, [full.data[s, s] for s in model.layer_slices])
    assert close(block.flat, diag.flat)


@given(models_and_data(n=1, max_width=8), st.sampled_from(["empirical", "exact", "mc", "pred", "ggn"]))
def test_kfac_is_the_exact_block_for_one_example(case, estimator):
    model, lik, x, y = case
    kw = kwargs_for(estimator, 1)
    kfac = er.fisher(model, lik, x, y, estimator, "kfac", **kw)
    block = er.fisher(model, lik, x, y, estimator, "block", **kw)
    assert close(kfac.to_dense(), block.to_dense())
    assert close(kfac.flat, block.flat)


@given(models_and_data(max_width=8))
def test_kfac_is_the_kronecker_product_of_mean_factors(case):
    """For N > 1 KFAC is NOT the block (mean of products != product of means): check the
    factors themselves against their definitions instead."""
    model, lik, x, y = case
    kfac = er.fisher(model, lik, x, y, "empirical", "kfac")
    f, cache = model.forward(x)
    deltas = model.backward_deltas(cache, lik.grad(f, y))
    for l, (A, G) in enumerate(kfac.data):
        a = cache.inputs[l]
        if model.has_bias[l]:
            a = np.hstack([a, np.ones((len(a), 1))])
        assert close(A, a.T @ a / len(a))
        assert close(G, deltas[l].T @ deltas[l] / len(a))


@given(models_and_data())
def test_batched_with_batch_size_one_is_empirical(case):
    model, lik, x, y = case
    assert close(er.fisher(model, lik, x, y, "batched", "diag", batch_size=1).flat,
                 er.fisher(model, lik, x, y, "empirical", "diag").flat)


@given(models_and_data(max_width=8), st.sampled_from(["diag", "full", "block", "kfac"]), st.data())
def test_matvec_to_dense_and_flat_agree(case, structure, data):
    model, lik, x, y = case
    F = er.fisher(model, lik, x, y, "exact", structure)
    dense = F.to_dense()
    v = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal((model.n_params, 2))
    assert close(F.matvec(v), dense @ v)
    assert close(F.matvec(v[:, 0]), dense @ v[:, 0])
    assert close(F.flat, np.diagonal(dense))
    assert np.allclose(dense, dense.T, rtol=0, atol=1e-14 * max(1.0, np.abs(dense).max()))


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


# --------------------------------------------------------------------------- torch fixtures
FIXTURE_KEYS = [
    ("empirical", "diag", "empirical_diag", {}), ("empirical", "full", "empirical_full", {}),
    ("exact", "diag", "exact_diag", {}), ("exact", "full", "exact_full", {}), ("ggn", "full", "exact_full", {}),
    ("batched", "diag", "batched_diag_b8", {"batch_size": 8}), ("batched", "full", "batched_full_b8", {"batch_size": 8}),
    ("pred", "diag", "pred_diag", {}),
]


@pytest.mark.parametrize("name", ["categorical", "gaussian", "bernoulli"])
@pytest.mark.parametrize(("estimator", "structure", "key", "kw"), FIXTURE_KEYS, ids=[k[2] + "-" + k[0] for k in FIXTURE_KEYS])
def test_matches_torch_backpack_curvlinops_fixtures(name, estimator, structure, key, kw):
    model, lik = er.load_model(FIXTURES / f"{name}_model.npz")
    x, y = er.load_data(FIXTURES / f"{name}_data.npz", model, lik)
    reference = np.load(FIXTURES / f"{name}_reference.npz")[key]
    for chunk_size in (None, 7):
        F = er.fisher(model, lik, x, y, estimator, structure, chunk_size=chunk_size, **kw)
        if np.all(reference == 0):  # gaussian 'pred': y = f, every gradient is zero
            assert np.all(F.data == 0)
        else:
            assert relative_error(F.data, reference) <= RTOL


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


# --------------------------------------------------------------------------- hessian estimator
@pytest.mark.parametrize("name", ["categorical", "gaussian", "bernoulli"])
def test_hessian_estimator_matches_torch_hessian(name):
    model, lik = er.load_model(FIXTURES / f"{name}_model.npz")
    x, y = er.load_data(FIXTURES / f"{name}_data.npz", model, lik)
    reference = np.load(FIXTURES / f"{name}_reference.npz")["hessian_full"]
    for structure in ("full", "diag", "block"):
        H = er.fisher(model, lik, x, y, "hessian", structure, chunk_size=11)
        assert close(H.data, project(reference, model, structure))


@given(models_and_data(max_layers=1, max_width=6), st.sampled_from(["full", "diag"]))
def test_linear_model_hessian_is_the_exact_fisher_for_any_labels(case, structure):
    """4d: one Linear layer (linear / logistic / softmax regression) with a canonical link:
    d^2 l / d theta^2 = J^T Lambda J exactly, since d^2 f / d theta^2 = 0, whatever y is."""
    model, lik, x, y = case
    H = er.fisher(model, lik, x, y, "hessian", structure).data
    F = er.fisher(model, lik, x, y, "exact", structure).data
    assert close(H, F)


def test_hessian_differs_from_the_fisher_for_a_hidden_layer_away_from_the_mode():
    """The counterpart of 4d: with a hidden layer and labels that do not fit, the residual
    sum_c r_c d^2 f_c is far from zero, so H != exact Fisher."""
    model = er.MLP.random([3, 5, 2], "tanh", rng=0)
    x = np.random.default_rng(1).standard_normal((20, 3))
    y = np.random.default_rng(2).integers(0, 2, 20)
    H = er.fisher(model, er.Categorical(), x, y, "hessian", "full").data
    F = er.fisher(model, er.Categorical(), x, y, "exact", "full").data
    assert relative_error(H, F) > 1e-2


def test_fisher_of_a_saturated_network_is_not_lost_to_cancellation():
    """Softmax regression with margins of 40-80 nats: every p_max rounds to 1.0, so a gradient
    built as p_y - 1 (or a Lambda diagonal as p (1 - p)) would be exactly zero there. The exact
    Fisher must match 1/N sum_n x_n x_n^T (x) Lambda_n with Lambda_n from log-space
    probabilities, and the empirical Fisher at the (most probable) observed labels must match
    1/N sum_n (x_n x_n^T) (x) (r_n r_n^T) with r_n = p_n - e_y from log space, entrywise."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    x = 2.0 * np.eye(3)[[0, 1, 2, 0, 1, 2]] + 0.1 * rng.standard_normal((6, 3))
    W = 30.0 * np.eye(3)
    model = er.MLP([W], [None], "identity")
    f = model.predict(x)
    margins = np.sort(f, axis=1)[:, -1] - np.sort(f, axis=1)[:, -2]
    assert margins.min() > 37  # fl(softmax) = 1.0 for the top class of every example
    log_p = f - logsumexp(f, axis=1, keepdims=True)
    log_q = np.array([[logsumexp(np.delete(row, i)) for i in range(3)] for row in f]) - logsumexp(f, axis=1)[:, None]
    lam = -np.exp(log_p[:, :, None] + log_p[:, None, :])
    lam[:, np.arange(3), np.arange(3)] = np.exp(log_p + log_q)
    # Weight W[c, i] is flat index 3 c + i; d f_c / d W[c', i] = delta_cc' x_i.
    reference = np.einsum("ncd,ni,nj->cidj", lam, x, x).reshape(9, 9) / len(x)
    y = np.argmax(f, axis=1)
    r = np.exp(log_p)
    r[np.arange(6), y] = -np.exp(log_q[np.arange(6), y])
    empirical_reference = np.einsum("nc,nd,ni,nj->cidj", r, r, x, x).reshape(9, 9) / len(x)
    for estimator, expected in (("exact", reference), ("empirical", empirical_reference)):
        F = er.fisher(model, er.Categorical(), x, y, estimator, "full").data
        mask = np.abs(expected) > 1e-300
        # exp() of arguments up to ~200 carries ~200 eps relative error on both sides.
        assert np.all(np.abs(F - expected)[mask] <= 1e-12 * np.abs(expected)[mask]), estimator
    assert np.abs(reference).max() < 1e-15  # the whole matrix is below 1 - fl(1 - eps)


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


def test_enumerated_bernoulli_fisher_keeps_a_saturated_output():
    """Contract: label enumeration weighs label 0 by sigmoid(-f), not 1 - sigmoid(f): at f = 584.8
    (found by Hypothesis 6.100) 1 - p cancels to 0 and the enumerated Fisher was 0 while the exact one
    is p (1 - p) J^T J ~ 1e-254 |J|^2."""
    model = er.MLP([np.array([[1.0]])], [np.array([0.0])], "identity")
    x, y = np.array([[584.77]]), np.array([[1.0]])
    enumerated = expected_outer_product(model, er.Bernoulli(), x)
    exact = er.fisher(model, er.Bernoulli(), x, y, "exact", "full").data
    assert enumerated[0, 0] > 0 and close(exact, enumerated)


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
