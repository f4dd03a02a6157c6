"""Every Fisher estimator x structure x likelihood against its naive per-example loop (the table's twins).

Tolerances. Identities between float64 computations that differ only in summation order
(fast vs naive, full vs diag, chunked vs one-shot): 1e-10 relative, normwise per matrix; the
observed residuals are ~1e-15 (see the closing note of issue [B]).
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.curvature import close

import ewc_ref as er
from ewc_ref.curvature.estimators import ESTIMATORS, OUTER_PRODUCT_ESTIMATORS
from ewc_ref.curvature.naive import naive_fisher, naive_labels, project
from ewc_ref.curvature.structures import KFAC_BIASES, STRUCTURES
from ewc_ref.strategies import LIKELIHOOD_NAMES, models_and_data

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
