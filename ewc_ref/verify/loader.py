"""The minibatch Fisher candidates of ``diagnose``, described by the loader that made them.

A training-script Fisher is a loop over a loader::

    for xb, yb in loader:                       # rows in some order, cut into batches b_1..b_K
        g_k = grad(loss(xb, yb))                # per-batch reduction: 'mean' (1/|b_k| sum) or 'sum'
        F += g_k ** 2
    F /= K                                      # aggregation: mean over K, sum (x K), / N (x K/N), ...

With g_n the per-example gradients and s_k = |b_k|, the per-batch gradient is
gbar_k = rho_k^(1/2) / s_k sum_{n in b_k} g_n with rho_k = 1 ('mean') or s_k^2 ('sum'), and

    F_loader = 1/K sum_k rho_k gbar_k gbar_k^T,     gbar_k = 1/s_k sum_{n in b_k} g_n          (O1)

The aggregation is a scale only (the fit THEIRS ~= c F absorbs it, ``factors`` names it). What
changes the MATRIX is: the rows' order (given: file order or a recorded ``order``; shuffled: a
random partition, judged statistically in ``shuffled``), the batch sizes (every B, or the
recorded ``batches``), whether a short last batch is kept as its own batch or dropped
(``drop_last``) and, with a short last batch kept, the per-batch reduction (with equal batches
'sum' is 'mean' times B^2).

``screen_ordered`` gives, for every B, the three distinct ordered matrices on the screen's
entries from the prefix sums of the per-example gradients (diagnosis.py's screen):
'kept' (the short last batch its own, mean), 'kept, sum' and 'dropped'. ``partition_fisher``
computes (O1) on all entries for any list of batch sizes, one batched GEMM per run of equal
sizes (``batched_fisher_gemm``). Naive twin of both: a loop over the batches of the
per-example gradients (tests/verify/test_diagnose_loader.py).
"""

from __future__ import annotations

import numpy as np

from ..curvature import label_kernels
from ..curvature.batched import batched_fisher_gemm
from ..model.likelihoods import Likelihood
from ..model.mlp import MLP

#: The ordered variants whose matrices differ for one B when N is not a multiple of B ('': the short
#: last batch kept as its own, per-batch mean; Candidate.variant).
VARIANTS = ("", "kept, sum", "dropped")
#: At most this many (B, variant) that fit on the screen (relative error <= 10 tol) are confirmed on
#: all entries (one backward pass each); when none fits, the screen's best one alone (the closest).
CONFIRM = 3
#: B fitted at once by the screen of every B (``screen_best``): its per-(B, variant) arrays, ~100 bytes per B
#: with their sort, are then O(SCREEN_BLOCK) whatever N (for every B = 2..N at once they were ~1 KB per row).
SCREEN_BLOCK = 4096


def batch_sizes_of(n: int, batch_size: int, variant: str) -> np.ndarray:
    """(K,) the sizes of runs of B over n rows, the short last one kept ('', 'kept, sum') or dropped ('dropped')."""
    full, rest = divmod(n, batch_size)
    out = np.full(full, batch_size, dtype=np.int64)
    return out if rest == 0 or variant.endswith("dropped") else np.append(out, rest)


def reduction_of(variant: str) -> str:
    return "sum" if variant.endswith("sum") else "mean"


def minibatch_matrices(model: MLP, lik: Likelihood, x, y, rows: np.ndarray, recorded: np.ndarray | None,
                       grad_entries: np.ndarray, t_entries: np.ndarray, batch_sizes, tol: float, structure: str, log,
                       pred_entries: np.ndarray | None = None, pred_labels=None):
    """The minibatch candidates' matrices on all entries, over the rows x[rows] in loader order.

    recorded : the loader's batch sizes (then exactly those batches, 'recorded' and, when the
    sizes differ, 'recorded, sum'; no screen); batch_sizes : the B to compute ('' variant), or
    None for the screen of every (B, variant), B = 2..M, of which at most CONFIRM fitting within
    10 tol on the screened entries are computed. grad_entries : (N, M_s) in file order, at the
    observed labels; pred_entries, pred_labels : the same at the model's most probable labels, and
    those labels in file order (the loader's loss at predicted labels: variants prefixed 'pred'), or None.

    Returns ({(name, B, variant): matrix}, the closest screened (B, variant, c, error) when none
    fits on the screen, else None, and the B screened as (2, M) or None).
    """
    xs, ys = (x, y) if rows is None else (x[rows], y[rows])
    m = xs.shape[0]
    labels = {"": ys}
    if pred_entries is not None:
        labels["pred"] = pred_labels if rows is None else pred_labels[rows]

    def name(prefix, variant):
        return ", ".join(part for part in (prefix, variant) if part)

    if recorded is not None:
        b = int(np.max(recorded))
        variants = ["recorded"] + (["recorded, sum"] if np.unique(recorded).size > 1 else [])
        log.stage(f"computing batched over the {recorded.size} recorded batches")
        return {("batched", b, name(prefix, v)): partition_fisher(model, lik, xs, labels[prefix], recorded,
                                                                  reduction_of(v), structure)
                for prefix in labels for v in variants}, None, None
    closest, screened, todo = None, None, [(b, "") for b in (batch_sizes or [])]
    if batch_sizes is None:
        log.stage(f"screening batched for every B = 2..{m}, the short last batch kept, summed or dropped"
                  + (", at the observed and the predicted labels" if pred_entries is not None else ""))
        columns = []  # (B, variant index, c, error, 0 observed / 1 predicted labels) per screened (B, variant)
        for pred, entries in enumerate((grad_entries, pred_entries)):
            if entries is not None and not (pred and columns and columns[0][3].min(initial=np.inf) <= 10 * tol):
                # the predicted labels only when the observed ones fit no (B, variant) on the screen
                b, variant, c, err = screen_best(entries, t_entries, range(2, m + 1), CONFIRM, rows)
                columns.append((b, variant, c, err, np.full(b.size, pred)))
        b, variant, c, err, pred = (np.concatenate(column) for column in zip(*columns, strict=True)) if columns else \
            (np.zeros(0),) * 5
        # by error, then the smaller B, observed before predicted labels, then VARIANTS' order
        ranked = np.lexsort((variant, pred, b, err))
        key = lambda i: (int(b[i]), name("pred" if pred[i] else "", VARIANTS[int(variant[i])]))  # noqa: E731
        todo = [key(i) for i in ranked[:CONFIRM] if err[i] <= 10 * tol]
        screened = (2, m) if m >= 2 else None
        if not todo and ranked.size:  # no B fits on the screen, so none on all entries: the closest is not recomputed
            closest = (*key(ranked[0]), float(c[ranked[0]]), float(err[ranked[0]]))
    matrices = {}
    for b, v in todo:
        log.stage(f"computing batched, B = {b}{' (' + v + ')' if v else ''} ({structure})")
        prefix, base = ("pred", v.removeprefix("pred").lstrip(", ")) if v.startswith("pred") else ("", v)
        if base == "":
            matrices[("batched", b, v)] = batched_fisher_gemm(model, lik, xs, labels[prefix], b, structure)
        else:
            matrices[("batched", b, v)] = partition_fisher(model, lik, xs, labels[prefix], batch_sizes_of(m, b, base),
                                                           reduction_of(base), structure)
    return matrices, closest, screened


def partition_fisher(model: MLP, lik: Likelihood, x: np.ndarray, y, sizes: np.ndarray, reduction: str = "mean",
                     structure: str = "diag") -> np.ndarray:
    """(O1) over consecutive batches of the given sizes (rows of x in loader order; sum(sizes) <= N, the rest unused).

    Returns (P,) for 'diag', (P, P) for 'full': 1/K sum_k rho_k gbar_k gbar_k^T. Each run of
    equal sizes is one ``batched_fisher_gemm`` call (its mean over the run's batches times their
    number), so cost ~ one backward pass over the rows used.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total, start, k = None, 0, 0
    while k < sizes.size:
        stop = k + 1
        while stop < sizes.size and sizes[stop] == sizes[k]:
            stop += 1
        b, count = int(sizes[k]), stop - k
        rows = slice(start, start + b * count)
        part = batched_fisher_gemm(model, lik, x[rows], y[rows], b, structure) * count
        if reduction == "sum":
            part *= float(b) ** 2
        total = part if total is None else total + part
        start, k = start + b * count, stop
    return total / sizes.size


def partition_fisher_loop(grads: np.ndarray, sizes: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """(O1) on per-example gradients (N, M), rows in loader order: the naive twin of ``partition_fisher``."""
    out, start = np.zeros(grads.shape[1]), 0
    for s in sizes:
        g = grads[start:start + s].sum(axis=0) / (s if reduction == "mean" else 1)
        out += g * g
        start += s
    return out / len(sizes)


def screen_ordered(grad_entries: np.ndarray, theirs_entries: np.ndarray, sizes) -> dict[tuple[int, str], tuple]:
    """{(B, variant): (c, relative error)} of THEIRS ~= c F on the screened entries, every B in `sizes`.

    '' is F_B of ``batched_screen`` (the short last batch its own); with r = N mod B > 0 the short
    last batch's squared mean L_B = (1/r sum_{last r rows} g)^2 and the full batches' sum
    S_B = K F_B - L_B give 'dropped' = S_B / (K - 1) and 'kept, sum' = (B^2 S_B + r^2 L_B) / K.
    Variants equal to '' up to a scale (r = 0) are not listed. All three from one F_B per B, fitted
    without (|B|, M) temporaries by ``label_kernels.ordered_fits`` (twin: ``ordered_fits_numpy``, the
    arrays of ``batched_screen`` in groups). Twin: ``partition_fisher_loop`` per (B, variant).
    """
    b, variant, c, err = screen_arrays(grad_entries, theirs_entries, sizes)
    return {(int(bi), VARIANTS[vi]): (float(ci), float(ei)) for bi, vi, ci, ei in zip(b, variant, c, err, strict=True)}


def screen_arrays(grad_entries: np.ndarray, theirs_entries: np.ndarray, sizes) -> tuple[np.ndarray, ...]:
    """``screen_ordered`` as arrays (B, index of the variant in VARIANTS, c, relative error), one entry per
    (B, variant) listed there, by B then '', 'dropped', 'kept, sum'."""
    return _screen_prefix(label_kernels.prefix_sums(grad_entries), theirs_entries, sizes)


def screen_best(grad_entries: np.ndarray, theirs_entries: np.ndarray, sizes, count: int, rows: np.ndarray | None = None,
                variant_rank=(0, 1, 2)) -> tuple[np.ndarray, ...]:
    """The `count` best (B, variant) of ``screen_arrays(grad_entries[rows], ...)`` by (error, B, variant_rank of
    the variant's index in VARIANTS), as the same four arrays sorted that way.

    The B are fitted SCREEN_BLOCK at a time against one (N + 1, M) prefix sum and only the best `count` kept
    (a (B, variant) is unique, so the order is total and the best of the union is the best of each block's
    best): memory (N + 1) M + O(SCREEN_BLOCK), not the ~1 KB per B of every B's arrays at once. The rows in
    `rows` order without an (N, M) copy (``prefix_in_order``). Twin: ``screen_arrays`` sorted (tests/verify/
    test_diagnose_memory.py).
    """
    prefix = prefix_in_order(grad_entries, rows)
    sizes, rank = np.asarray(sizes, dtype=np.intp), np.asarray(variant_rank)
    kept = (np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    for first in range(0, sizes.size, SCREEN_BLOCK):
        joined = [np.concatenate(pair) for pair in zip(kept, _screen_prefix(prefix, theirs_entries,
                                                                            sizes[first:first + SCREEN_BLOCK]), strict=True)]
        best = np.lexsort((rank[joined[1]], joined[0], joined[3]))[:count]
        kept = tuple(array[best] for array in joined)
    return kept


def prefix_in_order(grad_entries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(N + 1, M) prefix sums of grad_entries[rows] (all rows in file order when None), bit-identical to
    ``label_kernels.prefix_sums(grad_entries[rows])`` (one sequential sum) without the (N, M) copy: the rows
    gathered 1024 at a time (2 MiB at M = 256), each chunk's first row added to the running sum before its cumsum."""
    if rows is None:
        return label_kernels.prefix_sums(grad_entries)
    n, m = rows.size, grad_entries.shape[1]
    out = np.empty((n + 1, m))
    out[0] = 0.0
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        part = grad_entries[rows[start:stop]].astype(np.float64)
        part[0] += out[start]
        np.cumsum(part, axis=0, out=out[start + 1:stop + 1])
    return out


def _screen_prefix(prefix: np.ndarray, theirs_entries: np.ndarray, sizes) -> tuple[np.ndarray, ...]:
    """``screen_arrays`` from the prefix sums (N + 1, M) of the per-example gradients."""
    n = prefix.shape[0] - 1
    t = np.asarray(theirs_entries, np.float64)
    sizes = np.asarray([int(b) for b in sizes], dtype=np.intp)
    c, err = label_kernels.ordered_fits(prefix, sizes, n, t)  # (|sizes|, 3): '', 'dropped', 'kept, sum'
    k, r = -(-n // sizes), n % sizes
    parts = [(sizes[listed], np.full(int(listed.sum()), VARIANTS.index(v)), c[listed, column], err[listed, column])
             for column, (v, listed) in enumerate((("", np.ones(sizes.size, bool)), ("dropped", (r > 0) & (k >= 2)),
                                                   ("kept, sum", r > 0)))]
    b, variant, c, err = (np.concatenate(column) for column in zip(*parts, strict=True))
    listing = np.array([VARIANTS.index(v) for v in ("", "dropped", "kept, sum")]).argsort()[variant]
    order = np.lexsort((listing, b))  # by B, then '', 'dropped', 'kept, sum': the order screen_ordered lists them
    return b[order], variant[order], c[order], err[order]
