"""The estimator table: every curvature estimator of docs/file-format.md as one row.

All estimators are means over the N examples (derivations/04, eq 9 of the report):

=============  ==========================================================  =======================
estimator      definition                                                  backward passes
=============  ==========================================================  =======================
empirical      F = 1/N sum_n g_n g_n^T, g_n = d l_n/d theta at observed y  1 (of N rows)
pred           as empirical with y_n = the model's most probable label     1
mc             F = 1/N sum_n 1/S sum_s g_ns g_ns^T, y_ns ~ p(y | x_n)      S
exact          F = 1/N sum_n E_{y ~ p}[g g^T] = 1/N sum_n J_n^T Lambda_n J_n  K = rank Lambda (pseudo-gradients)
ggn            1/N sum_n J_n^T (d^2 l_n / d f^2) J_n  (= exact here)        K = rank Lambda
batched        F = 1/K sum_k gbar_k gbar_k^T, gbar_k = grad of the MEAN    1
               loss over the k-th consecutive minibatch of size B
hessian        H = 1/N sum_n d^2 l_n / d theta^2                           diag: one backward recursion
                                                                           (diag_hessian.py, ~1 exact);
                                                                           full/block: P HVPs
=============  ==========================================================  =======================

How ``exact`` avoids the Jacobian: with a symmetric factor Lambda_n = Q_n Q_n^T
(likelihoods.hessian_factor), J_n^T Lambda_n J_n = sum_k (J_n^T q_nk)(J_n^T q_nk)^T and
J_n^T q_nk is an ordinary backward pass with the "pseudo-gradient" q_nk in place of d l/d f.
So every estimator except ``batched`` and ``hessian`` is sum_{n,k} w_k u_nk u_nk^T over
vectors u_nk = J_n^T r_nk that one batched backward pass produces, with r the output-space
vectors of the row (``output_vectors``) and w_k their weights:

    empirical   r = d l / d f (f, y_n)                 K = 1   w = 1
    pred        r = d l / d f (f, argmax p)            K = 1   w = 1
    mc          r = d l / d f (f, y_ns)                K = S   w = 1/S
    exact, ggn  r = q_nk, columns of Q_n               K = C (C - 1 categorical)   w = 1

For a Linear layer the per-example gradient is the outer product delta_n a_n^T (delta:
back-propagated error, a: layer input), which makes the structures cheap:

    diag   sum_{n,k} w_k delta_nk^2 (a_n^2)^T         one GEMM per layer, no per-example gradient
    full   sum_{n,k} w_k u_nk u_nk^T                  per-example gradients G, then G^T G
    block  per layer, the diagonal blocks of full
    kfac   per layer G_l (x) A_l with A_l = 1/N sum_n abar_n abar_n^T (abar = [a, 1] with bias),
           G_l = 1/N sum_{n,k} w_k delta_nk delta_nk^T; exact for N = 1

A row says how the estimator is computed (``kind``: 'outer' = sums of u u^T from
``output_vectors``, 'batched' = minibatch-mean gradients, 'hessian' = R-operator), how many
backward vectors K it takes per example (which sets the chunk size), which structures and which
options (samples, batch_size, rng) it accepts, and how ``diagnose`` treats it. Adding an
estimator is one row plus its tests (tests/test_curvature.py iterates the table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..model.likelihoods import Likelihood
from .structures import STRUCTURES


@dataclass(frozen=True)
class Estimator:
    """One row of the estimator table (module docstring)."""

    name: str
    definition: str
    kind: str  # 'outer' | 'batched' | 'hessian'
    output_vectors: Callable | None  # (lik, f, y, samples, rng) -> (r : (K, n, C), weight w)
    backward_vectors: Callable  # (samples, n_outputs) -> K per example
    structures: tuple
    options: tuple  # of 'samples', 'batch_size', 'rng'
    diagnose: str  # 'fit' | 'fit-small' (P N <= HESSIAN_LIMIT) | 'per-batch-size' | 'statistical' | 'same-as-exact'
    diagnose_rank: int  # tie-break order among equally good candidates in diagnose
    diagnose_note: str = ""


def _empirical(lik: Likelihood, f: np.ndarray, y, samples: int, rng):
    return lik.grad(f, y)[None], 1.0


def _pred(lik: Likelihood, f: np.ndarray, y, samples: int, rng):
    return lik.grad(f, lik.most_probable(f))[None], 1.0


def _mc(lik: Likelihood, f: np.ndarray, y, samples: int, rng):
    labels = lik.sample(f, rng, samples)  # (n, S, ...), drawn example by example
    return np.stack([lik.grad(f, labels[:, s]) for s in range(samples)]), 1.0 / samples


def _factor_columns(lik: Likelihood, f: np.ndarray, y, samples: int, rng):
    # exact and ggn: the columns of the symmetric factor Q_n of Lambda_n.
    return np.moveaxis(lik.hessian_factor(f), -1, 0), 1.0


_ALL, _NOT_KFAC = STRUCTURES, tuple(s for s in STRUCTURES if s != "kfac")
_ONE = lambda samples, n_outputs: 1  # noqa: E731
_RANK = lambda samples, n_outputs: n_outputs  # noqa: E731  (C - 1 for categorical: C bounds it)

ESTIMATOR_TABLE: dict[str, Estimator] = {row.name: row for row in (
    Estimator("empirical", "1/N sum_n g_n g_n^T at the observed labels", "outer", _empirical, _ONE,
              _ALL, (), "fit", 0, "= batched with B = 1"),
    Estimator("exact", "1/N sum_n E_{y ~ p(y|x_n)}[g g^T] = 1/N sum_n J_n^T Lambda_n J_n", "outer",
              _factor_columns, _RANK, _ALL, (), "fit", 1, "= ggn here"),
    Estimator("mc", "1/N sum_n 1/S sum_s g_ns g_ns^T, y_ns ~ p(y | x_n)", "outer", _mc,
              lambda samples, n_outputs: samples, _ALL, ("samples", "rng"), "statistical", 5),
    Estimator("batched", "1/K sum_k gbar_k gbar_k^T over consecutive minibatches of B rows", "batched", None,
              _ONE, _NOT_KFAC, ("batch_size",), "per-batch-size", 3),
    Estimator("pred", "1/N sum_n g_n g_n^T at the most probable labels", "outer", _pred, _ONE,
              _ALL, (), "fit", 2),
    Estimator("ggn", "1/N sum_n J_n^T (d^2 l_n / d f^2) J_n", "outer", _factor_columns, _RANK,
              _ALL, (), "same-as-exact", 1),
    Estimator("hessian", "1/N sum_n d^2 l_n / d theta^2", "hessian", None, _ONE,
              _NOT_KFAC, (), "fit-small", 4),
)}
ESTIMATORS = tuple(ESTIMATOR_TABLE)
#: Estimators that are sums of per-example outer products (the only ones kfac is defined for).
OUTER_PRODUCT_ESTIMATORS = tuple(name for name, row in ESTIMATOR_TABLE.items() if row.kind == "outer")


def output_vectors(lik: Likelihood, f: np.ndarray, y, estimator: str, samples: int, rng):
    """The vectors r_nk whose back-propagation gives u_nk = J_n^T r_nk (module docstring).

    Returns
    -------
    r : (K, n, C)
    weight : scalar w_k (the same for every k)
    """
    return ESTIMATOR_TABLE[estimator].output_vectors(lik, f, y, samples, rng)
