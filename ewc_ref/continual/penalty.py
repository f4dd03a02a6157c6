"""The EWC penalty (the report's eq. (11)) and its multi-task variants, with gradients.

Sign convention
---------------
We *minimise*. Training task T minimises its mean loss plus the penalty

    J(theta) = L_T(theta) + Omega(theta),    L_T = 1/N_T sum_n l_n (mean negative log-likelihood),

    Omega(theta) = lambda/2 (theta - theta*)^T F (theta - theta*)           (diagonal F:
                 = lambda/2 sum_i F_i (theta_i - theta*_i)^2)                 docs/file-format.md),

    grad Omega = lambda F (theta - theta*).

The second line of the report's eq. (11) (derivations/ERRATA.md E9) writes the log posterior
log p(theta | D_A, D_B) = log p(D_B | theta) - lambda/2 sum_i F_i (theta_i - theta*_A,i)^2 + const, which is *maximised*; negating it gives a
loss to minimise with the penalty added, as above. F is the per-example (mean) Fisher of
docs/file-format.md, so the Bayesian value of lambda is about the number of old examples N_A, scaled by
the mean (not summed) new loss: lambda = N_A / N_B; in practice lambda is tuned (docs/continual-learning.md).

Variants after tasks 1..T-1 with optima theta*_t and curvatures F_t
-------------------------------------------------------------------
=================  =====================================================================
``separate``       Kirkpatrick et al. 2017: one penalty per past task,
                   Omega = sum_t lambda/2 (theta - theta*_t)^T F_t (theta - theta*_t).
``accumulated``    Huszar 2018: one penalty, Fisher summed, latest anchor,
                   Omega = lambda/2 (theta - theta*_{T-1})^T (sum_t F_t) (theta - theta*_{T-1}).
``online``         Schwarz et al. 2018: F_online <- gamma F_online + F_t, anchor <- theta*_t,
                   Omega = lambda/2 (theta - theta*_{T-1})^T F_online (theta - theta*_{T-1}),
                   0 < gamma <= 1; gamma = 1 is ``accumulated`` exactly.
``l2``             F = I (all ones) in the ``separate`` form: sum_t lambda/2 ||theta - theta*_t||^2,
                   the "L2" baseline of Kirkpatrick et al. Fig. 2 / the report's Fig. 4(b).
=================  =====================================================================

How ``separate`` and ``accumulated`` relate (tested in tests/continual/test_penalty.py): a sum of quadratics is
one quadratic. With Fsum = sum_t F_t and the precision-weighted mean m = Fsum^{-1} sum_t F_t theta*_t
(diagonal F: per coordinate; coordinates with Fsum_i = 0 carry no penalty and m_i is arbitrary),

    sum_t 1/2 (theta - theta*_t)^T F_t (theta - theta*_t) = 1/2 (theta - m)^T Fsum (theta - m) + c,
    c = 1/2 (sum_t theta*_t^T F_t theta*_t - m^T Fsum m),

an identity in theta: equal gradients everywhere, equal values up to the theta-independent c
(:func:`merge_quadratics`). Huszar's ``accumulated`` replaces m by the latest anchor theta*_{T-1}:
it is the same penalty exactly when the anchors coincide, and otherwise the correct recursive
Laplace posterior (the optimum of task T-1 already includes the earlier penalties, so its anchor
is the posterior mode), which ``separate`` double-counts.

Curvature structure
-------------------
Any curvature plugs in: a diagonal as a (P,) array (``Curvature.diagonal`` of ewc_ref.fisher with
structure='diag'), or any object with ``matvec(v) -> (P,)`` (full, block or K-FAC ``Curvature``),
for which Omega = lambda/2 d^T F d and grad = lambda F d with d = theta - theta*. A (P, P) array is
taken as a dense matrix. Sums of diagonals are kept as one vector (so ``online`` with gamma = 1 is
bit-identical to ``accumulated``); other structures are kept as a weighted list of operators.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_float_array, check_choice, finite_or_refused

PENALTIES = ("separate", "accumulated", "online", "l2")


# ----------------------------------------------------------------------------- validation
def check_lambda(lam) -> float:
    """lambda >= 0 and finite, or ValueError naming `lam` (lambda)."""
    try:
        value = float(lam)
    except (TypeError, ValueError) as error:
        raise TypeError(f"lam (lambda): expected a number >= 0, got {lam!r}") from error
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"lam (lambda): expected a finite number >= 0, got {lam!r}")
    return value


def check_gamma(gamma) -> float:
    """0 < gamma <= 1, or ValueError naming `gamma`."""
    try:
        value = float(gamma)
    except (TypeError, ValueError) as error:
        raise TypeError(f"gamma: expected a number in (0, 1], got {gamma!r}") from error
    if not 0.0 < value <= 1.0:
        raise ValueError(f"gamma: expected a number in (0, 1] (the online-EWC decay), got {gamma!r}")
    return value


class _Diagonal:
    """F = diag(values); values : (P,)."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.values * v


class _Dense:
    """F : (P, P) as an array."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.matrix @ v


class _WeightedSum:
    """F = sum_k w_k F_k for operators F_k with matvec."""

    def __init__(self, terms):
        self.terms = list(terms)  # [(weight, operator), ...]

    def matvec(self, v: np.ndarray) -> np.ndarray:
        out = np.zeros_like(v)
        for weight, operator in self.terms:
            out += weight * operator.matvec(v)
        return out


def as_curvature_operator(curvature, n_params: int, name: str = "curvature"):
    """Validate a curvature for P = n_params parameters; return an object with ``matvec``.

    Accepts a (P,) array (diagonal), a (P, P) array (dense), or any object with
    ``matvec(v : (P,)) -> (P,)``. Raises ValueError naming `name` on a shape mismatch or
    non-finite values, TypeError on anything else.
    """
    if hasattr(curvature, "matvec") and not isinstance(curvature, np.ndarray):
        if isinstance(curvature, _Diagonal | _Dense | _WeightedSum):
            return curvature
        probe = np.asarray(curvature.matvec(np.ones(n_params)))
        if probe.shape != (n_params,):
            raise ValueError(
                f"{name}: matvec of a ({n_params},) vector returned shape {probe.shape}; expected a curvature "
                f"for {n_params} parameters"
            )
        if not np.all(np.isfinite(probe)):
            raise ValueError(f"{name}: matvec returned non-finite values")
        return curvature
    if curvature is None or isinstance(curvature, str | bytes):
        raise TypeError(f"{name}: expected a (P,) diagonal, a (P, P) matrix or an object with .matvec, got {curvature!r}")
    array = as_float_array(curvature, name)
    if array.shape == (n_params,):
        return _Diagonal(array)
    if array.shape == (n_params, n_params):
        return _Dense(array)
    raise ValueError(
        f"{name}: expected shape ({n_params},) (diagonal) or ({n_params}, {n_params}) (dense) to match "
        f"theta, got {array.shape}"
    )


def _check_vectors(theta, anchor):
    theta = as_float_array(theta, "theta", ndim=1)
    anchor = as_float_array(anchor, "anchor", ndim=1)
    if anchor.shape != theta.shape:
        raise ValueError(f"anchor: expected shape {theta.shape} to match theta, got {anchor.shape}")
    return theta, anchor


# ----------------------------------------------------------------------------- one quadratic
def _quadratic_penalty(theta, anchor, operator, lam):
    d = theta - anchor
    Fd = operator.matvec(d)
    return 0.5 * lam * float(d @ Fd), lam * Fd


@finite_or_refused
def penalty_and_grad(theta, anchor, curvature, lam) -> tuple[float, np.ndarray]:
    """Omega(theta) = lambda/2 (theta - theta*)^T F (theta - theta*) and its gradient lambda F (theta - theta*).

    Parameters
    ----------
    theta : (P,) current parameters
    anchor : (P,) theta*, the optimum of the old task(s)
    curvature : (P,) diagonal F_i, (P, P) matrix, or an object with ``matvec(v) -> (P,)``
    lam : lambda >= 0

    Returns
    -------
    value : float, lambda/2 sum_i F_i (theta_i - theta*_i)^2 for a diagonal F
    grad : (P,)

    Raises
    ------
    ValueError
        lam < 0 or not finite ('lam'), shape mismatches ('anchor', 'curvature').
    """
    lam = check_lambda(lam)
    theta, anchor = _check_vectors(theta, anchor)
    return _quadratic_penalty(theta, anchor, as_curvature_operator(curvature, theta.size), lam)


def penalty(theta, anchor, curvature, lam) -> float:
    """Omega(theta) only; see :func:`penalty_and_grad`."""
    return penalty_and_grad(theta, anchor, curvature, lam)[0]


def merge_quadratics(anchors, curvatures):
    """One quadratic equal to the sum of diagonal quadratics: (Fsum, m, c) with

        sum_t 1/2 sum_i F_t,i (theta_i - theta*_t,i)^2 = 1/2 sum_i Fsum_i (theta_i - m_i)^2 + c   for all theta,

    Fsum = sum_t F_t, m = sum_t F_t theta*_t / Fsum (m_i = 0 where Fsum_i = 0: no penalty there),
    c = 1/2 (sum_t sum_i F_t,i theta*_t,i^2 - sum_i Fsum_i m_i^2).

    Parameters
    ----------
    anchors : list of (P,) theta*_t
    curvatures : list of (P,) diagonals F_t >= 0

    Returns
    -------
    fisher_sum : (P,), mean : (P,), constant : float
    """
    anchors = [as_float_array(a, f"anchors[{t}]", ndim=1) for t, a in enumerate(anchors)]
    curvatures = [as_float_array(f, f"curvatures[{t}]", ndim=1) for t, f in enumerate(curvatures)]
    if not anchors or len(anchors) != len(curvatures):
        raise ValueError(f"curvatures: expected one per anchor ({len(anchors)}), got {len(curvatures)}")
    for t, (a, f) in enumerate(zip(anchors, curvatures, strict=True)):
        if a.shape != anchors[0].shape or f.shape != a.shape:
            raise ValueError(f"curvatures[{t}]/anchors[{t}]: expected shape {anchors[0].shape}, got {f.shape} and {a.shape}")
        if np.any(f < 0):
            raise ValueError(f"curvatures[{t}]: expected a non-negative diagonal")
    fisher_sum = np.sum(curvatures, axis=0)
    weighted = np.sum([f * a for a, f in zip(anchors, curvatures, strict=True)], axis=0)
    mean = np.divide(weighted, fisher_sum, out=np.zeros_like(weighted), where=fisher_sum > 0)
    constant = 0.5 * (sum(float(f @ a**2) for a, f in zip(anchors, curvatures, strict=True)) - float(fisher_sum @ mean**2))
    return fisher_sum, mean, constant


# ----------------------------------------------------------------------------- multi-task penalties
class Penalty:
    """The penalty Omega(theta) for the next task, grown by :meth:`consolidate` after each task.

    Parameters
    ----------
    lam : lambda >= 0
    kind : 'separate' (Kirkpatrick), 'accumulated' (Huszar), 'online' (Schwarz) or 'l2'
    gamma : decay of 'online', 0 < gamma <= 1 (ignored otherwise)

    Use::

        omega = Penalty(lam=100.0, kind="online", gamma=0.9)
        omega.value_and_grad(theta)            # (0.0, zeros) before any task
        omega.consolidate(theta_star, F)        # after each task, F : (P,) or .matvec
    """

    def __init__(self, lam: float, kind: str = "separate", gamma: float = 1.0):
        self.lam = check_lambda(lam)
        self.kind = check_choice(kind, "kind", PENALTIES)
        self.gamma = check_gamma(gamma)
        self.n_params: int | None = None
        self.n_tasks = 0
        self.anchors: list[np.ndarray] = []  # separate / l2: one per task; else [latest]
        self.operators: list = []  # separate: one per task; accumulated/online: [combined]

    def consolidate(self, theta_star, curvature=None) -> None:
        """Add a finished task with optimum theta_star (P,) and curvature F_t (ignored for 'l2')."""
        theta_star = as_float_array(theta_star, "theta_star", ndim=1)
        if self.n_params is None:
            self.n_params = theta_star.size
        elif theta_star.shape != (self.n_params,):
            raise ValueError(f"theta_star: expected shape ({self.n_params},) like the earlier tasks, got {theta_star.shape}")
        if self.kind == "l2":
            operator = _Diagonal(np.ones(self.n_params, dtype=theta_star.dtype))
        else:
            operator = as_curvature_operator(curvature, self.n_params)
        anchor = theta_star.copy()
        if self.kind in ("separate", "l2"):
            self.anchors.append(anchor)
            self.operators.append(operator)
        else:
            decay = self.gamma if self.kind == "online" else 1.0
            previous = self.operators[0] if self.operators else None
            self.anchors = [anchor]
            self.operators = [_combine(previous, decay, operator)]
        self.n_tasks += 1

    def value_and_grad(self, theta) -> tuple[float, np.ndarray]:
        """(Omega(theta), grad Omega(theta) : (P,)); zero before the first consolidate."""
        theta = as_float_array(theta, "theta", ndim=1)
        if self.n_params is not None and theta.shape != (self.n_params,):
            raise ValueError(f"theta: expected shape ({self.n_params},) like the consolidated tasks, got {theta.shape}")
        return self._value_and_grad(theta)

    def _value_and_grad(self, theta):
        value, grad = 0.0, np.zeros_like(theta)
        for anchor, operator in zip(self.anchors, self.operators, strict=True):
            v, g = _quadratic_penalty(theta, anchor, operator, self.lam)
            value += v
            grad += g
        return value, grad

    def curvature_diagonal(self) -> np.ndarray | None:
        """The combined diagonal sum_t F_t (separate), or F of accumulated/online, when all are diagonal."""
        if not self.operators or not all(isinstance(op, _Diagonal) for op in self.operators):
            return None
        return np.sum([op.values for op in self.operators], axis=0)

    def __repr__(self) -> str:
        gamma = f", gamma={self.gamma}" if self.kind == "online" else ""
        return f"Penalty(lam={self.lam}, kind={self.kind!r}{gamma}, tasks={self.n_tasks})"


def _combine(previous, decay: float, new):
    """decay * previous + new, kept as one vector when both are diagonal."""
    if previous is None:
        return new
    if isinstance(previous, _Diagonal) and isinstance(new, _Diagonal):
        return _Diagonal(decay * previous.values + new.values)
    terms = previous.terms if isinstance(previous, _WeightedSum) else [(1.0, previous)]
    return _WeightedSum([(decay * w, op) for w, op in terms] + [(1.0, new)])
