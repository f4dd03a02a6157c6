"""The float32 round-off model of diagnose (ewc_ref/verify/roundoff.py, roundoff_verdict.py), without torch.

THEIRS here comes from ``float32_fisher``, a NumPy imitation of torch's float32 computation written
independently of the code under test: forward in float32, log_softmax as x - max - log(sum exp(x - max)),
its backward exp(log_softmax) - onehot, back-propagation and outer products in float32, the squares
accumulated in float32. ``float64_fisher`` is the same loop in float64 with r_y = -(sum of the other p_c)
(no cancellation): the exact reference the bound is about.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import softmax

import ewc_ref as er
from ewc_ref.verify.roundoff import (
    U32,
    bound_loop,
    fisher_and_bound,
    float32_output_gradient,
    output_gradient_bound,
)
from ewc_ref.verify.scale import fit_scale

LIK = er.get_likelihood("categorical")


# --------------------------------------------------------------------------- independent imitations
def _exp32(v):  # torch's vectorised exp and log are within an ulp; NumPy's float32 log is not near 1
    return np.exp(v.astype(np.float64)).astype(np.float32)


def _log32(v):
    return np.log(v.astype(np.float64)).astype(np.float32)


def _activation(name, z):
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(z.dtype)
    a = np.tanh(z)
    return a, (1 - a * a).astype(z.dtype)


def _group_gradient(model, x, y, w, dtype):
    """(P,) the gradient of w sum_n CE(f(x_n), y_n), everything in `dtype` (float32: torch's way)."""
    weights = [wt.astype(dtype) for wt in model.weights]
    biases = [None if b is None else b.astype(dtype) for b in model.biases]
    a, inputs, slopes = x.astype(dtype), [], []
    for l, (wt, b) in enumerate(zip(weights, biases, strict=True)):
        inputs.append(a)
        z = a @ wt.T + (b if b is not None else 0)
        if l < len(weights) - 1:
            a, slope = _activation(model.activation.name, z)
            slopes.append(slope)
    onehot = np.eye(z.shape[1], dtype=dtype)[y]
    if dtype == np.float32:  # log_softmax and its backward, as torch's CPU kernels
        d = z - z.max(axis=1, keepdims=True)
        log_p = d - _log32(_exp32(d).sum(axis=1, keepdims=True))
        delta = dtype(w) * _exp32(log_p) - dtype(w) * onehot
    else:  # exact: r_y = -(sum of the other classes' p), no 1 - p_y cancels
        p = softmax(z, axis=1)
        r = p.copy()
        r[np.arange(len(y)), y] = -(p * (1 - onehot)).sum(axis=1)
        delta = w * r
    grad = np.zeros(model.n_params, dtype=dtype)
    for l in range(len(weights) - 1, -1, -1):
        grad[model.weight_slices[l]] = (delta.T @ inputs[l]).ravel()
        if biases[l] is not None:
            grad[model.bias_slices[l]] = delta.sum(axis=0)
        if l:
            delta = (delta @ weights[l]) * slopes[l - 1]
    return grad


def loop_fisher(model, x, y, sizes, dtype, reduction="mean"):
    """1/K sum_b G_b^2 over consecutive groups, G_b = the mean (or sum) gradient, squares summed in `dtype`."""
    total, start = np.zeros(model.n_params, dtype=dtype), 0
    for size in sizes:
        g = _group_gradient(model, x[start:start + size], y[start:start + size],
                            1.0 / size if reduction == "mean" else 1.0, dtype)
        total += g * g
        start += size
    return (total / dtype(len(sizes))).astype(np.float64)


def confident_problem(seed=0, n=96, sizes=(6, 12, 3), activation="tanh", gain=12.0, band=None, less=0):
    """A float32 net whose last layer is scaled by `gain` (labels = argmax). With `band` = (lo, hi), the n rows
    are drawn among 40 n so that 1 - p_y lies in [lo, hi], `less` of them in [1e-7, 1e-5] instead."""
    rng = np.random.default_rng(seed)
    model = er.MLP.random(list(sizes), activation, rng=rng)
    theta = model.theta.copy()
    theta[model.weight_slices[-1].start:] *= gain  # the last layer's weights and bias
    model = model.with_theta(theta.astype(np.float32))
    x = (3 * rng.standard_normal((n if band is None else 40 * n, sizes[0]))).astype(np.float32).astype(np.float64)
    y = model.with_theta(model.theta.astype(np.float64)).predict(x).argmax(axis=1)
    if band is not None:
        q = one_minus_p(model, x, y)
        inside = np.flatnonzero((q >= band[0]) & (q <= band[1]))[:n - less]
        near = np.flatnonzero((q >= 1e-7) & (q <= 1e-5))[:less]
        rows = np.sort(np.concatenate([inside, near]))
        assert rows.size == n, "not enough rows in the band: raise the gain"
        x, y = x[rows], y[rows]
    return model, x, y


def one_minus_p(model, x, y):
    p = softmax(model.with_theta(model.theta.astype(np.float64)).predict(x), axis=1)
    return (p * (1 - np.eye(p.shape[1])[y])).sum(axis=1)


# --------------------------------------------------------------------------- the output gradient (R1), (R2)
@pytest.mark.parametrize("spread", [1.0, 10.0, 40.0], ids=["ordinary", "confident", "saturated"])
@given(seed=st.integers(0, 2**16))
def test_output_gradient_bound_holds_and_is_exact_where_r_y_is_lost(spread, seed):
    rng = np.random.default_rng(seed)
    f = (spread * rng.standard_normal((64, 5))).astype(np.float32)
    y = np.where(rng.random(64) < 0.8, f.argmax(axis=1), rng.integers(0, 5, 64))
    d = f - f.max(axis=1, keepdims=True)
    r32 = (np.exp(d - np.log(np.exp(d).sum(axis=1, keepdims=True))) - np.eye(5, dtype=np.float32)[y]).astype(float)
    r, e, lost = output_gradient_bound(f.astype(np.float64), y)
    assert np.all(np.abs(r32 - r) <= e)
    rows = np.flatnonzero(lost)
    assert np.all(r32[rows, y[rows]] == 0)  # lost: computed as exactly 0 ...
    np.testing.assert_array_equal(e[rows, y[rows]], np.abs(r[rows, y[rows]]))  # ... and the bound is that, no more
    kept = e[np.arange(64), y][~lost] / np.maximum(np.abs(r[np.arange(64), y][~lost]), 1e-300)
    assert np.all(kept < 1e-3) or spread > 1  # an ordinary net's r_y is bounded to ~1e-6 relative


def test_modelled_output_gradient_is_the_float32_one():
    rng = np.random.default_rng(3)
    f = (25 * rng.standard_normal((400, 4))).astype(np.float32)
    y = f.argmax(axis=1)
    d = f - f.max(axis=1, keepdims=True)
    imitation = _exp32(d - _log32(_exp32(d).sum(axis=1, keepdims=True)))[np.arange(400), y] - np.float32(1)
    t = np.exp(d.astype(np.float64)).sum(axis=1) - 1  # 1 - p_y = t / (1 + t)
    model = float32_output_gradient(f.astype(np.float64), y)[np.arange(400), y]
    assert np.all(model[t < U32 / 2] == 0) and np.all(imitation[t < U32 / 2] == 0)
    small = t < 1e-3  # where 1 - p_y is lost in part: on float32's grid below 1, within an ulp of the imitation
    assert np.all(model[small] / U32 == np.round(model[small] / U32))
    assert np.all(np.abs(model - imitation)[small] <= 2 * U32) and np.sum(small & (t > U32)) > 20
    assert np.all(np.abs(model + t / (1 + t))[small] <= 2 * U32)


# --------------------------------------------------------------------------- twin and the bound as a bound
@pytest.mark.parametrize("sizes, reduction", [([1] * 12, "mean"), ([4, 4, 4], "mean"), ([5, 5, 2], "sum"), ([5, 5], "mean")],
                         ids=["rows", "B=4", "sum, short last", "dropped"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fisher_and_bound_equals_its_naive_twin(sizes, reduction, activation):
    model, x, y = confident_problem(seed=1, n=12, activation=activation, gain=4.0)
    fisher, bound = bound_loop(model, x, y, sizes, reduction)
    for chunk in (None, 5):  # one chunk of rows, or whole minibatches over several
        got = fisher_and_bound(model, x, y, np.array(sizes), reduction, chunk=chunk)
        np.testing.assert_allclose(got.fisher, fisher, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(got.bound, bound, rtol=1e-12, atol=1e-300)
    reference = loop_fisher(model, x, y, sizes, np.float64, reduction)  # (O1): fails at 2x or N x
    np.testing.assert_allclose(got.fisher, reference, rtol=1e-10, atol=1e-14 * reference.max())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("gain", [1.0, 30.0, 60.0], ids=["ordinary", "confident", "very confident"])
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([1, 3, 8]))
def test_the_float32_error_is_within_the_bound_on_every_entry(activation, gain, seed, batch):
    model, x, y = confident_problem(seed=seed, n=24, activation=activation, gain=gain)
    sizes = [batch] * (24 // batch)
    exact, float32 = loop_fisher(model, x, y, sizes, np.float64), loop_fisher(model, x, y, sizes, np.float32)
    got = fisher_and_bound(model, x, y, np.array(sizes))
    assert np.all(np.abs(float32 - exact) <= got.bound)
    for n in range(0, 24, 5):  # the per-example gradient itself: |g32^2 - g^2| <= 2 |g| Delta + Delta^2
        single = fisher_and_bound(model, x[n:n + 1], y[n:n + 1], np.array([1]))
        g32, g = (_group_gradient(model, x[n:n + 1], y[n:n + 1], 1.0, t).astype(float) for t in (np.float32, np.float64))
        assert np.all(np.abs(g32 ** 2 - g ** 2) <= single.bound)


def test_the_bound_is_small_on_an_ordinary_net_and_tight_where_r_y_is_lost():
    model, x, y = confident_problem(seed=5, n=200, gain=1.0)
    ordinary = fisher_and_bound(model, x, y, np.ones(200, dtype=int))
    assert ordinary.cancelled_rows == 0
    assert np.median(ordinary.bound / ordinary.fisher) < 1e-3  # cannot swallow a 1e-3 bug on most entries
    model, x, y = confident_problem(seed=5, n=200, gain=60.0, band=(1e-13, 1e-9))
    confident = fisher_and_bound(model, x, y, np.ones(200, dtype=int))
    actual = np.abs(loop_fisher(model, x, y, [1] * 200, np.float32) - confident.fisher)
    ratio = confident.bound / np.maximum(actual, 1e-300)
    assert confident.cancelled_rows == 1 and np.all(ratio >= 1) and np.median(ratio) < 10  # measured 3.0


# --------------------------------------------------------------------------- verdicts
def _diagnose(model, x, y, theirs, **kw):
    return er.diagnose(model, LIK, x, y, theirs.astype(np.float32), **kw)


@pytest.fixture(scope="module")
def confident():
    model, x, y = confident_problem(seed=5, n=192, gain=60.0, band=(1e-13, 1e-9), less=6)
    assert 1e-12 < np.median(one_minus_p(model, x, y)) < 1e-10
    return model, x, y


def test_a_confident_float32_empirical_fisher_is_matched_within_round_off(confident):
    model, x, y = confident
    theirs = loop_fisher(model, x, y, [1] * 192, np.float32)
    exact_error = fit_scale(theirs, loop_fisher(model, x, y, [1] * 192, np.float64))[1]
    assert exact_error > 1e-3  # the 1e-4 threshold alone answers none here
    d = _diagnose(model, x, y, theirs)
    assert (d.estimator, d.scale_factor) == ("empirical", "1")
    assert d.roundoff["matched"] and d.roundoff["modelled_rel_error"] < 1e-5
    assert d.roundoff["exact_rel_error"] == pytest.approx(exact_error, rel=1e-6)
    assert [c.label for c in d.equivalent] == ["pred"]  # labels = argmax: pred's matrix is empirical's
    assert "float32" in d.report() and "float64" in d.report()
    assert d.to_dict()["roundoff"]["lost_rows"] > 0.5


def test_a_confident_float32_batched_fisher_is_matched_with_its_b(confident):
    model, x, y = confident
    theirs = loop_fisher(model, x, y, [16] * 12, np.float32)
    d = _diagnose(model, x, y, theirs)
    assert (d.estimator, d.batch_size, d.scale_factor) == ("batched", 16, "1")
    assert d.roundoff["matched"]


@pytest.mark.parametrize("sizes", [[1] * 192, [16] * 12], ids=["empirical", "batched"])
def test_a_scale_bug_of_1e_3_is_not_round_off(confident, sizes):
    model, x, y = confident
    d = _diagnose(model, x, y, 1.001 * loop_fisher(model, x, y, sizes, np.float32))
    assert d.estimator == "none"
    assert not d.roundoff["matched"] and d.roundoff["scale_factor"] is None
    assert d.roundoff["modelled_scale"] == pytest.approx(1.001, rel=1e-4)
    assert "no simple factor" in d.causes[0] and d.mc is None and d.shuffled is None


def test_the_wrong_estimator_is_not_round_off(confident):
    """THEIRS = the exact Fisher in float32 is exact (its terms p_k (J^T (p - e_k))^2 lose nothing that
    matters): the ordinary threshold names it; empirical's float32 model is far from it."""
    model, x, y = confident
    from support.problems import exact_diag

    theirs = exact_diag(model.with_theta(model.theta.astype(np.float64)), LIK, x).astype(np.float32)
    d = _diagnose(model, x, y, theirs)
    assert d.estimator == "exact" and d.roundoff is None
    # a confident net's empirical Fisher plus 30% of its exact one: no candidate, no model, no bound fits
    mixed = loop_fisher(model, x, y, [1] * 192, np.float32)
    mixed = mixed + 0.3 * theirs * np.linalg.norm(mixed) / np.linalg.norm(theirs)
    d = _diagnose(model, x, y, mixed)
    assert d.estimator == "none" and not d.roundoff["matched"] and d.roundoff["modelled_rel_error"] > 1e-2


def test_pred_and_empirical_are_told_apart_when_labels_differ(confident):
    model, x, y = confident
    wrong = y.copy()
    wrong[::8] = (y[::8] + 1) % 3  # 1 row in 8 mislabelled: empirical != pred there
    theirs = loop_fisher(model, x, wrong, [1] * 192, np.float32)
    d = _diagnose(model, x, wrong, theirs)
    # the mislabelled rows dominate (no cancellation there): the ordinary threshold; pred is another matrix
    assert d.estimator == "empirical" and "pred" not in [c.label for c in d.equivalent]
    theirs = loop_fisher(model, x, y, [1] * 192, np.float32)  # the loss at the predicted labels
    d = _diagnose(model, x, wrong, theirs)
    assert d.estimator == "pred" and d.roundoff["matched"]


def test_an_ordinary_float32_net_is_unchanged():
    model, x, y = confident_problem(seed=5, n=96, gain=1.0)
    d = _diagnose(model, x, y, loop_fisher(model, x, y, [1] * 96, np.float32))
    assert d.estimator == "empirical" and d.rel_error < 1e-4 and d.roundoff is None
    d = _diagnose(model, x, y, 1.001 * loop_fisher(model, x, y, [1] * 96, np.float32))
    assert d.estimator == "empirical" and d.scale_factor is None and d.roundoff is None  # as before: c = 1.001


@given(seed=st.integers(0, 2**16))
def test_scale_interval_is_the_set_of_scales_within_the_bound(seed):
    from ewc_ref.verify.roundoff_verdict import scale_interval

    rng = np.random.default_rng(seed)
    f = rng.random(20) * (rng.random(20) < 0.9)
    b = 0.05 * f * rng.random(20) + 1e-3 * (rng.random(20) < 0.2)
    t = f * (1 + 0.04 * rng.standard_normal(20))
    low, high = scale_interval(t, f, b)
    for c in np.linspace(0.5, 1.5, 2001):
        assert np.all(np.abs(t - c * f) <= c * b) == (low <= c <= high)
