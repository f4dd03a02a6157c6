"""Memory budgets: every size limit and chunk target of ewc_ref, in one place.

Each constant is read at call time (``budget.NAME``), so a user with more memory can raise it:
``ewc_ref.curvature.budget.MAX_DENSE_BYTES = 8 * 1024**3``.

=====================  =======================  ===============================================
name                   default                  what it bounds
=====================  =======================  ===============================================
MAX_DENSE_BYTES        2 GiB                    any dense P x P matrix (structure='full',
                                                ``to_dense``, ``hessian``, ``hessian_residual``)
CHUNK_BYTES            32 MiB                   per-chunk temporaries of ``fisher`` when
                                                chunk_size is chosen automatically
CHUNK_NUMBERS          2**20 float64 numbers    K directions x N examples x widest layer in
                                                one batch of R-operator passes
BATCHED_CHUNK_BYTES    4 MiB                    per-example gradients held at once by
                                                ``batched_fishers``
HESSIAN_LIMIT          200,000                  P * N up to which ``diagnose`` includes the
                                                Hessian candidate by default
DIAG_HESSIAN_COST      2.0                      diag THEIRS: ``diagnose`` includes the Hessian
                                                by default when its diagonal costs at most this
                                                many exact diagonal Fishers (diag_hessian.cost_ratio)
SCREEN_BYTES           72 MiB                   the per-example gradients ``diagnose`` holds for
                                                its screen of every B and its statistical tests:
                                                28 bytes per row and entry, so M = SCREEN_BYTES /
                                                (28 N) entries, at most 256, at least 16
                                                (diagnosis.screen_size)
=====================  =======================  ===============================================

A full or block Hessian candidate of ``diagnose`` costs P Hessian-vector products over N rows,
~P^2 N (36 s for P = 2410, N = 1000 on 2 cores); its diagonal costs one backward recursion, about
one exact diagonal Fisher for nets with at most two hidden layers or ReLU activations
(``diag_hessian.cost_ratio``). ``diagnose(hessian=True)`` includes it regardless.

SCREEN_BYTES keeps all 256 screened entries up to N = 10,533 rows, so every verdict at N <= 10^4 is
unchanged, and keeps the peak memory of ``diagnose`` flat in N beyond (benchmarks/BENCHMARKS.md): a
larger N screens fewer entries, which widens the statistical tests' intervals without biasing them.
Past N = 168,521 the floor of 16 entries binds and memory grows by 448 bytes per row (the report and
JSON "screen" say when the budget bound M, and whether memory grows).
"""

from __future__ import annotations

MAX_DENSE_BYTES = 2 * 1024**3
CHUNK_BYTES = 32 * 1024**2
CHUNK_NUMBERS = 2**20
BATCHED_CHUNK_BYTES = 4 * 1024**2
HESSIAN_LIMIT = 200_000
DIAG_HESSIAN_COST = 2.0
SCREEN_BYTES = 72 * 1024**2


def check_dense_size(n_params: int, itemsize: int = 8, what: str = "structure='full'") -> None:
    """Refuse a P x P matrix above MAX_DENSE_BYTES with advice on what to use instead."""
    need = n_params * n_params * itemsize
    if need > MAX_DENSE_BYTES:
        raise ValueError(
            f"{what}: a {n_params} x {n_params} matrix needs {need / 1024**3:.1f} GiB, above the limit of "
            f"{MAX_DENSE_BYTES / 1024**3:.1f} GiB (ewc_ref.curvature.budget.MAX_DENSE_BYTES); "
            "use structure='diag', 'block' or 'kfac' instead"
        )
