"""How far a float32 Fisher can lie from the exact one: a per-entry round-off bound for confident nets.

Diagnose's float32 threshold (scale.ROUNDOFF_TOL, 1e-4 relative) assumes float32 gradients good to
~1e-7 relative. That fails where the softmax cross-entropy output gradient r = p - e_y cancels:
torch computes it as log_softmax's backward, exp(log_softmax(f)) - e_y, and when 1 - p_y is below
float32's unit round-off u = 2^-24 the computed r_y is exactly 0 (not -(1 - p_y)); a confident net's
gradient g = J^T r then misses its J_y term entirely. This module bounds that error per entry.

Output gradient (categorical, per row, logits f exact, weight w = 1 per row or 1/|batch|). Torch's CPU
log_softmax: d = f - max f, S = sum_c exp(d_c), L = log S, log p_c = d_c - L; backward
r_c = w (exp(log p_c) - [c = y]). With theta = (C + 1 + max_c |d_c|) u the relative error of the
computed S (C - 1 additions, exp to 2 ulps, d_c to u |d_c|), the computed q_c = exp(log p_c) has

    |q_c - p_c| <= p_c rho_c,   rho_c = 1.1 (u |d_c| + theta + 2 u (L + theta) + u |log p_c| + 3 u)     (R1)

(first order, 1.1 covering the second; q_y - 1 is exact by Sterbenz for q_y >= 1/2, the product with
w adds u |r_c|, and fl(q_y w) - w another u p_y). When y is the argmax and t = sum_{c != y} exp(d_c) satisfies t (1 + theta) <= u / 2,
every partial sum holding the max term exp(0) = 1 rounds to exactly 1 (1 + x = 1 for x <= 2^-24), so
L = log 1 = 0, log p_y = 0, q_y = 1 and r_y = 0 EXACTLY: the error is |r_y| = t / (1 + t), no more (the
factor 1/2 keeps the regime when their float32 logits move t by a few ulps). So per row

    e_c = p_c rho_c + u |r_c| + [c = y] u p_y + 2^-126  (outside that regime),   e_y = |r_y|  (inside)   (R2)

(2^-126, float32's smallest normal number, covers a p_c that underflows).

Forward. Their float32 logits and activations differ from ours (float64 at the same float32 weights):
with A_0 = 0 (float32 data are exact), a layer adds (fan-in + 2) u (|W| |a| + |b|) and passes its input's
error through |W| and an activation of Lipschitz constant <= 1, which adds 2 u |a| (``forward_errors``,
first order, worst case: ~100x the actual error where |W| |a| >> |W a|). A logit error A_L moves every
p_c by a factor within e^{+-2 max A_L}: e gains expm1(2 max A_L) |r| (not the lost r_y, which is 0 anyway).

Gradient. The error of g = J^T r is at most |J|^T e plus the backward products' own error,
``backward_tol`` |J|^T |r| with backward_tol = 1.1 u sum_l (out_l + 3). One backward pass of
v = w (e + backward_tol |r|) through |W| and phi' >= 0 (every activation here is monotone) gives
D_l >= |J_l|^T v per layer (triangle inequality layer by layer); with the inputs' errors A, the
weight entry (i, j) of a group b (a row, or a minibatch with its weight w) is bounded by
Delta_b(i, j) = sum_{n in b} D_ni |a_nj| + (|delta_ni| + D_ni) A_nj.

Fisher. With G_b the group's gradient and rho_b its weight (loader (O1)), F = 1/K sum_b rho_b G_b^2 and
the float32 F-hat obeys

    |F-hat - F| <= B = 1/K sum_b rho_b (2 |G_b| Delta_b + Delta_b^2) + 1.1 (K + 2) u F + 2^-126        (R3)

(|x^2 - y^2| <= 2 |y| |x - y| + (x - y)^2; K non-negative float32 squares summed in any order and
divided once: ``accumulation_tol``; squares below 2^-126 may underflow). For rows (B = 1) the
expansion of 2 |g| Delta + Delta^2 is three GEMMs per layer; for minibatches two per batch.

Model. The bound is an upper bound, ~30-300x the actual error of a confident net's Fisher (the
logits' worst-case forward error dominates its tightest entries at ~1e-3 relative): too wide to see
a 1e-3 scale bug. The sharp test is a model of torch's computation: ``float32_output_gradient``
reproduces r-hat_y (0 once t <= u, -2^-23 just above, ...: exp(-log(fl(1 + t))) - 1 in float32), and
F-hat from it (``RoundoffBound.modelled``) fits torch's float32 Fisher to ~1e-6 where F does to
1e-3..1. roundoff_verdict.py decides with both. Naive twin of ``fisher_and_bound``: ``bound_loop``
(row by row); the bound against a NumPy float32 imitation and torch:
tests/verify/test_float32_roundoff.py, tests/pytorch/test_float32_confident.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..curvature import budget, kernels
from ..curvature.entries import per_sample_grad_entries
from ..model.mlp import MLP

#: float32 unit round-off.
U32 = 2.0**-24
#: float32's smallest normal number: the absolute error of a result that underflows (subnormal or 0) is below it.
TINY32 = 2.0**-126


def backward_tol(model: MLP) -> float:
    """The relative error of float32 backward products, bounded against |J|^T |r| (module docstring):
    1.1 u sum_l (out_l + 3): a dot product over layer l's out_l outputs, the product with phi', the outer
    product delta_i a_j and one for the scaling by w, first order (1.1 for the second)."""
    return 1.1 * U32 * sum(out + 3 for out, _ in model.shapes)


def accumulation_tol(terms: int) -> float:
    """The relative error of summing `terms` non-negative float32 squares in any order and dividing once:
    1.1 (terms + 2) u (recursive summation's worst case; pairwise summation stays below it)."""
    return 1.1 * (terms + 2) * U32


def output_gradient_bound(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, e, cancelled): the softmax-CE output gradient r = p - e_y (n, C), the bound e (n, C) of (R2)
    on the error of torch's float32 r, and (n,) whether r_y is computed as exactly 0 (1 - p_y lost).

    f : (n, C) logits (float64, taken as exact), y : (n,) integer labels.
    """
    f = np.asarray(f, dtype=np.float64)
    n, c = f.shape
    rows = np.arange(n)
    d = f - f.max(axis=1, keepdims=True)  # <= 0, the max entry exactly 0
    s = np.exp(d)
    total = s.sum(axis=1, keepdims=True)
    log_sum = np.log(total)
    log_p = d - log_sum
    p = s / total
    r = p.copy()
    # 1 - p_y from the other classes (no cancellation): r_y = -(sum_{c != y} s_c) / S
    others = np.where(np.arange(c) == y[:, None], 0.0, s).sum(axis=1)  # not total - s_y: that cancels
    r[rows, y] = -np.where(s[rows, y] >= 0.5 * total[:, 0], others / total[:, 0], 1.0 - p[rows, y])
    theta = U32 * (c + 1 + np.abs(d).max(axis=1, keepdims=True))
    rho = 1.1 * (U32 * np.abs(d) + theta + 2 * U32 * (log_sum + theta) + U32 * np.abs(log_p) + 3 * U32)
    e = p * rho + U32 * np.abs(r) + TINY32  # TINY32: exp(log p_c) underflows below 1e-38
    cancelled = (d[rows, y] == 0) & (others * (1 + theta[:, 0]) <= U32 / 2)
    e[rows, y] += U32 * p[rows, y]  # fl(q_y w) - w: the product's rounding, u q_y w
    e[rows[cancelled], y[cancelled]] = np.abs(r[rows[cancelled], y[cancelled]])
    return r, e, cancelled


def float32_output_gradient(f: np.ndarray, y: np.ndarray, w=1.0) -> np.ndarray:
    """(n, C) w r-hat, a model of torch's float32 w (softmax(f) - e_y), w the loss's weight (a number or (n,) per
    row: 1, or 1/B of a minibatch mean): exact but for r_y of the rows whose label is the argmax, computed as torch does in
    float32 -- q = exp(-log(S)), S = sum_c exp(f_c - f_y) added in class order, then w (q - 1): 0 once the
    others' sum t <= u, -2^-23 w just above, ... (another summation order changes the last bit rarely)."""
    r, _, _ = output_gradient_bound(f, y)
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), (len(f),))
    r *= w[:, None]
    rows, y = np.arange(len(f)), np.asarray(y)
    d = f - f.max(axis=1, keepdims=True)
    top = d[rows, y] == 0
    # S = sum_c exp(d_c) in float32, the classes added in their order (torch's CPU kernel below its vector width;
    # the order decides where t is near a rounding boundary: 1 + a + b rounds twice), exp correctly rounded
    terms = np.exp(d[top]).astype(np.float32)
    total = np.zeros(terms.shape[0], dtype=np.float32)
    for column in terms.T:
        total += column
    total = total.astype(np.float64)
    # log and exp correctly rounded to float32 (as torch's SLEEF kernels are here; NumPy's float32 log is not near 1)
    q = np.exp(-np.log(total).astype(np.float32).astype(np.float64)).astype(np.float32)
    # log_softmax's backward w q - w, one rounding (torch's vectorised kernel fuses it): w (q - 1) to u relative
    r[rows[top], y[top]] = w[top] * (q.astype(np.float64) - 1.0)
    return r


@dataclass
class RoundoffBound:
    """F (P,) of (O1) at our float64 weights, its float32 round-off bound B (P,) of (R3), and how much of
    the output gradient was lost: the fraction of rows with r_y computed as 0."""

    fisher: np.ndarray
    bound: np.ndarray
    cancelled_rows: float
    modelled: np.ndarray  # (P,) the same Fisher from float32_output_gradient's r-hat: torch's float32 result, modelled


def fisher_and_bound(model: MLP, x: np.ndarray, y: np.ndarray, sizes: np.ndarray, reduction: str = "mean",
                     chunk: int | None = None) -> RoundoffBound:
    """F = 1/K sum_b rho_b G_b^2 (loader (O1)), its bound B (R3) and the modelled float32 F-hat, over
    consecutive groups of `sizes` rows.

    Parameters
    ----------
    model : MLP (any dtype; computed in float64)
    x : (M, d) rows in loader order, y : (M,) integer labels (categorical)
    sizes : (K,) group sizes summing to at most M (B = 1: per-example, the empirical / pred Fisher)
    reduction : 'mean' (G_b = 1/|b| sum g_n, rho_b = 1) or 'sum' (rho_b = |b|^2: the summed gradient)
    chunk : rows per chunk of the per-example path (default from budget.CHUNK_BYTES)

    Returns
    -------
    RoundoffBound: fisher, bound, modelled : (P,) and the fraction of rows whose r_y float32 computes as 0
    """
    model = model.with_theta(model.theta.astype(np.float64)) if model.theta.dtype != np.float64 else model
    sizes = np.asarray(sizes, dtype=np.int64)
    abs_weights = [np.abs(w) for w in model.weights]
    tol = backward_tol(model)
    fisher, modelled, bound = (np.zeros(model.n_params) for _ in range(3))
    cancelled = 0

    def add(target, l, weight_part, bias_part):
        target[model.weight_slices[l]] += weight_part.ravel()
        if model.has_bias[l]:
            target[model.bias_slices[l]] += bias_part

    if np.all(sizes == 1):  # per-example: GEMMs of the squares (module docstring)
        m = int(sizes.size)
        step = chunk or max(1, budget.CHUNK_BYTES // (8 * 6 * sum(model.layer_sizes)))
        for start in range(0, m, step):
            rows = slice(start, min(m, start + step))
            layers, lost = _deltas_and_bounds(model, abs_weights, x[rows], y[rows], 1.0, tol)
            cancelled += lost
            for l, (delta, hat, dd, a, err) in enumerate(layers):
                # Delta = D |a| + E A with E = |delta| + D: 2 |g| Delta + Delta^2 expanded into three GEMMs
                a2, big = a * a, np.abs(delta) + dd
                spread = 2 * np.abs(delta) * dd + dd * dd
                add(fisher, l, (delta * delta).T @ a2, (delta * delta).sum(axis=0))
                add(modelled, l, (hat * hat).T @ a2, (hat * hat).sum(axis=0))
                add(bound, l, spread.T @ a2 + (2 * big * big).T @ (np.abs(a) * err) + (big * big).T @ (err * err),
                    spread.sum(axis=0))
    else:  # whole minibatches per chunk of rows: one forward and backward pass per chunk, GEMMs per batch
        step = chunk or max(1, budget.CHUNK_BYTES // (8 * 6 * sum(model.layer_sizes)))
        ends = np.cumsum(sizes)
        starts = ends - sizes
        first = 0
        while first < sizes.size:
            last = first + 1
            while last < sizes.size and ends[last] - starts[first] <= step:
                last += 1
            lo, hi = int(starts[first]), int(ends[last - 1])
            w = np.repeat(1.0 / sizes[first:last] if reduction == "mean" else np.ones(last - first), sizes[first:last])
            layers, lost = _deltas_and_bounds(model, abs_weights, x[lo:hi], y[lo:hi], w, tol)
            cancelled += lost
            for batch in range(first, last):
                rows = slice(int(starts[batch]) - lo, int(ends[batch]) - lo)
                for l, (delta, hat, dd, a, err) in enumerate(layers):
                    delta, hat, dd, a, err = delta[rows], hat[rows], dd[rows], a[rows], err[rows]
                    g, g_hat = delta.T @ a, hat.T @ a
                    spread = dd.T @ np.abs(a) + (np.abs(delta) + dd).T @ err  # Delta_b of the weights
                    gb, hb, db = delta.sum(axis=0), hat.sum(axis=0), dd.sum(axis=0)
                    add(fisher, l, g * g, gb * gb)
                    add(modelled, l, g_hat * g_hat, hb * hb)
                    add(bound, l, 2 * np.abs(g) * spread + spread * spread, 2 * np.abs(gb) * db + db * db)
            first = last
    k = sizes.size
    fisher /= k
    modelled /= k
    bound = bound / k + accumulation_tol(k) * fisher + TINY32  # squares below 2^-126 underflow
    return RoundoffBound(fisher, bound, cancelled / max(1, int(sizes.sum())), modelled)


def modelled_grad_entries(model: MLP, x: np.ndarray, y: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(M, |cols|) per-example gradients J_n^T r-hat_n on the entries `cols`, r-hat from ``float32_output_gradient``:
    the rows' gradients as torch's float32 computes them, up to ordinary round-off (for the batched screen)."""
    model = model.with_theta(model.theta.astype(np.float64)) if model.theta.dtype != np.float64 else model
    m = x.shape[0]
    step = max(1, budget.CHUNK_BYTES // (8 * max(sum(model.layer_sizes), cols.size)))
    out = np.empty((m, cols.size))
    for start in range(0, m, step):
        rows = slice(start, min(m, start + step))
        f, cache = model.forward(np.asarray(x[rows], dtype=np.float64))
        out[rows] = per_sample_grad_entries(model, cache, float32_output_gradient(f, np.asarray(y[rows])), cols)
    return out


def forward_errors(model: MLP, cache) -> list[np.ndarray]:
    """Per layer l the bound A_l (n, in_l) on the float32 error of its input a_{l-1}, and last the logits' (n, C).

    Float32 data are exact (A_0 = 0); a layer's affine map adds (fan-in + 2) u (|W| |a| + |b|) (a dot
    product of fan-in terms and the bias), the error of its input propagates through |W| and an
    activation of Lipschitz constant <= 1 (relu, tanh, sigmoid, identity), which adds 2 u |a| of its own
    (libm's tanh / exp within 2 ulps): first order.
    """
    out = [np.zeros_like(cache.inputs[0])]
    for l, w in enumerate(model.weights):
        magnitude = np.abs(cache.inputs[l]) @ np.abs(w).T
        if model.has_bias[l]:
            magnitude += np.abs(model.biases[l])
        z_error = (w.shape[1] + 2) * U32 * magnitude + out[-1] @ np.abs(w).T
        out.append(z_error + 2 * U32 * np.abs(cache.inputs[l + 1]) if l + 1 < model.n_layers else z_error)
    return out


def slope_errors(activation_cache, a_error: np.ndarray) -> np.ndarray:
    """(n, out) bound on the float32 error of phi'(z) given the activation's error bound A (module docstring).

    relu: phi' may flip between 0 and 1 where |z| <= A; tanh: 1 - a^2 moves by (2 |a| + A) A, plus 2 u
    (a^2 and the subtraction, which cancels as |a| -> 1); sigmoid: a (1 - a) moves by (|1 - 2a| + A) A,
    plus 2 u a; identity: exact.
    """
    z, a, activation = activation_cache
    if activation.name == "relu":
        return (np.abs(z) <= a_error).astype(np.float64)
    if activation.name == "tanh":
        return (2 * np.abs(a) + a_error) * a_error + 2 * U32
    if activation.name == "sigmoid":
        return (np.abs(1 - 2 * a) + a_error) * a_error + 2 * U32 * np.abs(a)
    return np.zeros_like(z)


def bound_backward(abs_weights: list, activation_caches: list, errors: list, v: np.ndarray, deltas: list) -> list:
    """Per layer D_l (n, out_l) >= the error of the float32 delta_l, from v (n, C) >= the output gradient's:

        D_L = v,   D_l = phi'_l (D_{l+1} |W_{l+1}|) + s_l ((|delta_{l+1}| + D_{l+1}) |W_{l+1}|)

    with s_l = ``slope_errors`` (the slope's own error, which multiplies the float32 upstream gradient)
    and the deltas of the exact r (``deltas``); errors are ``forward_errors`` (errors[l + 1]: layer l's output).
    """
    out = [None] * len(abs_weights)
    bound = v
    for l in range(len(abs_weights) - 1, -1, -1):
        out[l] = bound
        if l:
            upstream = bound @ abs_weights[l]
            z, a, activation = activation_caches[l - 1]
            bound = activation.derivative(z, a) * upstream + slope_errors(activation_caches[l - 1], errors[l]) * (
                (np.abs(deltas[l]) + bound) @ abs_weights[l])
    return out


def _deltas_and_bounds(model: MLP, abs_weights: list, x: np.ndarray, y: np.ndarray, w, tol: float):
    """([(delta of w r, delta of w r-hat, D >= |J|^T v, input a, its error bound A) per layer], rows whose r_y is
    lost): r-hat from float32_output_gradient, v = w (e + logit shift + tol |r|) (module docstring (R2))."""
    y = np.asarray(y, dtype=np.int64)
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), (len(y),))[:, None]  # the loss's weight per row
    f, cache = model.forward(x.astype(np.float64, copy=False))
    r, e, cancelled = output_gradient_bound(f, y)
    errors = forward_errors(model, cache)
    # an error A_L of the logits moves p_c by at most e^{2 A_L} - 1 relative, and r_y too - not once 1 - p_y
    # is lost: that r_y is 0 whatever the logits (the margin 1/2 of the regime)
    shift = np.expm1(2 * errors[-1].max(axis=1, keepdims=True)) * np.abs(r)  # p_c e^{+-2 A_L}, exactly
    shift[np.flatnonzero(cancelled), y[cancelled]] = 0.0
    deltas = kernels.backward_deltas(model.weights, cache.activation_caches,
                                     np.stack([w * r, float32_output_gradient(f, y, w[:, 0])]))
    bounds = bound_backward(abs_weights, cache.activation_caches, errors, w * (e + shift + tol * np.abs(r)),
                            [d[0] for d in deltas])
    layers = [(d[0], d[1], b, a, err) for d, b, a, err in zip(deltas, bounds, cache.inputs, errors[:-1], strict=True)]
    return layers, int(cancelled.sum())


def bound_loop(model: MLP, x: np.ndarray, y: np.ndarray, sizes, reduction: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Naive twin of ``fisher_and_bound``, row by row: (F, B) from model.jacobian's gradients and, per row,
    the forward error and ``bound_backward``'s recursion as matrix-vector products."""
    model = model.with_theta(model.theta.astype(np.float64))
    x = np.asarray(x, dtype=np.float64)
    fisher, bound = np.zeros(model.n_params), np.zeros(model.n_params)
    start = 0
    for size in sizes:
        w = 1.0 / size if reduction == "mean" else 1.0
        g, spread = np.zeros(model.n_params), np.zeros(model.n_params)
        for n in range(start, start + size):
            f, cache = model.forward(x[n:n + 1])
            r, e, lost = output_gradient_bound(f, np.asarray(y[n:n + 1], dtype=np.int64))
            a_err = [np.zeros(x.shape[1])]  # forward errors of each layer's input, then of the logits
            for l in range(model.n_layers):
                a_in = cache.inputs[l][0]
                mag = np.abs(model.weights[l]) @ np.abs(a_in) + (np.abs(model.biases[l]) if model.has_bias[l] else 0)
                z_err = (model.weights[l].shape[1] + 2) * U32 * mag + np.abs(model.weights[l]) @ a_err[-1]
                a_err.append(z_err + 2 * U32 * np.abs(cache.inputs[l + 1][0]) if l + 1 < model.n_layers else z_err)
            move = np.expm1(2 * a_err[-1].max()) * np.abs(r[0])
            if lost[0]:
                move[int(y[n])] = 0.0
            v = w * (e[0] + move + backward_tol(model) * np.abs(r[0]))
            g += w * model.jacobian(x[n:n + 1])[0].T @ r[0]
            deltas = model.backward_deltas(cache, w * r)
            d_bound = v
            for l in range(model.n_layers - 1, -1, -1):
                delta = deltas[l][0]
                block = np.outer(d_bound, np.abs(cache.inputs[l][0])) + np.outer(np.abs(delta) + d_bound, a_err[l])
                spread[model.weight_slices[l]] += block.ravel()
                if model.has_bias[l]:
                    spread[model.bias_slices[l]] += d_bound
                if l > 0:
                    z, a, activation = cache.activation_caches[l - 1]
                    slope_error = slope_errors((z[0], a[0], activation), a_err[l])
                    d_bound = (activation.derivative(z, a)[0] * (np.abs(model.weights[l]).T @ d_bound)
                               + slope_error * (np.abs(model.weights[l]).T @ (np.abs(delta) + d_bound)))
        start += size
        fisher += g * g
        bound += 2 * np.abs(g) * spread + spread * spread
    return fisher / len(sizes), (bound + accumulation_tol(len(sizes)) * fisher) / len(sizes) + TINY32
