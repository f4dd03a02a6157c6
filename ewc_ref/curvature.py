"""Fisher information, GGN and Hessian of the mean loss: every estimator of EXCHANGE.md.

All estimators are means over the N examples (derivations/04, eq 9 of the report):

=============  ==========================================================  =======================
estimator      definition                                                  backward passes
=============  ==========================================================  =======================
empirical      F = 1/N sum_n g_n g_n^T, g_n = d l_n/d theta at observed y  1 (of N rows)
pred           as empirical with y_n = the model's most probable label     1
mc             F = 1/N sum_n 1/S sum_s g_ns g_ns^T, y_ns ~ p(y | x_n)      S
exact          F = 1/N sum_n E_{y ~ p}[g g^T] = 1/N sum_n J_n^T Lambda_n J_n  K = rank Lambda (pseudo-gradients)
ggn            1/N sum_n J_n^T (d^2 l_n / d f^2) J_n  (= exact here)        K = rank Lambda
batched        F = 1/K sum_k gbar_k gbar_k^T, gbar_k = grad of the MEAN    1
               loss over the k-th consecutive minibatch of size B
hessian        H = 1/N sum_n d^2 l_n / d theta^2                           2 per HVP, P HVPs
=============  ==========================================================  =======================

How ``exact`` avoids the Jacobian: with a symmetric factor Lambda_n = Q_n Q_n^T
(likelihoods.hessian_factor), J_n^T Lambda_n J_n = sum_k (J_n^T q_nk)(J_n^T q_nk)^T and
J_n^T q_nk is an ordinary backward pass with the "pseudo-gradient" q_nk in place of d l/d f.
So every estimator except ``batched`` and ``hessian`` is sum_{n,k} w_k u_nk u_nk^T over
vectors u_nk = J_n^T r_nk that one batched backward pass produces, with r the output-space
vectors of the table below and w_k their weights:

    empirical   r = d l / d f (f, y_n)                 K = 1   w = 1
    pred        r = d l / d f (f, argmax p)            K = 1   w = 1
    mc          r = d l / d f (f, y_ns)                K = S   w = 1/S
    exact, ggn  r = q_nk, columns of Q_n               K = C (C - 1 categorical)   w = 1

For a Linear layer the per-example gradient is the outer product delta_n a_n^T (delta:
back-propagated error, a: layer input), which makes the structures cheap:

    diag   sum_{n,k} w_k delta_nk^2 (a_n^2)^T         one GEMM per layer, no per-example gradient
    full   sum_{n,k} w_k u_nk u_nk^T                  per-example gradients G, then G^T G
    block  per layer, the diagonal blocks of full
    kfac   per layer G_l (x) A_l with A_l = 1/N sum_n abar_n abar_n^T (abar = [a, 1] with bias),
           G_l = 1/N sum_{n,k} w_k delta_nk delta_nk^T; exact for N = 1

Everything is streamed over chunks of examples (FisherAccumulator): peak memory is the output
plus one chunk, whatever N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import block_diag

from . import kernels
from ._progress import Progress
from ._validate import as_float_array, as_generator, check_choice, check_positive_int
from .io import atomic_savez, read_npz
from .likelihoods import Likelihood
from .loss import check_model_data
from .mlp import MLP

ESTIMATORS = ("empirical", "exact", "mc", "batched", "pred", "ggn", "hessian")
STRUCTURES = ("diag", "full", "block", "kfac")
OUTER_PRODUCT_ESTIMATORS = ("empirical", "exact", "mc", "pred", "ggn")

#: Largest dense P x P matrix (in bytes) that structure='full' or to_dense() will build.
MAX_DENSE_BYTES = 2 * 1024**3
#: Target size of the per-chunk temporaries when chunk_size is chosen automatically.
CHUNK_BYTES = 32 * 1024**2


def check_dense_size(n_params: int, itemsize: int = 8, what: str = "structure='full'") -> None:
    """Refuse a P x P matrix above MAX_DENSE_BYTES with advice on what to use instead."""
    need = n_params * n_params * itemsize
    if need > MAX_DENSE_BYTES:
        raise ValueError(
            f"{what}: a {n_params} x {n_params} matrix needs {need / 1024**3:.1f} GiB, above the limit of "
            f"{MAX_DENSE_BYTES / 1024**3:.1f} GiB (ewc_ref.curvature.MAX_DENSE_BYTES); "
            "use structure='diag', 'block' or 'kfac' instead"
        )


# --------------------------------------------------------------------------- the result object
@dataclass
class Curvature:
    """A curvature matrix of the mean loss in one of four structures.

    Attributes
    ----------
    structure : 'diag' | 'full' | 'block' | 'kfac'
    estimator : one of ESTIMATORS (or 'unknown' for a loaded foreign file)
    param_names, param_shapes : the model's parameters in flat (state_dict) order
    data : diag -> (P,); full -> (P, P); block -> list of (P_l, P_l), one per Linear layer;
        kfac -> list of (A_l, G_l) with A_l : (in_l [+1 with bias], same), G_l : (out_l, out_l)
    layer_has_bias : per Linear layer (needed by block and kfac)
    n : number of examples the mean was taken over (or None)
    samples, batch_size : for mc and batched
    """

    structure: str
    estimator: str
    param_names: list
    param_shapes: list
    data: object
    layer_has_bias: list = field(default_factory=list)
    n: int | None = None
    samples: int | None = None
    batch_size: int | None = None

    # ---------------------------------------------------------------- geometry
    @property
    def n_params(self) -> int:
        return int(sum(np.prod(s, dtype=int) for s in self.param_shapes))

    @property
    def param_slices(self) -> list[slice]:
        ends = np.cumsum([int(np.prod(s, dtype=int)) for s in self.param_shapes])
        return [slice(int(e - np.prod(s, dtype=int)), int(e)) for e, s in zip(ends, self.param_shapes, strict=True)]

    def _layers(self):
        """(weight slice, bias slice or None, (out, in)) per Linear layer."""
        slices, shapes = self.param_slices, self.param_shapes
        layers, i = [], 0
        for has_bias in self.layer_has_bias:
            w, shape = slices[i], shapes[i]
            b = slices[i + 1] if has_bias else None
            layers.append((w, b, shape))
            i += 2 if has_bias else 1
        return layers

    # ---------------------------------------------------------------- views
    @property
    def flat(self) -> np.ndarray:
        """The diagonal, (P,), in flat parameter order (for every structure)."""
        if self.structure == "diag":
            return self.data
        if self.structure == "full":
            return np.diagonal(self.data).copy()
        if self.structure == "block":
            return np.concatenate([np.diagonal(b) for b in self.data])
        parts = []
        for (A, G), has_bias in zip(self.data, self.layer_has_bias, strict=True):
            a_diag, g_diag = np.diagonal(A), np.diagonal(G)
            n_in = A.shape[0] - int(has_bias)
            parts.append(np.outer(g_diag, a_diag[:n_in]).ravel())
            if has_bias:
                parts.append(g_diag * a_diag[-1])
        return np.concatenate(parts)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The diagonal as {state_dict name: array of the parameter's shape}."""
        flat = self.flat
        return {n: flat[s].reshape(shape) for n, s, shape in zip(self.param_names, self.param_slices, self.param_shapes, strict=True)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def to_dense(self) -> np.ndarray:
        """The (P, P) matrix (block-diagonal for block/kfac, diagonal for diag)."""
        check_dense_size(self.n_params, what="to_dense()")
        if self.structure == "full":
            return self.data
        if self.structure == "diag":
            return np.diag(self.data)
        if self.structure == "block":
            return block_diag(*self.data)
        return block_diag(*[_kfac_block(A, G, has_bias) for (A, G), has_bias in zip(self.data, self.layer_has_bias, strict=True)])

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """F v for v : (P,) or (P, K), without forming F for diag/block/kfac."""
        v = as_float_array(v, "v")
        if v.shape[0] != self.n_params or v.ndim > 2:
            raise ValueError(f"v: expected shape ({self.n_params},) or ({self.n_params}, K), got {v.shape}")
        if self.structure == "diag":
            return self.data.reshape((-1,) + (1,) * (v.ndim - 1)) * v
        if self.structure == "full":
            return self.data @ v
        out = np.empty_like(v, dtype=np.result_type(v, self.flat))
        for index, (w, b, (n_out, n_in)) in enumerate(self._layers()):
            block = slice(w.start, (b or w).stop)
            if self.structure == "block":
                out[block] = self.data[index] @ v[block]
                continue
            A, G = self.data[index]
            # (G (x) A) vec_row(Vbar) = vec_row(G Vbar A), Vbar = [V_W | v_b] : (out, in [+1]).
            tail = v.shape[1:]
            vbar = v[w].reshape(n_out, n_in, *tail)
            if b is not None:
                vbar = np.concatenate([vbar, v[b].reshape(n_out, 1, *tail)], axis=1)
            result = np.einsum("oj,jk...,ik->oi...", G, vbar, A)
            out[w] = result[:, :n_in].reshape(n_out * n_in, *tail)
            if b is not None:
                out[b] = result[:, n_in]
        return out

    def quadratic_form(self, v: np.ndarray) -> float:
        """v^T F v."""
        return float(np.dot(np.ravel(v), np.ravel(self.matvec(v))))

    # ---------------------------------------------------------------- files
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the curvature npz (EXCHANGE.md; block and kfac are our extension)."""
        if self.structure == "diag":
            arrays = dict(self.arrays)
        elif self.structure == "full":
            arrays = {"full": self.data}
        else:
            modules = [name.split(".")[0] for name in self.param_names if name.endswith(".weight")]
            arrays = {}
            for module, item in zip(modules, self.data, strict=True):
                if self.structure == "block":
                    arrays[f"block.{module}"] = item
                else:
                    arrays[f"kfac.{module}.A"], arrays[f"kfac.{module}.G"] = item
        arrays["__estimator__"] = np.array(self.estimator)
        arrays["__structure__"] = np.array(self.structure)
        arrays["__param_names__"] = np.array(self.param_names)
        if self.n is not None:
            arrays["__n__"] = np.array(self.n)
        if self.samples is not None:
            arrays["__samples__"] = np.array(self.samples)
        if self.batch_size is not None:
            arrays["__batch_size__"] = np.array(self.batch_size)
        return arrays

    def save(self, path) -> None:
        """Write the curvature npz atomically (temporary file, then rename)."""
        atomic_savez(path, self.to_arrays())

    @classmethod
    def load(cls, path, model: MLP | None = None) -> Curvature:
        """Read a curvature npz written by ewc_ref or by anyone following EXCHANGE.md.

        With `model`, keys and shapes are checked against it and diag files are put in the
        model's flat order (a foreign file may list its keys in any order). Without a model,
        diag files are taken in file order and full files need '__param_names__' or get a
        single anonymous parameter.
        """
        arrays = read_npz(path, "curvature file")
        return curvature_from_arrays(arrays, model, source=str(path))

    def __repr__(self) -> str:
        return f"Curvature(structure={self.structure!r}, estimator={self.estimator!r}, P={self.n_params}, n={self.n})"


def _kfac_block(A: np.ndarray, G: np.ndarray, has_bias: bool) -> np.ndarray:
    """G (x) A reordered from the augmented [W | b] row-major order to [vec_row(W), b]."""
    n_out, n_aug = G.shape[0], A.shape[0]
    n_in = n_aug - int(has_bias)
    order = [o * n_aug + i for o in range(n_out) for i in range(n_in)]
    if has_bias:
        order += [o * n_aug + n_in for o in range(n_out)]
    return np.kron(G, A)[np.ix_(order, order)]


META_KEYS = ("__estimator__", "__structure__", "__n__", "__param_names__", "__samples__", "__batch_size__")


def split_curvature_arrays(arrays: dict, source: str = "arrays") -> tuple[dict, dict]:
    """(metadata, numeric body) of a curvature npz; the body must be finite numbers.

    Integer arrays are converted to float64; ValueError names the file and key.
    """
    meta = {k: arrays[k] for k in META_KEYS if k in arrays}
    body = {}
    for key, value in arrays.items():
        if key in META_KEYS:
            continue
        if value.dtype.kind not in "fiu":
            raise ValueError(f"{source}: key {key!r} must be a numeric array, got dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: key {key!r} contains non-finite values")
        body[key] = value if value.dtype.kind == "f" else value.astype(np.float64)
    return meta, body


def curvature_from_arrays(arrays: dict, model: MLP | None = None, source: str = "arrays") -> Curvature:
    """Build a Curvature from the arrays of a curvature npz; ValueError names the key."""
    meta, body = split_curvature_arrays(arrays, source)
    structure = str(meta["__structure__"]) if "__structure__" in meta else ("full" if set(body) == {"full"} else "diag")
    check_choice(structure, f"{source}: key '__structure__'", STRUCTURES)
    estimator = str(meta.get("__estimator__", "unknown"))
    if model is not None:
        names, shapes = model.param_names, model.param_shapes
        has_bias = list(model.has_bias)
    elif "__param_names__" in meta:
        names = [str(n) for n in np.atleast_1d(meta["__param_names__"])]
        shapes = [body[n].shape for n in names if n in body] if structure == "diag" else None  # missing: reported below
        has_bias = _bias_pattern(names)
    elif structure == "diag":
        names = list(body)
        shapes = [body[n].shape for n in names]
        has_bias = _bias_pattern(names)
    else:
        names, shapes, has_bias = ["theta"], None, []

    if structure == "diag":
        missing = [n for n in names if n not in body]
        unknown = [k for k in body if k not in names]
        if missing or unknown:
            raise ValueError(f"{source}: keys do not match the model's parameters: missing {missing}, unknown {unknown}")
        for n, shape in zip(names, shapes, strict=True):
            if body[n].shape != tuple(shape):
                raise ValueError(f"{source}: key {n!r} has shape {body[n].shape}, expected {tuple(shape)}")
        data = np.concatenate([body[n].ravel() for n in names])
    elif structure == "full":
        if set(body) != {"full"}:
            raise ValueError(f"{source}: a full curvature file holds one key 'full', got {sorted(body)}")
        data = body["full"]
        if data.ndim != 2 or data.shape[0] != data.shape[1]:
            raise ValueError(f"{source}: key 'full' must be square (P, P), got shape {data.shape}")
        if shapes is None:
            shapes = [(data.shape[0],)] if names == ["theta"] else None
        if shapes is not None and data.shape[0] != int(sum(np.prod(s, dtype=int) for s in shapes)):
            raise ValueError(f"{source}: key 'full' has shape {data.shape}, expected P = {sum(int(np.prod(s)) for s in shapes)}")
    else:
        if model is None:
            raise ValueError(f"{source}: reading a {structure!r} curvature file needs the model")
        modules = [n.split(".")[0] for n in names if n.endswith(".weight")]
        data = []
        for module, (out, inp), bias in zip(modules, model.shapes, has_bias, strict=True):
            if structure == "block":
                key = f"block.{module}"
                size = out * inp + out * int(bias)
                item = body.get(key)
                if item is None or item.shape != (size, size):
                    raise ValueError(f"{source}: key {key!r} missing or not of shape ({size}, {size})")
                data.append(item)
            else:
                A, G = body.get(f"kfac.{module}.A"), body.get(f"kfac.{module}.G")
                a = inp + int(bias)
                if A is None or G is None or A.shape != (a, a) or G.shape != (out, out):
                    raise ValueError(f"{source}: keys 'kfac.{module}.A' ({a}, {a}) and 'kfac.{module}.G' ({out}, {out}) expected")
                data.append((A, G))
    if shapes is None:
        raise ValueError(f"{source}: cannot tell the parameter shapes of a full matrix without the model")
    n, samples, batch_size = (_meta_count(meta, key, source) for key in ("__n__", "__samples__", "__batch_size__"))
    return Curvature(structure, estimator, list(names), [tuple(s) for s in shapes], data, has_bias, n, samples, batch_size)


def _meta_count(meta: dict, key: str, source: str) -> int | None:
    """A count stored as a 0-d integer array (or an integral float), None when absent."""
    if key not in meta:
        return None
    value = meta[key]
    if value.shape == () and value.dtype.kind in "iuf" and np.isfinite(value) and float(value) == int(value) and value >= 0:
        return int(value)
    shown = repr(value.item()) if value.size == 1 else f"shape {value.shape}"
    raise ValueError(f"{source}: key {key!r} must be a 0-d non-negative integer array, got {value.dtype} {shown}")


def _bias_pattern(names: list[str]) -> list[bool]:
    pattern = []
    for i, name in enumerate(names):
        if name.endswith(".weight"):
            pattern.append(i + 1 < len(names) and names[i + 1] == name[: -len("weight")] + "bias")
    return pattern


# --------------------------------------------------------------------------- output-space vectors
def _output_vectors(lik: Likelihood, f: np.ndarray, y, estimator: str, samples: int, rng):
    """The vectors r_nk whose back-propagation gives u_nk = J_n^T r_nk (module docstring).

    Returns
    -------
    r : (K, n, C)
    weight : scalar w_k (the same for every k)
    """
    if estimator == "empirical":
        return lik.grad(f, y)[None], 1.0
    if estimator == "pred":
        return lik.grad(f, lik.most_probable(f))[None], 1.0
    if estimator == "mc":
        labels = lik.sample(f, rng, samples)  # (n, S, ...), drawn example by example
        return np.stack([lik.grad(f, labels[:, s]) for s in range(samples)]), 1.0 / samples
    # exact and ggn: the columns of the symmetric factor Q_n of Lambda_n.
    return np.moveaxis(lik.hessian_factor(f), -1, 0), 1.0


# --------------------------------------------------------------------------- streaming accumulator
class FisherAccumulator:
    """Streams a curvature estimate over chunks of examples.

    ``update(x_chunk, y_chunk)`` adds the chunk's sums, ``merge(other)`` adds another
    accumulator's (a map-reduce over partitions of the data), ``result()`` divides by the
    count and returns a Curvature. Everything is kept as SUMS, so any partition of the rows
    gives the one-shot result up to floating-point summation order.

    For ``batched`` the minibatches are the consecutive runs of `batch_size` rows in global
    row order; pass ``start`` = the global index of this accumulator's first row when several
    accumulators share the data. A minibatch split across chunks or accumulators is completed
    when its pieces meet (its gradient sum is linear in the rows).

    For ``mc`` the labels are drawn from `rng` example by example, so with one accumulator
    fed in row order the draws do not depend on the chunk size.
    """

    def __init__(self, model: MLP, lik: Likelihood, estimator: str = "empirical", structure: str = "diag",
                 samples: int = 1, batch_size: int | None = None, rng=None, start: int = 0):
        check_choice(estimator, "estimator", ESTIMATORS)
        check_choice(structure, "structure", STRUCTURES)
        if structure == "kfac" and estimator in ("batched", "hessian"):
            raise ValueError(f"structure: 'kfac' is defined for per-example outer products, not for estimator={estimator!r}")
        if structure == "full":
            check_dense_size(model.n_params)
        self.model, self.lik = model, lik
        self.estimator, self.structure = estimator, structure
        self.samples, self.batch_size = samples, batch_size
        self.rng = as_generator(rng) if estimator == "mc" else None
        self.start = self.position = int(start)
        self.count = 0  # rows seen
        self.n_batches = 0  # completed minibatches (batched)
        self.partial: dict[int, list] = {}  # batch index -> [gradient sum (P,), rows]
        self.total = None  # the structure's running sum

    # -- the per-structure sums of outer products ------------------------------
    def _add(self, sums, owned: bool = True):
        """Add `sums` to the running total; `owned` = they are fresh arrays nobody else holds,
        so the first one can become the total without a copy (a pass over P x P saved)."""
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

    def _outer_sums(self, cache, r: np.ndarray, weight: float):
        """sum_{n,k} weight * u_nk u_nk^T in the accumulator's structure, u = J^T r.

        Fast path by ewc_ref.kernels; the readable twin is _outer_sums_naive (tests/test_kernels.py).
        """
        model = self.model
        if self.structure == "diag":
            return _diag_sums(model, cache, kernels.backward_deltas(model, cache, r), weight)
        if self.structure == "kfac":
            deltas = kernels.backward_deltas(model, cache, r)
            return [kernels.kfac_factors(d, cache.inputs[l], weight, model.has_bias[l]) for l, d in enumerate(deltas)]
        # u_nk sqrt(w): a Python float keeps float32 models in float32 (a NumPy float64 would promote).
        deltas = kernels.backward_deltas(model, cache, r * math.sqrt(weight))
        dtype = np.result_type(r, model.theta)
        if self.structure == "full":
            return kernels.gram(kernels.per_sample_grads(deltas, cache.inputs, model.has_bias, dtype))
        # block: each layer's G_l : (K n, P_l) on its own, never the whole G.
        return [kernels.gram(kernels.per_sample_grads(deltas, cache.inputs, model.has_bias, dtype, layers=[l]))
                for l in range(model.n_layers)]

    def update(self, x_chunk: np.ndarray, y_chunk) -> FisherAccumulator:
        """Add the next rows (trusted input: validate with check_model_data first)."""
        n = x_chunk.shape[0]
        if n == 0:
            return self
        model, lik = self.model, self.lik
        if self.estimator == "hessian":
            from .hessian import hessian, hessian_blocks, hessian_diag

            function = {"diag": hessian_diag, "full": hessian, "block": hessian_blocks}[self.structure]
            chunk_mean = function(model, lik, x_chunk, y_chunk)
            self._add([b * n for b in chunk_mean] if isinstance(chunk_mean, list) else chunk_mean * n)
        elif self.estimator == "batched":
            self._update_batched(x_chunk, y_chunk)
        else:
            f, cache = model.forward(x_chunk)
            r, weight = _output_vectors(lik, f, y_chunk, self.estimator, self.samples, self.rng)
            self._add(self._outer_sums(cache, r, weight))
        self.count += n
        self.position += n
        return self

    def _update_batched(self, x_chunk, y_chunk):
        B, model, lik = self.batch_size, self.model, self.lik
        f, cache = model.forward(x_chunk)
        # Gradient SUM of each minibatch piece inside this chunk: rows grouped by global batch index.
        rows = np.arange(self.position, self.position + x_chunk.shape[0])
        batch_of_row = rows // B
        first, last = batch_of_row[0], batch_of_row[-1]
        onehot = (batch_of_row[None, :] == np.arange(first, last + 1)[:, None]).astype(f.dtype)  # (k, n)
        df = lik.grad(f, y_chunk)
        sums = model.backward(cache, onehot[:, :, None] * df[None])  # (k, P)
        counts = onehot.sum(axis=1).astype(int)
        for index, grad_sum, rows_in in zip(range(first, last + 1), sums, counts, strict=True):
            self._add_batch_piece(int(index), grad_sum, int(rows_in))

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
        if (other.estimator, other.structure, other.batch_size) != (self.estimator, self.structure, self.batch_size):
            raise ValueError("other: accumulators differ in estimator, structure or batch_size")
        if other.total is not None:
            self._add(other.total, owned=False)
        self.count += other.count
        self.n_batches += other.n_batches
        for index, (grad_sum, rows) in other.partial.items():
            self._add_batch_piece(index, grad_sum, rows)
        return self

    def result(self) -> Curvature:
        """The mean: sums / N (or / number of minibatches for batched)."""
        if self.count == 0:
            raise ValueError("no examples were added")
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
        data = [_divide(item, divisor) for item in total] if isinstance(total, list) else total / divisor
        return Curvature(
            self.structure, self.estimator, model.param_names, model.param_shapes, data, list(model.has_bias),
            n=self.count, samples=self.samples if self.estimator == "mc" else None,
            batch_size=self.batch_size if self.estimator == "batched" else None,
        )


def _divide(item, divisor):
    return tuple(part / divisor for part in item) if isinstance(item, tuple) else item / divisor


def _copy(item):
    if isinstance(item, list):
        return [_copy(i) for i in item]
    if isinstance(item, tuple):
        return tuple(i.copy() for i in item)
    return item.copy()


def _diag_sums(model: MLP, cache, deltas, weight: float) -> np.ndarray:
    """diag(sum_{n,k} w u_nk u_nk^T) per layer: (sum_k w delta_nk^2)^T (a_n^2), one GEMM.

    Fast path: kernels.diag_second_moment. Twins: _diag_sums_naive below (the same GEMM
    written inline) and ``(per_sample_grads**2).sum`` (tests/test_curvature.py).
    """
    out = np.empty(model.n_params, dtype=np.result_type(cache.inputs[0], model.theta))
    for l, delta in enumerate(deltas):
        weight_diag, bias_diag = kernels.diag_second_moment(delta, cache.inputs[l], weight, model.has_bias[l])
        out[model.weight_slices[l]] = weight_diag.ravel()
        if bias_diag is not None:
            out[model.bias_slices[l]] = bias_diag
    return out


def _diag_sums_naive(model: MLP, cache, deltas, weight: float) -> np.ndarray:
    """Twin of _diag_sums (the original inline NumPy): sum over the K vectors, then one GEMM."""
    out = np.empty(model.n_params, dtype=np.result_type(cache.inputs[0], model.theta))
    for l, delta in enumerate(deltas):
        sq = weight * np.einsum("kno,kno->no", delta, delta)  # sum over the K vectors first
        a = cache.inputs[l]
        out[model.weight_slices[l]] = (sq.T @ (a * a)).ravel()
        if model.has_bias[l]:
            out[model.bias_slices[l]] = sq.sum(axis=0)
    return out


def _outer_sums_naive(model: MLP, structure: str, cache, r: np.ndarray, weight: float):
    """Twin of FisherAccumulator._outer_sums (the original NumPy): per-example gradients of
    mlp.per_sample_grads, then G^T G, block slices of it, or the KFAC factor GEMMs."""
    deltas = model.backward_deltas(cache, r)
    if structure == "diag":
        return _diag_sums_naive(model, cache, deltas, weight)
    if structure == "kfac":
        sums = []
        for l, delta in enumerate(deltas):
            a = cache.inputs[l]
            if model.has_bias[l]:
                a = np.concatenate([a, np.ones((a.shape[0], 1), dtype=a.dtype)], axis=1)
            d = delta.reshape(-1, delta.shape[-1])
            sums.append((a.T @ a, weight * (d.T @ d)))
        return sums
    G = model.per_sample_grads(cache, r * math.sqrt(weight))
    G = G.reshape(-1, G.shape[-1])
    if structure == "full":
        return G.T @ G
    return [G[:, s].T @ G[:, s] for s in model.layer_slices]


# --------------------------------------------------------------------------- public entry point
def default_chunk_size(model: MLP, estimator: str, structure: str, samples: int, n_outputs: int) -> int:
    """Rows per chunk so that one chunk's temporaries stay near a fixed budget (never N).

    Budget (benchmarks/BENCHMARKS.md measures both choices):

    * diag, kfac: CHUNK_BYTES / 4 of (K rows x layer widths). Their chunk work is a few GEMMs
      whose speed saturates at a few hundred rows; smaller chunks keep the peak flat from
      smaller N on (784-256-256-10: ~800 rows, so N = 1,000 and 10,000 peak alike).
    * full, block: max(CHUNK_BYTES, bytes of the output) of per-example gradients G. Every
      chunk adds a freshly allocated Gram matrix (P x P, or P_l x P_l per layer) into the
      running sum, which costs more than the rank-(K n) update itself when n << P.
    """
    k = max(1, {"mc": samples, "exact": n_outputs, "ggn": n_outputs}.get(estimator, 1))
    if estimator == "hessian":
        return max(1, CHUNK_BYTES // (8 * max(1, model.n_params * 4)))
    if structure in ("full", "block"):
        sizes = [model.n_params] if structure == "full" else [s.stop - s.start for s in model.layer_slices]
        budget = max(CHUNK_BYTES, 8 * sum(p * p for p in sizes))
        return max(1, budget // (8 * k * max(sizes)))
    return max(1, (CHUNK_BYTES // 4) // (8 * k * max(1, sum(model.layer_sizes))))


def fisher(model: MLP, lik: Likelihood, x, y, estimator: str = "empirical", structure: str = "diag",
           samples: int | None = None, batch_size: int | None = None, rng=None,
           chunk_size: int | None = None, progress: bool = False) -> Curvature:
    """A curvature matrix of the mean loss (module docstring; EXCHANGE.md "Conventions").

    Parameters
    ----------
    model, lik : the network and its likelihood
    x : (N, d_in); y : labels for `lik`
    estimator : 'empirical', 'exact', 'mc', 'batched', 'pred', 'ggn' or 'hessian'
    structure : 'diag', 'full', 'block' or 'kfac'
    samples : S labels per example, estimator='mc' only (default 1)
    batch_size : B, estimator='batched' only (required), 1 <= B <= N
    rng : numpy Generator or seed for 'mc'
    chunk_size : rows per streamed chunk (default: ~32 MiB of temporaries)
    progress : report progress on stderr

    Returns
    -------
    Curvature

    Raises
    ------
    ValueError / TypeError naming the argument: unknown estimator or structure, samples or
    batch_size out of range or given to an estimator that does not use them, labels outside the
    likelihood's support, NaN/inf in parameters or data, 'full' above MAX_DENSE_BYTES.

    Notes
    -----
    Report eq (9): the Fisher of the likelihood (not of the posterior, as the report writes it),
    as a mean over examples; the Laplace precision of derivations/03 is N F + prior precision.
    """
    estimator = check_choice(estimator, "estimator", ESTIMATORS)
    structure = check_choice(structure, "structure", STRUCTURES)
    x, y = check_model_data(model, lik, x, y)
    if not np.all(np.isfinite(model.theta)):
        raise ValueError("model: parameters contain NaN or inf")
    n = x.shape[0]
    if estimator == "mc":
        samples = 1 if samples is None else check_positive_int(samples, "samples")
    elif samples is not None:
        raise ValueError(f"samples: only used by estimator='mc', got samples={samples} with estimator={estimator!r}")
    if estimator == "batched":
        if batch_size is None:
            raise ValueError("batch_size: required for estimator='batched'")
        batch_size = check_positive_int(batch_size, "batch_size", upper=n)
    elif batch_size is not None:
        raise ValueError(f"batch_size: only used by estimator='batched', got batch_size={batch_size} with estimator={estimator!r}")
    if chunk_size is None:
        chunk_size = default_chunk_size(model, estimator, structure, samples or 1, model.n_outputs)
    else:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    accumulator = FisherAccumulator(model, lik, estimator, structure, samples or 1, batch_size, rng)
    meter = Progress(n, f"fisher {estimator}/{structure}", enabled=progress)
    for begin in range(0, n, chunk_size):
        accumulator.update(x[begin : begin + chunk_size], y[begin : begin + chunk_size])
        meter.update(min(chunk_size, n - begin))
    if progress:
        meter.close()
    return accumulator.result()
