"""Naive twins: every curvature estimator as a plain loop over examples and labels.

These are the readable definitions that the fast, batched, streamed code in
curvature.py is tested against. They form dense (P, P) matrices one example and
one label at a time, exactly as the formulas read, and share no code with the
fast paths beyond the MLP's forward/backward pass and the likelihood's formulas:

* empirical / pred / mc: one backward pass per (example, label), g g^T summed;
* exact / ggn: the Jacobian J_n (C backward passes of unit vectors) and
  J_n^T Lambda_n J_n with the dense Lambda_n (no symmetric factor);
* exact by enumeration: E_{y ~ p}[g g^T] over every label (categorical: C labels;
  bernoulli: all 2^C label vectors; gaussian: Gauss-Hermite quadrature, exact for
  the quadratic integrand) -- the Bartlett identity's left-hand side;
* batched: one gradient of the minibatch mean loss per minibatch.

Use them for small P and N only: cost N * K backward passes and P^2 memory.
"""

from __future__ import annotations

import itertools

import numpy as np

from .curvature import ESTIMATORS, check_dense_size
from .likelihoods import Bernoulli, Categorical, Gaussian, Likelihood
from .loss import _loss_and_grad, check_model_data
from .mlp import MLP


def naive_fisher(model: MLP, lik: Likelihood, x, y, estimator: str = "empirical", samples: int = 1,
                 batch_size: int | None = None, rng=None) -> np.ndarray:
    """Dense (P, P) curvature by per-example loops (module docstring).

    For 'mc', labels are drawn with ``lik.sample(f_n, rng, samples)`` example by example,
    which consumes `rng` exactly as ewc_ref.fisher does, so both see the same labels.
    """
    x, y = check_model_data(model, lik, x, y)
    check_dense_size(model.n_params)
    if estimator not in ESTIMATORS or estimator == "hessian":
        raise ValueError(f"estimator: naive_fisher knows {[e for e in ESTIMATORS if e != 'hessian']}, got {estimator!r}")
    n, P = x.shape[0], model.n_params
    F = np.zeros((P, P))
    if estimator == "batched":
        batches = range(0, n, batch_size)
        for begin in batches:
            gbar = _loss_and_grad(model, lik, x[begin : begin + batch_size], y[begin : begin + batch_size])[1]
            F += np.outer(gbar, gbar)
        return F / len(batches)
    for i in range(n):
        xi = x[i : i + 1]
        f, cache = model.forward(xi)
        if estimator in ("exact", "ggn"):
            J = model.jacobian(xi)[0]  # (C, P)
            F += J.T @ lik.hessian(f)[0] @ J
            continue
        if estimator == "empirical":
            labels, weight = [y[i : i + 1]], 1.0
        elif estimator == "pred":
            labels, weight = [lik.most_probable(f)], 1.0
        else:  # mc
            drawn = lik.sample(f, rng, samples)[0]
            labels, weight = [drawn[s : s + 1] for s in range(samples)], 1.0 / samples
        for label in labels:
            g = model.backward(cache, lik.grad(f, label))
            F += weight * np.outer(g, g)
    return F / n


def label_distribution(lik: Likelihood, f: np.ndarray, gauss_hermite_points: int = 3):
    """All labels of one example with their probabilities, for exact expectations.

    Parameters
    ----------
    f : (C,) one example's output

    Returns
    -------
    labels : list of labels (each shaped like one row of y)
    weights : (M,) probabilities (quadrature weights for gaussian), summing to 1

    Gaussian: the tensor-product Gauss-Hermite rule with k points per output is exact for
    polynomials of degree <= 2k - 1 in y; g g^T is quadratic, so k = 2 would do and k = 3
    leaves a margin.
    """
    c = f.shape[0]
    if isinstance(lik, Categorical):
        return [np.array([k]) for k in range(c)], lik.mean(f[None])[0]
    if isinstance(lik, Bernoulli):
        if c > 12:
            raise ValueError(f"f: enumerating 2^C bernoulli labels needs C <= 12, got C = {c}")
        # 1 - p as sigmoid(-f): for a saturated logit (f ~ 600) 1 - p cancels to 0, losing the
        # only label with weight (a Bernoulli with f = 584.8 enumerated to F = 0).
        p, complement = lik.mean(f[None])[0], lik.mean(-f[None])[0]
        labels = [np.array([bits], dtype=float) for bits in itertools.product([0.0, 1.0], repeat=c)]
        weights = np.array([np.prod(np.where(lab[0] == 1, p, complement)) for lab in labels])
        return labels, weights
    if isinstance(lik, Gaussian):
        nodes, w = np.polynomial.hermite_e.hermegauss(gauss_hermite_points)  # weight exp(-t^2/2)
        w = w / w.sum()
        if c > 6:
            raise ValueError(f"f: Gauss-Hermite over C outputs needs C <= 6, got C = {c}")
        labels, weights = [], []
        for idx in itertools.product(range(len(nodes)), repeat=c):
            labels.append((f + lik.sigma * nodes[list(idx)])[None])
            weights.append(np.prod(w[list(idx)]))
        return labels, np.array(weights)
    raise TypeError(f"lik: no label enumeration for {type(lik).__name__}")


def expected_outer_product(model: MLP, lik: Likelihood, x) -> np.ndarray:
    """1/N sum_n E_{y ~ p(y | x_n)}[g g^T] by enumerating labels (label_distribution)."""
    x = model.check_input(x)
    check_dense_size(model.n_params)
    F = np.zeros((model.n_params, model.n_params))
    for i in range(x.shape[0]):
        f, cache = model.forward(x[i : i + 1])
        labels, weights = label_distribution(lik, f[0])
        for label, weight in zip(labels, weights, strict=True):
            g = model.backward(cache, lik.grad(f, label))
            F += weight * np.outer(g, g)
    return F / x.shape[0]


def project(full: np.ndarray, model: MLP, structure: str):
    """What a dense matrix looks like in `structure`: its diagonal, or its per-layer blocks."""
    if structure == "diag":
        return np.diagonal(full).copy()
    if structure == "block":
        return [full[s, s] for s in model.layer_slices]
    if structure == "full":
        return full
    raise ValueError(f"structure: a dense matrix projects to 'diag', 'block' or 'full', not {structure!r}")

