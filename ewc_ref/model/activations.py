"""Hidden-layer activations, registered in one table.

Each activation is a handful of lines: its value, first and second derivative
(the second is needed by the exact Hessian's R-op pass). Derivatives are given
in terms of both the pre-activation ``z`` and the activation ``a = phi(z)``, so
the cheap form (``1 - a**2`` for tanh) can be used without recomputing phi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity phi with phi', phi''.

    Attributes
    ----------
    name : str
    value : z -> phi(z)
    derivative : (z, a) -> phi'(z)
    second_derivative : (z, a) -> phi''(z)
    curved : False when phi'' = 0 (almost) everywhere, so the Hessian has no activation-curvature
        term (the cost model of curvature/diag_hessian.py reads it; a test checks it against phi'')
    """

    name: str
    value: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]
    second_derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]
    curved: bool = True


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(z/2)) is overflow-free and exact to round-off in both tails.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(
        "identity",
        value=lambda z: z,
        derivative=lambda z, a: np.ones_like(z),
        second_derivative=lambda z, a: np.zeros_like(z),
        curved=False,
    ),
    # relu'(0) := 0, as in PyTorch; relu'' = 0 almost everywhere.
    "relu": Activation(
        "relu",
        value=lambda z: np.maximum(z, 0),
        derivative=lambda z, a: (z > 0).astype(z.dtype),
        second_derivative=lambda z, a: np.zeros_like(z),
        curved=False,
    ),
    "tanh": Activation(
        "tanh",
        value=np.tanh,
        derivative=lambda z, a: 1 - a * a,
        second_derivative=lambda z, a: -2 * a * (1 - a * a),
        curved=True,
    ),
    "sigmoid": Activation(
        "sigmoid",
        value=_sigmoid,
        derivative=lambda z, a: a * (1 - a),
        second_derivative=lambda z, a: a * (1 - a) * (1 - 2 * a),
        curved=True,
    ),
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name; ValueError lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}") from None
