"""Issue 28, item 2: the mean over a random SUBSET of n rows ("fisher_n" codes), ewc_ref/verify/sampled.py.

(SR1) of docs/shuffled-loader-fisher.md against every subset (without replacement) and every n-tuple
(with replacement) of six rows; the simulator against its loop. What diagnose says about a subset
Fisher: tests/verify/test_centred_causes.py.
"""

import itertools

import numpy as np
import pytest

from ewc_ref.verify.sampled_moments import simulate_subset, subset_curve

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
