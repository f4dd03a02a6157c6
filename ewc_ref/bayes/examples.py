"""The numbers behind Fig. 3: a real posterior, its Laplace Gaussian and EWC's diagonal one.

Bayesian logistic regression with two weights (a single bias-free Linear layer with the
bernoulli likelihood), prior N(0, 4 I). The posterior is integrated on a grid (ewc_ref.bayes.grid);
the Laplace Gaussian uses the exact Hessian at the MAP, the EWC Gaussian the diagonal of
N F + prior precision (ewc_ref.bayes.laplace). Used by ``ewc-ref figures --only laplace``,
examples/laplace_vs_posterior.py, docs/bayes-and-laplace.md and derivations/03.
"""

from __future__ import annotations

import numpy as np

from ..model.likelihoods import Bernoulli
from ..model.mlp import MLP
from .grid import grid_posterior
from .laplace import laplace_approximation
from .posterior import GaussianPrior, LogPosterior, Subspace, sequential_log_posterior

PRIOR_VARIANCE = 4.0


def logistic_data(seed: int, w_true, n: int, rho: float = 0.0):
    """x ~ N(0, [[1, rho], [rho, 1]]), y ~ Bernoulli(sigmoid(x w_true)); x : (n, 2), y : (n, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2)) @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    y = (rng.random((n, 1)) < 1 / (1 + np.exp(-x @ np.asarray(w_true, float)[:, None]))).astype(float)
    return x, y


def logistic_posterior(x, y, prior=None) -> LogPosterior:
    """log p(y | x, w) + log p(w) for w : (2,), a bias-free Linear layer with the bernoulli likelihood."""
    model = MLP([np.zeros((1, 2))], [None], "identity")
    prior = GaussianPrior.isotropic(2, PRIOR_VARIANCE) if prior is None else prior
    return LogPosterior(Subspace(model, [0, 1]), Bernoulli(), x, y, prior)


def figure_data(n: int = 30, rho: float = 0.9, seed: int = 7, n_points: int = 161) -> dict:
    """Arrays of the figure: a 2-D contour and the 1-D marginal of w_0.

    Returns
    -------
    dict with
        w0, w1 : (n_points,) grid axes
        posterior, laplace, diag_fisher : (n_points, n_points) densities on the grid ([i, j] at (w0[i], w1[j]))
        marginal_posterior, marginal_laplace, marginal_diag_fisher : (n_points,) densities of w_0
        map : (2,); kl_laplace, kl_diag_fisher : KL(posterior || Gaussian) on the grid
        log_evidence, log_evidence_laplace, log_evidence_error : grid and Laplace log p(D)
    """
    x, y = logistic_data(seed, [1.5, -1.0], n, rho)
    post = logistic_posterior(x, y)
    laplace = laplace_approximation(post, kind="hessian")
    diag = laplace_approximation(post, laplace.mean, kind="fisher_diag")
    # Start the bound search wide enough for the broader Gaussian; the bounds then adapt to the posterior.
    grid = grid_posterior(post, laplace.mean, np.maximum(laplace.std, diag.std), n_points=n_points)
    points = grid.points()
    shape = grid.shape
    w0, marginal = grid.marginal(0)
    return {
        "w0": grid.axes[0], "w1": grid.axes[1],
        "posterior": grid.density,
        "laplace": np.exp(laplace.logpdf(points)).reshape(shape),
        "diag_fisher": np.exp(diag.logpdf(points)).reshape(shape),
        "marginal_posterior": marginal,
        "marginal_laplace": np.exp(laplace.marginal_logpdf(0, w0)),
        "marginal_diag_fisher": np.exp(diag.marginal_logpdf(0, w0)),
        "map": laplace.mean,
        "kl_laplace": grid.kl_to(laplace.logpdf),
        "kl_diag_fisher": grid.kl_to(diag.logpdf),
        "log_evidence": grid.log_evidence,
        "log_evidence_laplace": laplace.log_evidence,
        "log_evidence_error": grid.log_evidence_error,
    }


def bernstein_von_mises_table(seeds=range(5), ns=(10, 100, 1000), n_points: int = 161):
    """KL(grid || Laplace) for logistic regression on nested data sets (the first N of 1000 rows).

    Returns (w_true : (S, 2), kl : (S, len(ns))) with w_true ~ N(0, 1.5^2 I) per seed.
    """
    w_all, kl_all = [], []
    for seed in seeds:
        w_true = np.random.default_rng(1000 + seed).normal(0, 1.5, 2)
        x, y = logistic_data(seed, w_true, max(ns))
        row = []
        for n in ns:
            post = logistic_posterior(x[:n], y[:n])
            gauss = laplace_approximation(post)
            grid = grid_posterior(post, gauss.mean, gauss.std, n_points=n_points)
            row.append(grid.kl_to(gauss.logpdf))
        w_all.append(w_true)
        kl_all.append(row)
    return np.array(w_all), np.array(kl_all)


def sequential_table(n_a_values=(30, 300), n_b: int = 30, rho: float = 0.9, n_points: int = 121):
    """KL(exact p(theta | A, B) || approximation) when p(theta | A) is replaced by a Gaussian.

    Task A: w = (2, -1), inputs correlated rho; task B: w = (-1, -2), isotropic inputs.
    Returns {N_A: {"fisher_diag": KL, "ggn": KL, "hessian": KL, "eq4_check": |log p(A) + log p(B|A) - log p(A,B)|}}.
    """
    table = {}
    xb, yb = logistic_data(12, [-1.0, -2.0], n_b)
    for n_a in n_a_values:
        xa, ya = logistic_data(11, [2.0, -1.0], n_a, rho)
        post_a = logistic_posterior(xa, ya)
        lap_a = laplace_approximation(post_a)
        grid_a = grid_posterior(post_a, lap_a.mean, lap_a.std, n_points=n_points)
        exact = sequential_log_posterior(post_a, grid_a.log_evidence, xb, yb)
        lap = laplace_approximation(exact)
        grid_exact = grid_posterior(exact, lap.mean, lap.std, n_points=n_points)
        batch = logistic_posterior(np.vstack([xa, xb]), np.vstack([ya, yb]))
        grid_batch = grid_posterior(batch, lap.mean, lap.std, n_points=n_points)
        row = {"eq4_check": abs(grid_a.log_evidence + grid_exact.log_evidence - grid_batch.log_evidence)}
        for kind in ("fisher_diag", "ggn", "hessian"):
            prior = laplace_approximation(post_a, lap_a.mean, kind=kind).as_prior()
            approx = logistic_posterior(xb, yb, prior)
            lap_approx = laplace_approximation(approx)
            grid_approx = grid_posterior(approx, lap_approx.mean, lap_approx.std, n_points=n_points)
            row[kind] = grid_exact.kl_to(lambda z: approx(z) - grid_approx.log_evidence)
        table[n_a] = row
    return table


def skewed_figure_data(n_points: int = 401, prior_variance: float = 25.0) -> dict[str, np.ndarray]:
    """A posterior where the Laplace approximation visibly fails: small N, separable data.

    1-D Bayesian logistic regression p(y = 1 | x, w) = sigmoid(w x) on the six points
    x = (1, 2, -1, -2, 0.5, -0.5) with y = [x > 0] (linearly separable: the likelihood rises
    monotonically in w and only the prior N(0, `prior_variance`) stops it). The posterior is skewed
    towards large w; the Laplace Gaussian sits at the mode with the curvature there.

    Returns
    -------
    dict with w (n_points,) grid; posterior, laplace (n_points,) densities; map, mean (scalars:
    the posterior's mode and mean); kl_laplace (scalar): KL(posterior || Laplace) on the grid.
    """
    x = np.array([1.0, 2.0, -1.0, -2.0, 0.5, -0.5])[:, None]
    y = (x > 0).astype(np.float64)
    model = MLP([np.zeros((1, 1))], [None], "identity")
    post = LogPosterior(Subspace(model, [0]), Bernoulli(), x, y, GaussianPrior.isotropic(1, prior_variance))
    laplace = laplace_approximation(post, kind="hessian")
    grid = grid_posterior(post, laplace.mean, laplace.std, n_points=n_points)
    points = grid.points()
    return {"w": grid.axes[0], "posterior": grid.density, "laplace": np.exp(laplace.logpdf(points)),
            "map": laplace.mean[0], "mean": grid.mean[0], "kl_laplace": grid.kl_to(laplace.logpdf)}
