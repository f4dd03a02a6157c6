"""The streaming accumulator: a curvature estimate as running SUMS over chunks of examples.

``update(x_chunk, y_chunk)`` adds a chunk's sums, ``merge(other)`` adds another accumulator's
(a map-reduce over partitions of the data), ``result()`` divides by the count. Peak memory is the
output plus one chunk, whatever N. The estimators and structures are the rows of
``estimators.ESTIMATOR_TABLE`` and ``structures.STRUCTURE_TABLE``; the per-structure sums of
outer products go through ``kernels`` (numba), whose readable twins are in ``naive``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import as_generator, check_choice, check_positive_int
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP
from . import budget, kernels
from .batched import minibatch_pieces
from .estimators import ESTIMATOR_TABLE, ESTIMATORS
from .result import Curvature
from .structures import KFAC_BIASES, STRUCTURES


def check_kfac_bias(structure: str, kfac_bias) -> str | None:
    """kfac_bias for a checked `structure`: 'joined' (default) or 'separate' for kfac, refused otherwise."""
    if structure == "kfac":
        return check_choice("joined" if kfac_bias is None else kfac_bias, "kfac_bias", KFAC_BIASES)
    if kfac_bias is not None:
        raise ValueError(f"kfac_bias: only used by structure='kfac', got kfac_bias={kfac_bias!r} with structure={structure!r}")
    return None


def check_estimator_options(estimator: str, structure: str, samples, batch_size, n: int | None = None):
    """Validate (estimator, structure, samples, batch_size) against the tables; return them trusted.

    samples defaults to 1 for 'mc'; batch_size is required for 'batched' (and <= n when n is
    given); an option the estimator does not use, or a structure it does not support, is refused.
    (kfac_bias: ``check_kfac_bias``.)
    """
    estimator = check_choice(estimator, "estimator", ESTIMATORS)
    structure = check_choice(structure, "structure", STRUCTURES)
    row = ESTIMATOR_TABLE[estimator]
    if structure not in row.structures:
        raise ValueError(f"structure: {structure!r} is defined for per-example outer products, not for estimator={estimator!r}")
    if "samples" in row.options:
        samples = 1 if samples is None else check_positive_int(samples, "samples")
    elif samples is not None:
        raise ValueError(f"samples: only used by estimator='mc', got samples={samples} with estimator={estimator!r}")
    if "batch_size" in row.options:
        if batch_size is None:
            raise ValueError(f"batch_size: required for estimator={estimator!r}")
        batch_size = check_positive_int(batch_size, "batch_size", upper=n)
    elif batch_size is not None:
        raise ValueError(f"batch_size: only used by estimator='batched', got batch_size={batch_size} with estimator={estimator!r}")
    return estimator, structure, samples, batch_size


@dataclass(frozen=True)
class FisherOptions:
    """The options of one curvature computation, as the estimator and structure tables allow them.

    Built by ``FisherOptions.checked`` -- the one validation of the options, at the public edge
    (``fisher``, and so the ``ewc-ref fisher`` command; ``FisherAccumulator``) -- and passed down as it
    is: ``estimate.fisher_with_options`` and ``FisherAccumulator.from_options`` trust it. samples is 1
    for 'mc' when not given and kfac_bias 'joined' for kfac when not given; an option the estimator or
    structure does not read is None.
    """

    estimator: str
    structure: str
    samples: int | None
    batch_size: int | None
    kfac_bias: str | None

    @classmethod
    def checked(cls, estimator: str = "empirical", structure: str = "diag", samples=None, batch_size=None,
                kfac_bias=None) -> FisherOptions:
        """Validate the options against the tables (``check_estimator_options``, ``check_kfac_bias``:
        ValueError / TypeError naming the argument) and freeze them."""
        estimator, structure, samples, batch_size = check_estimator_options(estimator, structure, samples, batch_size)
        return cls(estimator, structure, samples, batch_size, check_kfac_bias(structure, kfac_bias))


class FisherAccumulator:
    """Streams a curvature estimate over chunks of examples (module docstring).

    Parameters
    ----------
    model, lik : the network and its likelihood
    estimator, structure : rows of the estimator and structure tables
    samples : S labels per example, 'mc' only (default 1)
    batch_size : B, required for 'batched' and refused otherwise
    rng : numpy Generator or seed for 'mc'
    start : global index of this accumulator's first row ('batched' minibatches are the
        consecutive runs of B rows in global row order, so accumulators sharing the data need it)
    kfac_bias : 'joined' (default) or 'separate', structure='kfac' only (structures.KFAC_BIAS_TABLE)

    Every argument is validated here and every chunk in ``update`` (ValueError / TypeError naming
    it). A minibatch split across chunks or accumulators is completed when its pieces meet. For
    ``mc`` the labels are drawn from `rng` example by example, so with one accumulator fed in row
    order the draws do not depend on the chunk size. Everything is kept as SUMS, so any partition
    of the rows gives the one-shot result up to floating-point summation order.
    """

    def __init__(self, model: MLP, lik: Likelihood, estimator: str = "empirical", structure: str = "diag",
                 samples: int | None = None, batch_size: int | None = None, rng=None, start: int = 0,
                 kfac_bias: str | None = None):
        options = FisherOptions.checked(estimator, structure, samples, batch_size, kfac_bias)
        if not isinstance(model, MLP):
            raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__}")
        if not isinstance(lik, Likelihood):
            raise TypeError(f"lik: expected an ewc_ref Likelihood, got {type(lik).__name__}")
        self._begin(model, lik, options, rng, start)

    @classmethod
    def from_options(cls, model: MLP, lik: Likelihood, options: FisherOptions, rng=None, start: int = 0) -> FisherAccumulator:
        """An accumulator for options already checked (``FisherOptions.checked``) and a model and
        likelihood of the right types (``check_model_data``); the parameters' finiteness, rng, start
        and the dense budget are checked here, as by the constructor."""
        accumulator = cls.__new__(cls)
        accumulator._begin(model, lik, options, rng, start)
        return accumulator

    def _begin(self, model: MLP, lik: Likelihood, options: FisherOptions, rng, start: int) -> None:
        """The constructor's work after the options and types are trusted."""
        estimator, structure = options.estimator, options.structure
        samples, batch_size, self.kfac_bias = options.samples, options.batch_size, options.kfac_bias
        if not np.all(np.isfinite(model.theta)):
            raise ValueError("model: parameters contain NaN or inf")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"start: expected an integer >= 0, got {start!r}")
        if structure == "full":
            budget.check_dense_size(model.n_params)
        self.model, self.lik = model, lik
        self.estimator, self.structure = estimator, structure
        self.samples, self.batch_size = samples or 1, batch_size
        if "rng" in ESTIMATOR_TABLE[estimator].options:
            self.rng = as_generator(rng)
        elif rng is not None:  # like the CLI's --seed: an argument that would mean nothing is refused
            raise ValueError(f"rng: only used by estimator='mc' (it draws labels), got rng={rng!r} with estimator={estimator!r}")
        else:
            self.rng = None
        self.start = self.position = int(start)
        self.count = 0  # rows seen
        self.n_batches = 0  # completed minibatches (batched)
        self.partial: dict[int, list] = {}  # batch index -> [gradient sum (P,), rows]
        self.total = None  # the structure's running sum
        # full/block outer sums: only the lower triangle of each matrix is summed (kernels.gram_update)
        self.lower_only = False
        # result() divided total in place and handed it to the Curvature: the divisor, else None
        self.handed_over = None
        self._update_by_kind = {"outer": self._update_outer, "batched": self._update_batched,
                                "hessian": self._update_hessian}[ESTIMATOR_TABLE[estimator].kind]

    # -- the per-structure sums of outer products ------------------------------
    def _add(self, sums, owned: bool = True):
        """Add `sums` to the running total; `owned` = they are fresh arrays nobody else holds,
        so the first one can become the total without a copy (a pass over P x P saved)."""
        self._reclaim()
        if self.total is None:
            self.total = sums if owned else _copy(sums)
        elif isinstance(self.total, list):
            for acc, new in zip(self.total, sums, strict=True):
                if isinstance(acc, tuple):
                    acc[0][...] += new[0]
                    acc[1][...] += new[1]
                else:
                    acc += new
        else:
            self.total += sums

    def _reclaim(self):
        """Take the running sums back after result() handed them over: a scaled copy (the
        Curvature keeps its matrix); costs one P x P copy, only when updating after result()."""
        if self.handed_over is not None:
            divisor, self.handed_over = self.handed_over, None
            self.total = [item * divisor for item in self.total] if isinstance(self.total, list) else self.total * divisor

    def _outer_sums(self, cache, r: np.ndarray, weight: float, into=None):
        """sum_{n,k} weight * u_nk u_nk^T in the accumulator's structure, u = J^T r.

        Fast path by ewc_ref.curvature.kernels; the readable twin is naive.outer_sums_naive (tests/curvature/test_kernels.py).
        full and block: with `into` (the running sums) the lower triangles of `into` are updated
        in place (kernels.gram_update) and None is returned; without, fresh complete sums.
        """
        model = self.model
        if self.structure == "diag":
            sums = kernels.squared_delta_sums(model.weights, cache.activation_caches, r, weight)
            return _diag_sums(model, cache, sums, into)
        if self.structure == "kfac":
            # separate bias: A without the column of ones; G is the same (and the bias block, see result()).
            joined = self.kfac_bias == "joined"
            deltas = kernels.backward_deltas(model.weights, cache.activation_caches, r)
            return [kernels.kfac_factors(d, cache.inputs[l], weight, model.has_bias[l] and joined)
                    for l, d in enumerate(deltas)]
        # u_nk sqrt(w): a Python float keeps float32 models in float32 (a NumPy float64 would promote).
        deltas = kernels.backward_deltas(model.weights, cache.activation_caches, r * math.sqrt(weight))
        dtype = np.result_type(r, model.theta)
        sums = self._zero_sums(dtype) if into is None else into
        if self.structure == "full":
            kernels.gram_update(sums, kernels.per_sample_grads(deltas, cache.inputs, model.has_bias, dtype))
        else:  # block: each layer's G_l : (K n, P_l) on its own, never the whole G.
            for l in range(model.n_layers):
                kernels.gram_update(sums[l], kernels.per_sample_grads(deltas, cache.inputs, model.has_bias, dtype, layers=[l]))
        if into is not None:
            return None
        for item in sums if isinstance(sums, list) else [sums]:
            kernels.mirror_lower(item)
        return sums

    def _zero_sums(self, dtype):
        """Zero running sums of the diag, full or block structure."""
        if self.structure == "diag":
            return np.zeros(self.model.n_params, dtype=dtype)
        if self.structure == "full":
            return np.zeros((self.model.n_params,) * 2, dtype=dtype)
        return [np.zeros((s.stop - s.start,) * 2, dtype=dtype) for s in self.model.layer_slices]

    def update(self, x_chunk, y_chunk) -> FisherAccumulator:
        """Add the next rows; x_chunk : (n, d_in) and y_chunk are validated (names in errors)."""
        x_chunk, y_chunk = check_model_data(self.model, self.lik, x_chunk, y_chunk, "x_chunk", "y_chunk")
        return self.update_unchecked(x_chunk, y_chunk)

    def update_unchecked(self, x_chunk: np.ndarray, y_chunk) -> FisherAccumulator:
        """update on trusted rows (``fisher`` validates x and y once, then streams)."""
        n = x_chunk.shape[0]
        if n == 0:
            return self
        self._update_by_kind(x_chunk, y_chunk)
        self.count += n
        self.position += n
        return self

    def _update_outer(self, x_chunk, y_chunk):
        f, cache = self.model.forward(x_chunk)
        r, weight = ESTIMATOR_TABLE[self.estimator].output_vectors(self.lik, f, y_chunk, self.samples, self.rng)
        if self.structure == "kfac":
            self._add(self._outer_sums(cache, r, weight))
            return
        # diag, full, block: summed in place into the running total (no per-chunk (P,) or P x P array).
        self._reclaim()
        if self.total is None:
            self.total = self._zero_sums(np.result_type(r, self.model.theta))
        self.lower_only = self.structure != "diag"
        self._outer_sums(cache, r, weight, into=self.total)

    def _update_hessian(self, x_chunk, y_chunk):
        from .dense_hessian import hessian_blocks_unchecked, hessian_unchecked
        from .diag_hessian import diag_hessian_sums

        if self.structure == "diag":  # the backward recursion, not P Hessian-vector products
            self._add(diag_hessian_sums(self.model, self.lik, x_chunk, y_chunk))
            return
        n = x_chunk.shape[0]
        if self.structure == "full":  # N_chunk * H summed in place: one P x P array in all
            self._reclaim()
            self.total = hessian_unchecked(self.model, self.lik, x_chunk, y_chunk, into=self.total, weight=float(n))
            return
        blocks = hessian_blocks_unchecked(self.model, self.lik, x_chunk, y_chunk)
        for block in blocks:
            block *= n
        self._add(blocks)

    def _update_batched(self, x_chunk, y_chunk):
        pieces = minibatch_pieces(self.model, self.lik, x_chunk, y_chunk, self.position, self.batch_size)
        for index, grad_sum, rows in zip(*pieces, strict=True):
            self._add_batch_piece(int(index), grad_sum, int(rows))

    def _add_batch_piece(self, index: int, grad_sum: np.ndarray, rows: int):
        piece = self.partial.get(index)
        if piece is None:
            piece = self.partial[index] = [np.zeros_like(grad_sum), 0]
        piece[0] += grad_sum
        piece[1] += rows
        if piece[1] == self.batch_size:
            self._finish_batch(self.partial.pop(index))

    def _finish_batch(self, piece):
        gbar = piece[0] / piece[1]  # gradient of the MEAN loss over the minibatch
        if self.structure == "diag":
            self._add(gbar * gbar)
        elif self.structure == "full":
            self._add(np.outer(gbar, gbar))
        else:
            self._add([np.outer(gbar[s], gbar[s]) for s in self.model.layer_slices])
        self.n_batches += 1

    def merge(self, other: FisherAccumulator) -> FisherAccumulator:
        """Add another accumulator's sums (same model, estimator and structure)."""
        if not isinstance(other, FisherAccumulator):
            raise TypeError(f"other: expected a FisherAccumulator, got {type(other).__name__}")
        mine = (self.estimator, self.structure, self.batch_size, self.kfac_bias)
        if (other.estimator, other.structure, other.batch_size, other.kfac_bias) != mine:
            raise ValueError("other: accumulators differ in estimator, structure, batch_size or kfac_bias")
        if other.model.n_params != self.model.n_params:
            raise ValueError(f"other: has P = {other.model.n_params} parameters, this accumulator {self.model.n_params}")
        other._reclaim()
        if other.total is not None:
            self._add(other.total, owned=False)
            self.lower_only = self.lower_only or other.lower_only
        self.count += other.count
        self.n_batches += other.n_batches
        for index, (grad_sum, rows) in other.partial.items():
            self._add_batch_piece(index, grad_sum, rows)
        return self

    def result(self) -> Curvature:
        """The mean: sums / N (or / number of minibatches for batched)."""
        if self.count == 0:
            raise ValueError("no examples were added")
        self._reclaim()
        model = self.model
        if self.estimator == "batched":
            # Only the last minibatch may be partial; it counts as a batch of its own.
            if len(self.partial) > 1:
                raise ValueError(f"batched: rows missing inside minibatches {sorted(self.partial)[:-1]}")
            for index in list(self.partial):
                self._finish_batch(self.partial.pop(index))
            divisor = self.n_batches
        else:
            divisor = self.count
        total = self.total
        if self.structure in ("full", "block"):
            # The P x P sums become the result in place (no second P x P matrix); the accumulator
            # takes them back by a copy if it is updated again (_reclaim).
            for item in total if isinstance(total, list) else [total]:
                if self.lower_only:
                    kernels.mirror_lower(item)
                item /= divisor
            self.lower_only, self.handed_over = False, divisor
            data = total
        else:
            data = [_divide(item, divisor) for item in total] if isinstance(total, list) else total / divisor
        if self.kfac_bias == "separate":
            # The bias block is sum_{n,k} w delta_nk delta_nk^T / N = G: exact, its own array.
            data = [(A, G, G.copy() if has_bias else None) for (A, G), has_bias in zip(data, model.has_bias, strict=True)]
        options = ESTIMATOR_TABLE[self.estimator].options
        return Curvature(
            self.structure, self.estimator, model.param_names, model.param_shapes, data, list(model.has_bias),
            n=self.count, samples=self.samples if "samples" in options else None,
            batch_size=self.batch_size if "batch_size" in options else None, kfac_bias=self.kfac_bias,
        )


def _divide(item, divisor):
    return tuple(part / divisor for part in item) if isinstance(item, tuple) else item / divisor


def _copy(item):
    if isinstance(item, list):
        return [_copy(i) for i in item]
    if isinstance(item, tuple):
        return tuple(i.copy() for i in item)
    return item.copy()


def _diag_sums(model: MLP, cache, sums, into=None) -> np.ndarray:
    """diag(sum_{n,k} w u_nk u_nk^T) per layer: s_l^T (a_n^2), one GEMM, s_l = w sum_k delta_nk^2.

    Added in place to `into` (the running (P,) sum) when given, else returned fresh. Fast path:
    kernels.squared_delta_sums, then the GEMM of kernels.diag_second_moment. Twins:
    naive.diag_sums_naive (the same GEMM written inline) and ``(per_sample_grads**2).sum``
    (tests/curvature/test_naive_twins.py, tests/curvature/test_kernels.py).
    """
    out = np.zeros(model.n_params, dtype=np.result_type(cache.inputs[0], model.theta)) if into is None else into
    for l, s in enumerate(sums):
        a = cache.inputs[l]
        out[model.weight_slices[l]].reshape(s.shape[1], a.shape[1])[...] += s.T @ np.square(a)
        if model.has_bias[l]:
            out[model.bias_slices[l]] += s.sum(axis=0)
    return out
