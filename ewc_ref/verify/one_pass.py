"""Everything ``diagnose`` needs of a diagonal THEIRS, from ONE forward and backward pass over the rows.

The deterministic candidates (empirical, exact, pred), the mean gradient, the per-example
gradients on the screen's entries and the exact moments of a one-sample mc estimate all derive
from the output Jacobian J_n. Back-propagating a basis b_nk (k = 1..K) of the output space gives
u_nk = J_n^T b_nk in every layer (the deltas), and each quantity is a per-row combination:

=================  ==============================================  ===========================================
likelihood         basis b_nk, weight w_nk                         a gradient r_n = d l / d f (y_n)
=================  ==============================================  ===========================================
categorical        b_nk = d l / d f at label k (= p_n - e_k),      b at the label's index (a gather):
(dependent         w_nk = p_nk, K = C: the label enumeration of    empirical: y_n, pred: argmax p_n, mc: drawn
outputs)           ``label_quadrature``
gaussian,          b_nk = e_k (unit vectors), w_nk = m2_nk of       sum_k r_nk u_nk
bernoulli          ``gradient_cumulants`` (= diag Lambda_n), K = C
=================  ==============================================  ===========================================

In both cases Lambda_n = sum_k w_nk b_nk b_nk^T (categorical: sum_k p_k (p - e_k)(p - e_k)^T =
diag(p) - p p^T), so the exact Fisher's diagonal is sum_{n,k} w_nk u_nk^2 -- a sum of
non-negative terms, accurate to round-off even for saturated outputs (no 1 - p_m cancels: the
label gradient's own entry is -(1 - p_k) computed as the complement, ``softmax_and_complement``).
For a Linear layer, u's weight entry (i, j) is delta_nki a_nj, so every diagonal is one GEMM
s^T (a * a) with s_n = sum_k w_nk delta_nk^2 (exact) or delta_{n,y_n}^2 (empirical, pred).

The categorical label gradients ARE the mc moments' quadrature vectors (``statistics``, (S2)),
and the unit-vector deltas are the columns of J that the cumulant formulas need, so the mc test
costs no backward pass of its own; a genuine one-sample draw is the gather of u at a label drawn
from p_n (``draw_label_indices``, inverse-CDF sampling), summed over rows by one GEMM.

Cost: one forward and a K = C-vector backward pass (the exact diagonal Fisher alone propagates
C - 1), the three diagonal GEMMs, the mean gradient's GEMM and the mc covariance's syrk (BLAS: ~2x
one exact diagonal Fisher at 784-256-256-10); the rest reads each chunk's arrays once in memory
order (label_kernels: the squares, the entries' gather, the drawn labels' rows -- S M additions per
row, not a one-hot GEMM's K S M). When the screen's entries are the mc entries (diagnose), the
per-example gradients at the observed and most probable labels are rows of u (a gather). Memory
one chunk of rows plus the (N, M_screen) outputs.
Naive twins: ``fisher_unchecked`` per estimator, ``statistics.entry_moments`` (its J columns from
C unit backward vectors), ``curvature.entries.grad_entries`` / ``curvature.entries.per_sample_grad_entries``
(tests/verify/test_one_pass.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..curvature import budget, kernels, label_kernels
from ..curvature.entries import entry_locations
from ..model.likelihoods import Categorical, Likelihood, softmax_and_complement
from ..model.mlp import MLP
from .statistics import cumulant_moments

#: The deterministic candidates this pass computes (the estimator table's diagnose == 'fit' rows).
PASS_ESTIMATORS = ("empirical", "exact", "pred")


@dataclass
class DiagPass:
    """The arrays of one pass (module docstring), means over the N rows."""

    matrices: dict  # {estimator: (P,) diagonal}, PASS_ESTIMATORS
    mean_gradient: np.ndarray  # (P,) m = 1/N sum_n g_n at the observed labels
    grad_entries: np.ndarray  # (N, M_screen) g_n on screen_cols, rows in order
    mc_mean: np.ndarray  # (M_mc,) exact Fisher on mc_cols
    mc_cov: np.ndarray  # (M_mc, M_mc) covariance of a one-sample mc estimate there, statistics (S2)
    mc_draws: np.ndarray  # (bootstrap, M_mc) genuine one-sample mc estimates there
    kfac_diagonals: dict | None = None  # {estimator: (P,) diag(G (x) A)} of the KFAC of each PASS_ESTIMATORS row
    pred_entries: np.ndarray | None = None  # (N, M_screen) per-example gradients at the most probable labels
    pred_labels: object = None  # (N,) or (N, C) the most probable labels, in row order
    sampled_entries: np.ndarray | None = None  # (N, M_mc) g_n on mc_cols at the labels of the first mc draw (sampled.py)


def draw_label_indices(weights: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n, draws) label indices k ~ weights[n] (rows summing to 1), by inverse-CDF sampling.

    One uniform per draw; a label whose probability is below the CDF's round-off (~1e-16) is
    never drawn, which changes a draw's distribution by less than that probability.
    """
    cdf = np.cumsum(weights, axis=1)
    u = rng.random((weights.shape[0], draws)) * cdf[:, -1:]
    idx = np.zeros(u.shape, dtype=np.intp)
    for k in range(weights.shape[1] - 1):  # the labels whose CDF u passes (the last is the minimum's cap)
        idx += u >= cdf[:, k:k + 1]
    return idx


#: (S, M) sum_n q[idx[n, s], n, :] for q : (K, n, M), idx : (n, S) (the bootstrap draws: a gather of S
#: rows per example). Naive twin: ``sum(q[idx[row, s], row] for row in range(n))`` (tests/verify/test_one_pass.py).
gathered_squares = label_kernels.gathered_squares


def rows_per_chunk(model: MLP, n_vectors: int, n_cols: int, cumulant: bool = False) -> int:
    """Rows per chunk: K deltas of every layer, K x |cols| entries and the forward cache within CHUNK_BYTES;
    with `cumulant` (labels independent of each other: gaussian, bernoulli) also the |cols| x |cols|
    matrix s of statistics.cumulant_moments and the temporary of its product (2 |cols|^2 per row)."""
    per_row = n_vectors * (sum(out for out, _ in model.shapes) + 2 * n_cols) + sum(model.layer_sizes)
    if cumulant:
        per_row += 2 * n_cols**2
    return max(1, budget.CHUNK_BYTES // (8 * per_row))


def diag_pass(model: MLP, lik: Likelihood, x: np.ndarray, y, screen_cols: np.ndarray, mc_cols: np.ndarray,
              bootstrap: int, rng: np.random.Generator, chunk_size: int | None = None, meter=None,
              chunk_cols: int | None = None) -> DiagPass:
    """One pass over the rows: every array of DiagPass (module docstring), in float64 whatever the model's dtype.

    Parameters
    ----------
    model, lik, x, y : trusted (x, y from check_model_data)
    screen_cols : (M_s,) sorted, unique flat indices for the per-example gradients (the batched screen)
    mc_cols : (M_mc,) sorted, unique flat indices for the mc moments (statistics (S2))
    bootstrap : genuine one-sample mc estimates to draw on mc_cols (labels from the model, with `rng`)
    chunk_size : rows per chunk (default ``rows_per_chunk``); results do not depend on it beyond round-off
    meter : a progress.Progress counting rows (``update`` per chunk), or None
    chunk_cols : the entries the default chunk is sized for (default mc_cols.size). ``rows_per_chunk`` counts
        the K x M gathered entries but only part of the temporaries that do not depend on M (measured
        14,300 float64 per row against 6,526 counted at 784-256-256-10), so a screen made smaller by
        budget.SCREEN_BYTES would enlarge the chunk and those temporaries (51 -> 63 MiB at N = 50,000):
        diagnose sizes it for the screen's entries before the budget

    Returns
    -------
    DiagPass with means over the N rows: empirical, exact, pred diagonals (P,), m (P,), the
    (N, M_s) per-example gradients, on mc_cols the exact Fisher, the one-sample covariance
    (1/N^2 sum_n Cov_n) and the (bootstrap, M_mc) draws, and the diagonals of the KFAC of each
    estimator, diag(G (x) A)_(i,j) = G_ii A_jj (twin: ``fisher(structure='kfac').diagonal``).
    """
    model = model.with_theta(model.theta.astype(np.float64)) if model.theta.dtype != np.float64 else model
    n, p, c = x.shape[0], model.n_params, model.n_outputs
    dependent = lik.gradient_cumulants(np.zeros((1, c))) is None
    n_basis = len(lik.label_quadrature(np.zeros((1, c)))[0]) if dependent else c
    screen_at, mc_at = _locations(model, screen_cols), _locations(model, mc_cols)
    same_cols = np.array_equal(screen_cols, mc_cols)
    chunk = chunk_size or rows_per_chunk(model, n_basis, chunk_cols or mc_cols.size, cumulant=not dependent)
    sums = np.zeros((len(PASS_ESTIMATORS), p))
    grad_sum = np.zeros(p)
    grad_entries = np.empty((n, screen_cols.size))
    pred_entries = np.empty((n, screen_cols.size))
    pred_labels = []
    mc_mean, mc_cov = np.zeros(mc_cols.size), np.zeros((mc_cols.size, mc_cols.size))
    draws = np.zeros((bootstrap, mc_cols.size))
    # the first draw's per-example gradients (a gather), float32: sampled.py's tests are statistical (noise >> 1e-7)
    sampled = np.empty((n, mc_cols.size), dtype=np.float32) if bootstrap else None
    # the Kronecker factors' diagonals: G_ii = 1/N sum_n s_ni (the squared deltas of each estimator), A_jj = 1/N sum_n a_nj^2
    g_diag = [np.zeros((len(PASS_ESTIMATORS), out)) for out, _ in model.shapes]
    a_diag = [np.zeros(inp) for _, inp in model.shapes]
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        f, cache = model.forward(x[rows].astype(np.float64, copy=False))
        basis = _Basis(lik, f, y[rows], dependent)
        pred_labels.append(basis.predicted)
        weights = basis.weights
        deltas = kernels.backward_deltas(model.weights, cache.activation_caches, basis.vectors)  # (K, n, out_l) per layer
        observed, predicted = [], []
        for l, delta in enumerate(deltas):
            gradient = basis.pick(delta, "empirical")
            observed.append(gradient)
            predicted.append(None if same_cols else basis.pick(delta, "pred"))
            s = basis.squares(delta)  # (n, 3 out): PASS_ESTIMATORS side by side
            a = cache.inputs[l]
            a2 = np.square(a)
            sums[:, model.weight_slices[l]] += (s.T @ a2).reshape(len(PASS_ESTIMATORS), -1)  # one GEMM
            g_diag[l] += s.sum(axis=0).reshape(len(PASS_ESTIMATORS), -1)
            a_diag[l] += a2.sum(axis=0)
            grad_sum[model.weight_slices[l]] += (gradient.T @ a).ravel()
            if model.has_bias[l]:
                sums[:, model.bias_slices[l]] += s.sum(axis=0).reshape(len(PASS_ESTIMATORS), -1)
                grad_sum[model.bias_slices[l]] += gradient.sum(axis=0)
        u = np.empty(basis.vectors.shape[:2] + (mc_cols.size,))  # u_nk on mc_cols : (K, n, M)
        for pos, l, i, j in mc_at:
            label_kernels.gather_entries(deltas[l], cache.inputs[l], i, j, out=u, offset=pos.start)
        if same_cols:  # the screen's gradients are the basis' u at the row's label (diagnose: one set of entries)
            grad_entries[rows], pred_entries[rows] = basis.pick(u, "empirical"), basis.pick(u, "pred")
        else:
            for pos, l, i, j in screen_at:
                grad_entries[rows, pos] = label_kernels.gather_entries(observed[l][None], cache.inputs[l], i, j)[0]
                pred_entries[rows, pos] = label_kernels.gather_entries(predicted[l][None], cache.inputs[l], i, j)[0]
        if dependent:  # u_nk = J^T (d l / d f at label k), drawn with probability w_nk
            q = u * u
            if bootstrap:
                idx = draw_label_indices(weights, bootstrap, rng)
                draws += gathered_squares(q, idx)
                sampled[rows] = u[idx[:, 0], np.arange(idx.shape[0])]
            mean, cov = label_moments(weights, q)
        else:  # u = the columns of J, e_c independent with moments (m2, k4)
            u = np.moveaxis(u, 0, 1)
            diagonal = np.arange(mc_cols.size)
            mean, cov = cumulant_moments(*lik.gradient_cumulants(f), u, diagonal, diagonal)
            mean = mean.sum(axis=0)
            if bootstrap:
                labels = lik.sample(f, rng, bootstrap)  # (n, S, ...)
                r = np.stack([lik.grad(f, labels[:, s]) for s in range(bootstrap)], axis=1)  # (n, S, C)
                draws += np.einsum("nse,nse->se", g := np.matmul(r, u), g)
                sampled[rows] = g[:, 0]
        mc_mean += mean
        mc_cov += cov
        if meter is not None:
            meter.update(rows.stop - rows.start)
    matrices = {name: total / n for name, total in zip(PASS_ESTIMATORS, sums, strict=True)}
    kfac = {name: np.zeros(p) for name in PASS_ESTIMATORS}
    for l in range(len(model.shapes)):
        for e, name in enumerate(PASS_ESTIMATORS):
            g = g_diag[l][e] / n
            kfac[name][model.weight_slices[l]] = np.outer(g, a_diag[l] / n).ravel()
            if model.has_bias[l]:
                kfac[name][model.bias_slices[l]] = g  # the bias input is the constant 1 (joined or separate alike)
    return DiagPass(matrices, grad_sum / n, grad_entries, mc_mean / n, mc_cov / n**2, draws / n, kfac, pred_entries,
                    np.concatenate(pred_labels), sampled)


def label_moments(weights: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """statistics.quadrature_moments on diagonal entries summed over rows, q = u^2 in (K, n, M) layout (overwritten).

    Returns sum_n E_n[q] : (M,) and sum_n Cov_n[q] : (M, M), label k drawn with probability
    w_nk; the covariance as one symmetric rank update (BLAS syrk) of sqrt(w) (q - E q). Twin:
    ``quadrature_moments(weights, moveaxis(u, 0, 1), d, d)`` with d = arange(M) (tests/verify/test_one_pass.py).
    """
    mean = np.einsum("kn,knm->nm", weights.T, q)
    q -= mean
    q *= np.sqrt(weights.T)[:, :, None]
    return mean.sum(axis=0), kernels.gram(q.reshape(-1, q.shape[-1]))


def _locations(model: MLP, cols: np.ndarray) -> list[tuple[slice, int, np.ndarray, np.ndarray]]:
    """Per layer l with entries in `cols` (sorted): (their positions, l, output index i, input index j or -1 for a bias).

    cols sorted puts a layer's weight entries and then its bias entries at consecutive positions.
    """
    by_layer = {}
    for pos, l, i, j in entry_locations(model, cols):
        by_layer.setdefault(l, []).append((pos, i, np.full(i.size, -1) if j is None else j))
    out = []
    for l, parts in sorted(by_layer.items()):
        pos = np.concatenate([part[0] for part in parts])
        if not np.array_equal(pos, np.arange(pos[0], pos[0] + pos.size)):
            raise AssertionError("cols must be sorted")
        out.append((slice(int(pos[0]), int(pos[0]) + pos.size), l, np.concatenate([part[1] for part in parts]),
                    np.concatenate([part[2] for part in parts])))
    return out


class _Basis:
    """The basis of the module docstring's table for one chunk of rows: vectors b : (K, n, C), weights w : (n, K)."""

    def __init__(self, lik: Likelihood, f: np.ndarray, y, dependent: bool):
        labels_of = {"empirical": y, "pred": lik.most_probable(f)}
        self.predicted = labels_of["pred"]
        self.dependent = dependent
        if dependent:  # the gradient at every label: a row's gradient is one of them (an index)
            labels, self.weights = lik.label_quadrature(f)
            self.vectors = _label_gradients(lik, f, labels)
            self.index = {name: _label_index(labels, value) for name, value in labels_of.items()}
        else:  # unit vectors: a row's gradient r has coefficients r
            self.weights = lik.gradient_cumulants(f)[0]
            self.vectors = np.broadcast_to(np.eye(f.shape[1])[:, None, :], (f.shape[1],) + f.shape)
            self.coefficients = {name: lik.grad(f, value) for name, value in labels_of.items()}

    def pick(self, v: np.ndarray, name: str) -> np.ndarray:
        """v : (K, n, ...) of the basis -> (n, ...) at the estimator's gradient (observed labels for
        'empirical', the most probable for 'pred')."""
        if self.dependent:
            return v[self.index[name], np.arange(v.shape[1])]
        return np.einsum("nk,kn...->n...", self.coefficients[name], v)

    def squares(self, delta: np.ndarray) -> np.ndarray:
        """(n, 3 out): the squares of the empirical, exact and pred gradients' deltas (PASS_ESTIMATORS order)."""
        if self.dependent:
            return label_kernels.label_squares(delta, self.weights, self.index["empirical"], self.index["pred"])
        return np.concatenate([np.square(self.pick(delta, "empirical")),
                               np.einsum("nk,kno->no", self.weights, delta * delta),
                               np.square(self.pick(delta, "pred"))], axis=1)


def _label_gradients(lik: Likelihood, f: np.ndarray, labels: list) -> np.ndarray:
    """(K, n, C) d l / d f at every label of the enumeration. Categorical (label k = class k for every row):
    p with entry k replaced by -(1 - p_k), from one softmax (``Categorical.grad`` per label, bit for bit)."""
    if isinstance(lik, Categorical):
        p, q = softmax_and_complement(f)
        vectors = np.repeat(p[None], len(labels), axis=0)
        k = np.arange(len(labels))
        vectors[k, :, k] = -q.T
        return vectors
    return np.stack([lik.grad(f, label) for label in labels])


def _label_index(labels: list, y) -> np.ndarray:
    """(n,) index k with labels[k][n] == y[n] (the enumeration holds every label exactly once)."""
    n = len(labels[0])
    match = np.stack([np.all((np.asarray(label) == y).reshape(n, -1), axis=1) for label in labels], axis=1)
    if not np.all(match.sum(axis=1) == 1):
        raise AssertionError("a label is not in the likelihood's enumeration exactly once")
    return np.argmax(match, axis=1)
