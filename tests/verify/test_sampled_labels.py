"""Issue 28, item 1 (what was left): a loader at labels SAMPLED from the model, ewc_ref/verify/sampled.py.

The moments (SL1)-(SL3) of docs/shuffled-loader-fisher.md against an exact enumeration of every label
of a few rows and every order of five; the simulator against its naive twin and its mean. What diagnose
says about such loops: tests/verify/test_centred_causes.py.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.special import softmax

import ewc_ref as er
from ewc_ref.verify.sampled_moments import loader_curves, partition_moments, simulate_sampled


# ------------------------------------------------------------------ the moments, exactly
def tiny():
    """A 3-4-3 tanh net, 5 rows: the per-example gradients at every label (N, C, P) and the label probabilities."""
    rng = np.random.default_rng(3)
    model = er.MLP.random([3, 4, 3], "tanh", rng=rng)
    lik = er.get_likelihood("categorical")
    x = rng.standard_normal((5, 3))
    per_label = np.stack([er.per_sample_gradients(model, lik, x, np.full(5, c)) for c in range(3)], axis=1)
    return per_label, softmax(model.predict(x), axis=1)


def row_moments(per_label, p):
    """F_n (N, P, P) and Cov_y[h_n o h_n] (N, P, P) by summing over each row's three labels."""
    fisher = np.einsum("nc,ncp,ncq->npq", p, per_label, per_label)
    sq = per_label**2
    mean_sq = np.einsum("nc,ncp->np", p, sq)
    cov = np.einsum("nc,ncp,ncq->npq", p, sq, sq) - np.einsum("np,nq->npq", mean_sq, mean_sq)
    return fisher, cov


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("batches", [[[0, 1, 2], [3]], [[3, 1], [0, 2]], [[4], [2, 0, 1, 3]]])
def test_partition_moments_against_every_label_of_four_rows(batches, reduction):
    """(SL1)-(SL3) for given batches against all 3^4 label draws of 4 rows (probability-weighted): mean and
    covariance to 1e-10 relative. A factor 2 on the Wishart term, the own-row correction (it vanishes for a
    1-row batch: mc), rho of the wrong reduction or 1/K instead of 1/K^2 fail."""
    per_label, p = tiny()
    rows = sorted(set(itertools.chain(*batches)))
    fisher, cov = row_moments(per_label, p)
    weights, values = [], []
    for labels in itertools.product(range(3), repeat=len(rows)):
        label_of = dict(zip(rows, labels, strict=True))
        weights.append(np.prod([p[n, label_of[n]] for n in rows]))
        t = np.zeros(per_label.shape[2])
        for b in batches:
            g = sum(per_label[n, label_of[n]] for n in b)
            t += (g / len(b)) ** 2 if reduction == "mean" else g**2
        values.append(t / len(batches))
    weights, values = np.array(weights), np.array(values)
    mean = weights @ values
    centred = values - mean
    brute_cov = (weights[:, None] * centred).T @ centred
    got_mean, got_cov = partition_moments(fisher, cov, [np.array(b) for b in batches], reduction)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-10, atol=1e-14 * np.abs(mean).max())
    np.testing.assert_allclose(got_cov, brute_cov, rtol=1e-9, atol=1e-12 * np.abs(brute_cov).max())


@pytest.mark.parametrize(("batch_size", "drop_last"), [(2, False), (2, True), (3, False), (4, False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_expectation_over_every_order_of_five_rows_is_e_times_f(batch_size, drop_last, reduction):
    """(SL2): the (SL3) mean averaged over all 5! orders is e(B) F with e = 1/K sum_k rho_k s_k of
    ``loader_curves`` (5 = 2 + 2 + 1: a short batch; drop_last drops it), to 1e-12. Off when the short batch
    is weighted like the others (e = 1/B), when K counts the dropped batch, or with rho of the other
    reduction."""
    per_label, p = tiny()
    fisher, cov = row_moments(per_label, p)
    n = 5
    total = np.zeros(per_label.shape[2])
    for order in itertools.permutations(range(n)):
        order = np.array(order)
        batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        if drop_last and len(batches[-1]) < batch_size:
            batches = batches[:-1]
        total += partition_moments(fisher, cov, batches, reduction)[0]
    mean = total / math.factorial(n)
    e = loader_curves(n, reduction, drop_last, 0.0)[0][batch_size - 1]
    exact = np.diagonal(fisher, axis1=1, axis2=2).mean(axis=0)
    np.testing.assert_allclose(mean, e * exact, rtol=1e-12)


# ------------------------------------------------------------------ the simulator
def simulate_loop(h, one_sample, batch_size, reduction, drop_last, draws, rng):
    """simulate_sampled by hand: the same permutation and signs from rng, batch by batch."""
    n = len(h)
    used = n - n % batch_size if drop_last else n
    k = -(-used // batch_size)
    full = (n // batch_size) * batch_size
    out = []
    for d in range(draws):
        rows = rng.permutation(n)[:used]
        signs = rng.integers(0, 2, used) * 2.0 - 1.0
        t = np.zeros(h.shape[1])
        for start in range(0, used, batch_size):
            block = rows[start:start + batch_size]
            g = (h[block] * signs[start:start + batch_size, None]).sum(axis=0)
            t += (g / len(block)) ** 2 if reduction == "mean" else g**2
        rho_full = 1 / batch_size**2 if reduction == "mean" else 1.0
        fresh = rho_full * full / k * (one_sample[1 + d % (len(one_sample) - 1)] - one_sample[0])
        out.append(t / k + fresh)
    return np.array(out)


@pytest.mark.parametrize(("reduction", "drop_last"), [("mean", False), ("sum", False), ("mean", True)])
def test_simulate_sampled_matches_its_loop_and_its_mean(reduction, drop_last):
    """simulate_sampled equals the batch-by-batch loop (same rng), and its mean over 3000 draws is e(B) x
    mean_n h_n^2 (the signs cancel the cross terms) with the full batches' squares at the fresh draws, within
    5 standard errors: 1/K vs 1/K^2 or the short batch's rho fail."""
    rng = np.random.default_rng(0)
    h = rng.standard_t(5, (103, 6))
    one_sample = (h**2).mean(axis=0) * (1 + 0.1 * rng.standard_normal((9, 6)))
    one_sample[0] = (h**2).mean(axis=0)
    got = simulate_sampled(h, one_sample, 10, reduction, drop_last, 7, np.random.default_rng(5))
    np.testing.assert_allclose(got, simulate_loop(h, one_sample, 10, reduction, drop_last, 7, np.random.default_rng(5)),
                               rtol=1e-12)
    sims = simulate_sampled(h, one_sample, 10, reduction, drop_last, 3000, np.random.default_rng(6))
    e = loader_curves(103, reduction, drop_last, 0.0)[0][9]
    k = 10 if drop_last else 11
    rho_full = 1 / 100 if reduction == "mean" else 1.0
    # over random partitions (and a random 100 of 103 rows with drop_last) the rows' own squares average to
    # e x mean_n h_n^2; the 100 full-batch rows' squares are moved to the fresh draws 1..8 (cycled)
    target = e * (h**2).mean(axis=0) + rho_full * 100 / k * (one_sample[1:].mean(axis=0) - one_sample[0])
    se = sims.std(axis=0, ddof=1) / math.sqrt(len(sims))
    assert np.all(np.abs(sims.mean(axis=0) - target) <= 5 * se)
