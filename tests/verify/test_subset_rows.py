"""Issue 28, item 2: the mean over a random SUBSET of n rows ("fisher_n" codes), ewc_ref/verify/sampled.py.

(SR1) of docs/shuffled-loader-fisher.md against every subset (without replacement) and every n-tuple
(with replacement) of six rows; the simulator against its loop. What diagnose says about a subset
Fisher: tests/verify/test_centred_causes.py.
"""

import itertools

import numpy as np
import pytest

from ewc_ref.verify.sampled_moments import (
    simulate_subset,
    subset_curve,
    support_p,
    untouched_probability,
)

Q = np.random.default_rng(2).standard_gamma(0.7, (6, 3))  # six rows' squares, 3 entries: skewed like g^2


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_subset_variance_without_replacement_against_every_subset_of_six(n):
    """Var of the mean over n of 6 rows drawn without replacement = f(n) V / n, f = (N - n)/(N - 1) of
    ``subset_curve``, V the rows' population variance (divisor N): all C(6, n) subsets, 1e-12. Off by the
    finite-population factor, by N vs N - 1 in V, or by 1/n^2 fails."""
    means = np.array([Q[list(rows)].mean(axis=0) for rows in itertools.combinations(range(6), n)])
    np.testing.assert_allclose(means.mean(axis=0), Q.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(means.var(axis=0), subset_curve(6, False, 6)[n - 1] * Q.var(axis=0), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_subset_variance_with_replacement_against_every_tuple(n):
    """With replacement every one of the 6^n ordered tuples is equally likely: Var = V / n (f = 1), 1e-12."""
    means = np.array([Q[list(rows)].mean(axis=0) for rows in itertools.product(range(6), repeat=n)])
    np.testing.assert_allclose(means.var(axis=0), subset_curve(6, True, 6)[n - 1] * Q.var(axis=0), rtol=1e-12)


def test_simulate_subset_matches_its_loop():
    """simulate_subset: the rows of rng.integers (with) or a permutation's first n (without), averaged."""
    rng = np.random.default_rng(0)
    q = rng.random((50, 4))
    for replace in (True, False):
        got = simulate_subset(q, 7, replace, 5, np.random.default_rng(1))
        gen = np.random.default_rng(1)
        want = [q[gen.integers(0, 50, 7) if replace else gen.permutation(50)[:7]].mean(axis=0) for _ in range(5)]
        np.testing.assert_allclose(got, np.array(want), rtol=1e-15)


# ------------------------------------------------------------------ (SR3)-(SR4): the rows used
@pytest.mark.parametrize("replace", [False, True])
def test_untouched_probability_against_every_subset_of_seven_rows(replace):
    """(SR3): P(no selected row touches an entry touched by r of 7 rows), n = 3, against every subset (without
    replacement) or every ordered triple (with): exact to 1e-12. The with-replacement formula used without
    replacement (or the reverse) is off by 0.05-0.2."""
    n_rows, n = 7, 3
    touching = np.array([0, 1, 2, 3, 4, 5])
    draws = itertools.product(range(n_rows), repeat=n) if replace else itertools.combinations(range(n_rows), n)
    hits = np.array([[not set(rows) & set(range(r)) for r in touching] for rows in draws], dtype=float)
    np.testing.assert_allclose(untouched_probability(touching, n_rows, n, replace), hits.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("replace", [False, True])
def test_support_bound_is_an_upper_bound_on_random_subsets(replace):
    """(SR4) is an upper bound. 12 groups of 3 entries with the SAME rows (one input pixel, three hidden units:
    their zeros come together), the groups' rows disjoint (2-4 of 60), n = 15: D is one entry per group, and
    over 4000 random subsets the frequency of 'at most z of D untouched' (z = 0, 1, 2) stays below the bound
    (3 binomial standard errors). A product over all 36 entries, ignoring that a group's zeros come together,
    is (1 - pi)^3 per group where the truth is 1 - pi: below the frequency at z = 0. t's values do not choose
    D: the expected count is the same for any t."""
    rng = np.random.default_rng(4)
    n_rows, n = 60, 15
    blocks = np.split(rng.permutation(n_rows)[:36], np.cumsum(rng.integers(2, 5, 11)))[:12]
    support = np.zeros((n_rows, 36), dtype=bool)
    for g, rows in enumerate(blocks):
        support[rows, 3 * g:3 * g + 3] = True
    assert all(len(rows) >= 2 for rows in blocks)
    first = np.arange(0, 36, 3)  # D: the first entry of each group (stable order among equal pi)
    _, _, mu = support_p(np.ones(36), support, n, replace)
    pi = untouched_probability(support.sum(axis=0), n_rows, n, replace)
    np.testing.assert_allclose(mu, pi[first].sum(), rtol=1e-12)
    assert support_p(rng.random(36), support, n, replace)[2] == mu
    touched = np.array([support[rng.integers(0, n_rows, n) if replace else rng.permutation(n_rows)[:n]].any(axis=0)
                        for _ in range(4000)])
    for z in range(3):
        t = np.ones(36)
        t[first[:z]] = 0.0
        bound, zeros, _ = support_p(t, support, n, replace)
        assert zeros == z
        freq = np.mean((~touched[:, first]).sum(axis=1) <= z)
        assert freq <= bound + 3 * np.sqrt(bound * (1 - bound) / 4000) + 1e-12, (z, freq, bound)
