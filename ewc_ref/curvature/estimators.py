"""The estimator table: every curvature estimator of docs/file-format.md as one row.

All estimators are means over the N examples (derivations/04, eq 9 of the report), with
g_n = d l_n / d theta (P,), J_n = d f(x_n) / d theta (C, P), Lambda_n = d^2 l_n / d f^2 (C, C).
Each is DEFINED ONCE, by its row of ``ESTIMATOR_TABLE`` below (``definition`` and ``cost``): the
``fisher``/``laplace`` --help, README.md's table and docs/file-format.md section 6 are generated from
the rows (``describe``; tools/table_docs.py; tests/docs/test_tables.py fails when a page differs).
The rows, as ``describe()`` prints them, close this docstring.

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
estimator is one row, its naive twin (``naive.naive_fisher``) and its tests (tests/docs/test_tables.py
iterates the table); CONTRIBUTING.md lists the files.
"""

from __future__ import annotations

import textwrap
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
    cost: str = ""  # backward passes per example (README's table)


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
    Estimator("empirical", "F = 1/N sum_n g_n g_n^T, with g_n at the observed label y_n", "outer", _empirical,
              _ONE, _ALL, (), "fit", 0, "= batched with B = 1", cost="1 backward pass"),
    Estimator("exact", "F = 1/N sum_n E_{y ~ p(y given x_n, theta)}[g g^T] = 1/N sum_n J_n^T Lambda_n J_n "
              "(the Fisher)", "outer", _factor_columns, _RANK, _ALL, (), "fit", 1, "= ggn here",
              cost="C - 1 (categorical) or C backward passes of pseudo-gradients (columns of a factor of "
                   "Lambda_n), no Jacobian"),
    Estimator("mc", "F = 1/N sum_n 1/S sum_s g_ns g_ns^T, with S labels y_ns drawn from the model per example",
              "outer", _mc, lambda samples, n_outputs: samples, _ALL, ("samples", "rng"), "statistical", 5,
              cost="S backward passes"),
    Estimator("batched", "F = 1/K sum_k gbar_k gbar_k^T, gbar_k the gradient of the MEAN loss over the k-th run "
              "of B consecutive rows; the last, shorter run is a batch of its own; K = ceil(N / B)", "batched",
              None, _ONE, _NOT_KFAC, ("batch_size",), "per-batch-size", 3,
              cost="1 backward pass (the squared minibatch gradient of many EWC codes)"),
    Estimator("pred", "as `empirical`, at the model's most probable label instead of y_n", "outer", _pred, _ONE,
              _ALL, (), "fit", 2, cost="1 backward pass"),
    Estimator("ggn", "1/N sum_n J_n^T Lambda_n J_n; equal to `exact` for the three likelihoods here", "outer",
              _factor_columns, _RANK, _ALL, (), "same-as-exact", 1, cost="as `exact`"),
    Estimator("hessian", "H = 1/N sum_n d^2 l_n / d theta^2", "hessian", None, _ONE,
              _NOT_KFAC, (), "fit-small", 4,
              cost="diag: one backward recursion of curvature, about one `exact` diag "
                   "(`ewc_ref.curvature.diag_hessian.cost_ratio`); full/block: P Hessian-vector products"),
)}
ESTIMATORS = tuple(ESTIMATOR_TABLE)
#: Estimators that are sums of per-example outer products (the only ones kfac is defined for).
OUTER_PRODUCT_ESTIMATORS = tuple(name for name, row in ESTIMATOR_TABLE.items() if row.kind == "outer")


def describe(names=ESTIMATORS, width: int = 100) -> str:
    """The rows' definitions as indented text, one estimator per paragraph (the commands' --help).

    Parameters
    ----------
    names : the estimators to list, in this order (default: every row)
    width : wrap the lines at this many characters

    Returns
    -------
    str, lines "  <name>  <definition>" with continuation lines aligned under the definition.
    """
    column = 2 + max(len(name) for name in names) + 2
    return "\n".join(textwrap.fill(ESTIMATOR_TABLE[name].definition, width, initial_indent=f"  {name:<{column - 4}}  ",
                                    subsequent_indent=" " * column) for name in names)


if __doc__ is not None:  # None under python -OO
    __doc__ += "\n" + describe() + "\n"


def output_vectors(lik: Likelihood, f: np.ndarray, y, estimator: str, samples: int, rng):
    """The vectors r_nk whose back-propagation gives u_nk = J_n^T r_nk (module docstring).

    Returns
    -------
    r : (K, n, C)
    weight : scalar w_k (the same for every k)
    """
    return ESTIMATOR_TABLE[estimator].output_vectors(lik, f, y, samples, rng)
