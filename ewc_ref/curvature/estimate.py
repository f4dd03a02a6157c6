"""The entry point ``fisher``: validate once, choose the chunk size, stream the rows through the accumulator.

The estimators are defined in ``estimators`` (the table and its equations), the structures in
``structures``, the running sums in ``accumulator``; this module only ties them together for
the common case of all the data in memory.
"""

from __future__ import annotations

from .._validate import check_positive_int, finite_or_refused
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from ..progress import Progress
from . import budget, diag_hessian
from .accumulator import FisherAccumulator, FisherOptions
from .estimators import ESTIMATOR_TABLE
from .result import Curvature


def default_chunk_size(model: MLP, estimator: str, structure: str, samples: int, n_outputs: int,
                       lik: Likelihood | None = None) -> int:
    """Rows per chunk so that one chunk's temporaries stay near a fixed budget (never N).

    Budget (benchmarks/BENCHMARKS.md measures these choices):

    * diag: budget.CHUNK_BYTES of what one row holds at once: the forward pass's z_l, a_l and
      s_l (3 x the layer widths), one squared layer input, and the K-fold backward vectors (r, and
      da and delta of the widest layer). The forward and the s_l^T a^2 GEMMs run near BLAS speed
      from about 500 rows on, while the K-fold elementwise work slows once a chunk leaves the
      cache, so the budget lands near both (784-256-256-10: 554 rows exact, 1,460 empirical).
    * kfac: budget.CHUNK_BYTES / 4 of (K rows x layer widths), a few GEMMs per chunk.
    * hessian, diag (needs `lik`): diag_hessian.rows_per_chunk, the recursion's vectors near CHUNK_NUMBERS.
    * full, block: max(CHUNK_BYTES, 1/8 of the output's bytes) of per-example gradients G. Each
      chunk is a rank-(K n) syrk update in place into the running sum (kernels.gram_update), so
      the peak is the output plus G: <= 1.125x the P x P matrix beyond CHUNK_BYTES, and K n stays
      in the hundreds or more, where syrk runs near the GEMM peak.
    """
    k = max(1, ESTIMATOR_TABLE[estimator].backward_vectors(samples, n_outputs))
    if ESTIMATOR_TABLE[estimator].kind == "hessian" and structure == "diag" and lik is not None:
        return diag_hessian.rows_per_chunk(model, lik)
    if ESTIMATOR_TABLE[estimator].kind == "hessian":
        return max(1, budget.CHUNK_BYTES // (8 * max(1, model.n_params * 4)))
    if structure in ("full", "block"):
        sizes = [model.n_params] if structure == "full" else [s.stop - s.start for s in model.layer_slices]
        chunk_bytes = max(budget.CHUNK_BYTES, sum(p * p for p in sizes))  # 8-byte numbers / 8
        return max(1, chunk_bytes // (8 * k * max(sizes)))
    if structure == "diag":
        widths = model.layer_sizes[1:]
        per_row = 3 * sum(widths) + max(model.layer_sizes[:-1]) + k * (model.n_outputs + 2 * max(widths))
        return max(1, budget.CHUNK_BYTES // (8 * per_row))
    return max(1, (budget.CHUNK_BYTES // 4) // (8 * k * max(1, sum(model.layer_sizes))))


def balanced_chunk_size(n: int, rows: int) -> int:
    """The fewest chunks of at most `rows` rows, made equal: ceil(n / ceil(n / rows)) rows each
    (N = 1,797 with rows = 1,170 gives 2 x 899, not 1,170 + 627; no short tail chunk)."""
    chunks = -(-n // rows)
    return -(-n // chunks)


def check_chunk_memory(model: MLP, estimator: str, structure: str, samples: int, rows: int) -> None:
    """Refuse `samples`, or a chunk of `rows`, whose temporaries exceed budget.MAX_DENSE_BYTES.

    One chunk holds K backward vectors per row (the estimator table's backward_vectors: S for
    'mc', C - 1 for 'exact'), each with an entry per output and per layer width (r_nk and the
    deltas), plus a per-example gradient of P ('full') or of the largest layer ('block') entries:
    8 x rows x K x width bytes. Without it ``samples=10**9`` grows until memory runs out.
    """
    k = max(1, ESTIMATOR_TABLE[estimator].backward_vectors(samples, model.n_outputs))
    extra = {"full": model.n_params, "block": max(s.stop - s.start for s in model.layer_slices)}.get(structure, 0)
    width = sum(model.layer_sizes) + extra
    per_row, limit = 8 * k * width, budget.MAX_DENSE_BYTES
    where = "ewc_ref.curvature.budget.MAX_DENSE_BYTES"
    if per_row > limit:  # one example is already too much: many samples (or an enormous model)
        what = f"samples: {samples} labels per example need" if estimator == "mc" else f"model: {k} backward vectors need"
        raise ValueError(
            f"{what} {per_row / 2**30:.1f} GiB of temporaries for one example "
            f"({k} x {width} float64), above the memory budget of {limit / 2**30:.1f} GiB ({where}); "
            f"at most {limit // (8 * width)} fit"
        )
    if rows * per_row > limit:
        raise ValueError(
            f"chunk_size: {rows} rows need {rows * per_row / 2**30:.1f} GiB of temporaries ({rows} x {k} x {width} "
            f"float64), above the memory budget of {limit / 2**30:.1f} GiB ({where}); at most {limit // per_row} rows fit"
        )


@finite_or_refused
def fisher(model: MLP, lik: Likelihood, x, y, estimator: str = "empirical", structure: str = "diag",
           samples: int | None = None, batch_size: int | None = None, rng=None,
           chunk_size: int | None = None, progress: bool = False, kfac_bias: str | None = None) -> Curvature:
    """A curvature matrix of the mean loss (the estimator table: ``estimators``).

    Parameters
    ----------
    model, lik : the network and its likelihood
    x : (N, d_in); y : labels for `lik`
    estimator : a name in ``estimators.ESTIMATORS``; its row of ``ESTIMATOR_TABLE`` defines it
        (``describe()`` prints the definitions)
    structure : a name in ``structures.STRUCTURES`` ('diag', 'full', 'block', 'kfac'), the rows of
        ``STRUCTURE_TABLE``
    samples : S labels per example, estimator='mc' only (default 1)
    batch_size : B, estimator='batched' only (required), 1 <= B <= N
    rng : numpy Generator or seed for 'mc'
    chunk_size : rows per streamed chunk (default: ~32 MiB of temporaries)
    progress : report progress on stderr
    kfac_bias : structure='kfac' only: 'joined' (default; A = mean [a, 1][a, 1]^T, nngeometry,
        curvlinops separate_weight_and_bias=False) or 'separate' (weight block G (x) A with
        A = mean a a^T, bias block G; laplace-torch Kron, BackPACK, curvlinops' default)

    Returns
    -------
    Curvature

    Raises
    ------
    ValueError / TypeError naming the argument: unknown estimator or structure, samples or
    batch_size out of range or given to an estimator that does not use them, labels outside the
    likelihood's support, NaN/inf in parameters or data, 'full' above budget.MAX_DENSE_BYTES.

    Notes
    -----
    Report eq (9): the Fisher of the likelihood (not of the posterior, as the report writes it),
    as a mean over examples; the Laplace precision of derivations/03 is N F + prior precision.
    """
    options = FisherOptions.checked(estimator, structure, samples, batch_size, kfac_bias)  # the options first, by name
    x, y = check_model_data(model, lik, x, y)
    return fisher_with_options(model, lik, x, y, options, rng, chunk_size, progress)


def fisher_unchecked(model: MLP, lik: Likelihood, x, y, estimator: str = "empirical", structure: str = "diag",
                     samples: int | None = None, batch_size: int | None = None, rng=None,
                     chunk_size: int | None = None, progress: bool | str = False,
                     kfac_bias: str | None = None) -> Curvature:
    """``fisher`` on (model, lik, x, y) already validated by check_model_data (diagnose, the Laplace
    code): the options are checked here, once (cheap), the rows are not checked again. `progress`
    may be the label of the command that asked (a rows-done counter labelled 'laplace', not 'fisher')."""
    options = FisherOptions.checked(estimator, structure, samples, batch_size, kfac_bias)
    return fisher_with_options(model, lik, x, y, options, rng, chunk_size, progress)


def fisher_with_options(model: MLP, lik: Likelihood, x, y, options: FisherOptions, rng=None,
                        chunk_size: int | None = None, progress: bool | str = False) -> Curvature:
    """``fisher`` on trusted (model, lik, x, y) and options (``FisherOptions.checked``); checks only what
    needs them together: B <= N, the chunk size and the memory one chunk needs."""
    accumulator = FisherAccumulator.from_options(model, lik, options, rng)
    estimator, structure = options.estimator, options.structure
    n = x.shape[0]
    if options.batch_size is not None:
        check_positive_int(options.batch_size, "batch_size", upper=n)  # the one rule of the options that needs N
    if chunk_size is None:
        chunk_size = balanced_chunk_size(n, default_chunk_size(model, estimator, structure, accumulator.samples,
                                                               model.n_outputs, lik))
    else:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_chunk_memory(model, estimator, structure, accumulator.samples, min(chunk_size, n))
    # progress: True (labelled by the estimator) or the label of the command that asked (e.g. 'laplace')
    label = progress if isinstance(progress, str) else f"fisher {estimator}/{structure}"
    meter = Progress(n, label, enabled=bool(progress), unit="rows")
    for begin in range(0, n, chunk_size):
        accumulator.update_unchecked(x[begin : begin + chunk_size], y[begin : begin + chunk_size])
        meter.update(min(chunk_size, n - begin))
    if progress:
        meter.close()
    return accumulator.result()
