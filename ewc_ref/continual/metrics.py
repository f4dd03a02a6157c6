"""Continual-learning metrics: the accuracy matrix and what it summarises, and F-weighted drift.

Accuracy matrix (Lopez-Paz & Ranzato 2017): R : (T, T), R[i, j] = test accuracy on task j after
training tasks 0..i. Entries above the diagonal (j > i, tasks not yet trained) are measured too
(in class-incremental learning they are 0: the classes of a later task are not yet in the head).

=====================  ======================================================================
average accuracy       A = 1/T sum_j R[T-1, j]                       (after the last task)
forgetting             F = 1/(T-1) sum_{j<T-1} (max_{j<=i<T-1} R[i, j] - R[T-1, j])
                       (Chaudhry et al. 2018: the drop from the best accuracy a task ever had)
backward transfer      BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])   (negative = forgetting)
plasticity             1/T sum_j R[j, j]  (accuracy on each task just after learning it)
=====================  ======================================================================

F-weighted drift (what the report's Fig. 4 illustrates): after training later tasks, how far
did the parameters move from the optimum theta*_t of task t, measured where task t cares?

    weighted drift = sum_i F_t,i (theta_i - theta*_t,i)^2      (= 2 Omega_t / lambda)
    euclidean drift = sum_i (theta_i - theta*_t,i)^2

and the RMS movement of the parameters in the top decile of F_t versus the rest. EWC should
move the important (high-F) parameters much less than SGD does, and is free to move the rest.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_float_array


def check_accuracy_matrix(R) -> np.ndarray:
    """R : (T, T) with T >= 1 and entries in [0, 1], or ValueError naming `R`."""
    R = as_float_array(R, "R", ndim=2)
    if R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R: expected a square (T, T) accuracy matrix, got shape {R.shape}")
    if np.any(R < 0) or np.any(R > 1):
        raise ValueError("R: accuracies must lie in [0, 1]")
    return R


def average_accuracy(R) -> float:
    """A = 1/T sum_j R[T-1, j]."""
    R = check_accuracy_matrix(R)
    return float(R[-1].mean())


def forgetting(R) -> float:
    """1/(T-1) sum_{j<T-1} (max_{j<=i<T-1} R[i, j] - R[T-1, j]); 0.0 when T = 1."""
    R = check_accuracy_matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]); 0.0 when T = 1."""
    R = check_accuracy_matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean(R[T - 1, : T - 1] - np.diag(R)[: T - 1]))


def plasticity(R) -> float:
    """1/T sum_j R[j, j]: how well each task is learnt when it is the current one."""
    R = check_accuracy_matrix(R)
    return float(np.diag(R).mean())


def summarize(R) -> dict[str, float]:
    """All four scalar summaries of R, by name."""
    return {
        "average_accuracy": average_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
        "plasticity": plasticity(R),
    }


def fisher_weighted_drift(theta, anchor, fisher_diag, top_fraction: float = 0.1) -> dict[str, float]:
    """How far theta moved from anchor, weighted by a diagonal Fisher, and split by importance.

    Parameters
    ----------
    theta, anchor : (P,) current parameters and theta*_t
    fisher_diag : (P,) F_t >= 0 (the diagonal of task t's Fisher)
    top_fraction : share of parameters counted as "important": those with the largest F_t

    Returns
    -------
    dict with
      weighted : sum_i F_i d_i^2 (d = theta - anchor)
      euclidean : sum_i d_i^2
      rms_important : sqrt(mean d_i^2) over the top `top_fraction` of F (ties broken by index)
      rms_other : sqrt(mean d_i^2) over the remaining parameters
    """
    theta = as_float_array(theta, "theta", ndim=1)
    anchor = as_float_array(anchor, "anchor", ndim=1)
    fisher_diag = as_float_array(fisher_diag, "fisher_diag", ndim=1)
    if anchor.shape != theta.shape or fisher_diag.shape != theta.shape:
        raise ValueError(f"anchor/fisher_diag: expected shape {theta.shape} like theta, got {anchor.shape} and {fisher_diag.shape}")
    if np.any(fisher_diag < 0):
        raise ValueError("fisher_diag: expected non-negative entries (a Fisher diagonal)")
    if not 0.0 < top_fraction < 1.0:
        raise ValueError(f"top_fraction: expected a number in (0, 1), got {top_fraction}")
    d2 = (theta - anchor) ** 2
    k = max(1, int(round(top_fraction * theta.size)))
    order = np.argsort(-fisher_diag, kind="stable")
    important, other = order[:k], order[k:]
    return {
        "weighted": float(fisher_diag @ d2),
        "euclidean": float(d2.sum()),
        "rms_important": float(np.sqrt(d2[important].mean())),
        "rms_other": float(np.sqrt(d2[other].mean())) if other.size else 0.0,
    }
