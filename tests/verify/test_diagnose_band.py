"""The band of B of a shuffled-loader reading (ewc_ref/verify/band.py, shuffled.GLS.clean_b).

The rates it gives on the digits' DataLoader are in tests/verify/test_diagnose_loader.py; these pin its parts.
"""

import numpy as np
import pytest

from ewc_ref.verify.band import relative_sd
from ewc_ref.verify.ranking import loader_moments
from ewc_ref.verify.readings import n_batches
from ewc_ref.verify.shuffled import GLS, expectation_terms


def test_clean_b_fits_the_heavy_row_of_a_short_batch_apart():
    """T = m^2 + b Sigma + gamma g_j^2 (a short batch holding the high-leverage row j): clean_b returns b to
    round-off (an exact linear fit), the plain fit's b absorbs gamma g_j^2 and is off by far more."""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((400, 40)) * rng.uniform(0.5, 2.0, 40) + 0.3
    G[7] *= 30.0  # a misclassified example: its gradient dominates
    mm, sigma = expectation_terms(G)
    gls = GLS(mm, sigma, floor=0.0)
    gls.heavy_rows(G)
    b = 0.02
    t = mm + b * np.diag(sigma) + 0.05 * G[7] ** 2
    assert gls.clean_b(t) == pytest.approx(b, rel=1e-8)
    assert abs(gls.fit(t)[1] / b - 1) > 0.1
    # without the heavy row, clean_b is the plain b (the extra regressor takes nothing)
    plain = mm + b * np.diag(sigma)
    assert gls.clean_b(plain) == pytest.approx(gls.fit(plain)[1], rel=1e-8)


def _rho_loop(n, batch_size, drop_last):
    """sd / mean of an averaged loader entry from its batch sizes, by a loop: Gaussian batch means,
    sd^2 ~ 2 (sum_k alpha_k^2 + K (K - 1)/(N - 1)^2), mean ~ sum_k alpha_k (common factors dropped)."""
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    alphas = [(n - s) / (s * (n - 1)) for s in sizes]
    k = len(sizes)
    return np.sqrt(2 * (sum(a * a for a in alphas) + k * (k - 1) / (n - 1) ** 2)) / sum(alphas)


@pytest.mark.parametrize("drop_last", [False, True])
def test_relative_sd_is_the_loop_over_batch_sizes_and_the_gaussian_part_of_loader_moments(drop_last):
    n = 1797
    rho = relative_sd(n_batches(n, drop_last), n, drop_last)
    for b in (2, 5, 23, 32, 64, 100, 599, 898):
        assert rho[b - 1] == pytest.approx(_rho_loop(n, b, drop_last), rel=1e-12), b
    # the short batch of 5 rows makes B = 64 noisier, relatively, than B = 23 with its 3-row one (not drop_last)
    assert (rho[63] / rho[22] > 2.0) is not drop_last
    # against ranking.loader_moments on gradients with zero mean (mean = alpha-bar Sigma_ii) whose fourth
    # cumulant term is removed: its sd / mean has the same ratio between two B
    G = np.random.default_rng(0).standard_normal((n, 3))
    G -= G.mean(axis=0)

    def rho_moments(b):
        sizes = [b] * (n // b) + ([n % b] if n % b and not drop_last else [])
        mean, cov = loader_moments(G, np.array(sizes))
        s = np.array(sizes, float)
        kappa_part = (np.mean(G[:, 0] ** 4) - 3 * np.mean(G[:, 0] ** 2) ** 2) * np.sum(1 / s**3) / len(s) ** 2
        return np.sqrt(cov[0, 0] - kappa_part) / mean[0]

    assert rho[63] / rho[22] == pytest.approx(rho_moments(64) / rho_moments(23), rel=1e-9)
