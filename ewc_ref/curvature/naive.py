"""Naive twins: every curvature estimator as a plain loop over examples and labels.

These are the readable definitions that the fast, batched, streamed code in
accumulator.py and kernels.py are tested against. They form dense (P, P) matrices one example and
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

import math

import numpy as np

from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data, loss_and_grad_unchecked
from ..model.mlp import MLP
from .budget import check_dense_size
from .estimators import ESTIMATORS


def naive_labels(lik: Likelihood, f: np.ndarray, y_row, estimator: str, samples: int = 1, rng=None):
    """The labels of one example whose gradients' outer products an estimator sums, and their weight.

    f : (1, C) the example's output; y_row : its observed label (a batch of one). Returns
    ([label batches of one], w): empirical [y_n], 1; pred [argmax p], 1; mc S labels drawn by
    ``lik.sample(f, rng, S)`` (the way ewc_ref.fisher consumes `rng`), 1/S. The naive twin of the
    label-based rows of ``ESTIMATOR_TABLE`` (naive_fisher here, naive_kfac in tests/curvature/test_naive_twins.py).
    """
    if estimator == "empirical":
        return [y_row], 1.0
    if estimator == "pred":
        return [lik.most_probable(f)], 1.0
    if estimator == "mc":
        drawn = lik.sample(f, rng, samples)[0]
        return [drawn[s : s + 1] for s in range(samples)], 1.0 / samples
    # a row of the estimator table without its twin here is never computed as another estimator
    raise NotImplementedError(f"estimator: the naive twins have no labels for {estimator!r} yet; add them here")


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
            gbar = loss_and_grad_unchecked(model, lik, x[begin : begin + batch_size], y[begin : begin + batch_size])[1]
            F += np.outer(gbar, gbar)
        return F / len(batches)
    for i in range(n):
        xi = x[i : i + 1]
        f, cache = model.forward(xi)
        if estimator in ("exact", "ggn"):
            J = model.jacobian(xi)[0]  # (C, P)
            F += J.T @ lik.hessian(f)[0] @ J
            continue
        labels, weight = naive_labels(lik, f, y[i : i + 1], estimator, samples, rng)
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

    The rule is the likelihood's ``label_quadrature``: the C classes, the 2^C bit vectors, or
    the tensor-product Gauss-Hermite rule (exact for the quadratic g g^T).
    """
    labels, weights = lik.label_quadrature(f[None], gauss_hermite_points)
    return labels, weights[0]


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


# --------------------------------------------------------------------------- twins of the kernels' sums
def diag_sums_naive(model: MLP, cache, deltas, weight: float) -> np.ndarray:
    """Twin of accumulator._diag_sums (the original inline NumPy): sum over the K vectors, then one GEMM."""
    out = np.empty(model.n_params, dtype=np.result_type(cache.inputs[0], model.theta))
    for l, delta in enumerate(deltas):
        sq = weight * np.einsum("kno,kno->no", delta, delta)  # sum over the K vectors first
        a = cache.inputs[l]
        out[model.weight_slices[l]] = (sq.T @ (a * a)).ravel()
        if model.has_bias[l]:
            out[model.bias_slices[l]] = sq.sum(axis=0)
    return out


def outer_sums_naive(model: MLP, structure: str, cache, r: np.ndarray, weight: float, kfac_bias: str = "joined"):
    """Twin of accumulator.FisherAccumulator._outer_sums (the original NumPy): per-example gradients of
    mlp.per_sample_grads, then G^T G, block slices of it, or the KFAC factor GEMMs (A with the column
    of ones for kfac_bias='joined', without it for 'separate')."""
    deltas = model.backward_deltas(cache, r)
    if structure == "diag":
        return diag_sums_naive(model, cache, deltas, weight)
    if structure == "kfac":
        sums = []
        for l, delta in enumerate(deltas):
            a = cache.inputs[l]
            if model.has_bias[l] and kfac_bias == "joined":
                a = np.concatenate([a, np.ones((a.shape[0], 1), dtype=a.dtype)], axis=1)
            d = delta.reshape(-1, delta.shape[-1])
            sums.append((a.T @ a, weight * (d.T @ d)))
        return sums
    G = model.per_sample_grads(cache, r * math.sqrt(weight))
    G = G.reshape(-1, G.shape[-1])
    if structure == "full":
        return G.T @ G
    return [G[:, s].T @ G[:, s] for s in model.layer_slices]
