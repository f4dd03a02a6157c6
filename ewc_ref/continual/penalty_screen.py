"""Which minibatch size: 'batched' for every B, screened on a few entries of W (penalty_names, eq N1).

Fitting the rows of (N1) with the full batched Fisher of every B = 2..N costs T N ln N P (prefix
sums of (P,) vectors). When that is above ``penalty_names.BATCHED_LIMIT``, the same fit is made on
M <= SCREEN_ENTRIES entries where W is nonzero: per-example gradients on those entries
(``curvature.entries``, no (N, P) matrix) and their prefix sums s_m = sum_{n < m} g_n give, for
every B,

    F_B[cols] = 1/K sum_k ((s_{e_k} - s_{b_k}) / (e_k - b_k))^2,   K = ceil(N / B)           (S1)

over the runs [b_k, e_k) of ``curvature.batched.batch_bounds`` (T N ln N M work). A row that fits
W on all entries fits it on every subset, so the B whose best row fits the screened entries within
10 x tol (at most CONFIRM of them) are the only ones worth computing on all entries; when none
does, the closest B is reported, measured on the screened entries only.
"""

from __future__ import annotations

import numpy as np

from ..curvature.batched import batch_bounds
from ..curvature.entries import grad_entries

#: Entries of W the screen looks at (all when fewer are nonzero).
SCREEN_ENTRIES = 256
#: At most this many B that fit on the screen are computed on all entries.
CONFIRM = 3


def screen_entries(w: np.ndarray, rng) -> np.ndarray:
    """(M,) sorted indices where w != 0, at most SCREEN_ENTRIES of them, drawn by `rng`."""
    nonzero = np.flatnonzero(w)
    if nonzero.size <= SCREEN_ENTRIES:
        return nonzero
    return np.sort(rng.choice(nonzero, SCREEN_ENTRIES, replace=False))


def batched_on_entries(grads: np.ndarray, sizes) -> dict[int, np.ndarray]:
    """{B: F_B on the screened entries (M,)} by (S1) from per-example gradients grads : (N, M)."""
    n = grads.shape[0]
    prefix = np.vstack([np.zeros((1, grads.shape[1])), np.cumsum(grads, axis=0)])  # (N + 1, M)
    out = {}
    for b in sizes:
        starts, ends = batch_bounds(n, b)
        means = (prefix[ends] - prefix[starts]) / (ends - starts)[:, None]
        out[b] = np.mean(means * means, axis=0)
    return out


def screen_batch_sizes(models, lik, data, w, fit_rows, tol: float, rng) -> tuple[list[int], tuple[int, float, int]]:
    """(the B worth confirming on all entries, (closest B, its best row's error on the screen, M)).

    `fit_rows(w_cols, [F_t[cols] for each task], key)` is the row fit of (N1); B runs over 2..min N_t.
    """
    cols = screen_entries(w, rng)
    n = min(x.shape[0] for x, _ in data)
    sizes = range(2, n + 1)
    per_task = [batched_on_entries(grad_entries(m, lik, x, y, cols), sizes)
                for m, (x, y) in zip(models, data, strict=True)]
    errors = {b: min(row.rel_error for row in fit_rows(w[cols], [f[b] for f in per_task], ("batched", b)))
              for b in sizes}
    ranked = sorted(errors, key=lambda b: (errors[b], b))
    chosen = sorted(b for b in ranked[:CONFIRM] if errors[b] <= 10 * tol)
    return chosen, (ranked[0], errors[ranked[0]], int(cols.size))
