"""Likelihoods p(y | f) on the network output f, registered in one table.

Each is an exponential family with its canonical link, so the Hessian of the
per-example loss w.r.t. the output, Lambda = d^2 l / d f^2, does not depend on
the label: this is why the GGN equals the exact Fisher here (derivations/04).

For each likelihood, with f : (N, C):

=============  ==============================  =================  =========================
name           l(f, y) = -log p(y | f)          d l / d f          Lambda = d^2 l / d f^2
=============  ==============================  =================  =========================
categorical    logsumexp(f) - f_y               p - onehot(y)      diag(p) - p p^T
gaussian       ||y - f||^2 / (2 s^2) + c        (f - y) / s^2      I / s^2
bernoulli      sum_c softplus(f_c) - y_c f_c    p - y              diag(p (1 - p))
=============  ==============================  =================  =========================

with p = softmax(f) (categorical), p = sigmoid(f) (bernoulli), s = sigma and
c = C/2 log(2 pi s^2), the normalising constant, kept so that the NLL is a true
negative log density (the evidence computations of bayes/ need it).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import expit, log_softmax, logsumexp, softmax

from .._validate import as_float_array, check_number


class Likelihood:
    """Interface; see the module docstring for the formulas."""

    name: str = ""
    #: l_n and Lambda_n = d^2 l_n / d f^2 in words, as docs/file-format.md section 5 shows them (tools/table_docs.py)
    nll_formula: str = ""
    lambda_formula: str = ""

    def nll(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-example negative log-likelihood l_n, shape (N,)."""
        raise NotImplementedError

    def grad(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        """d l_n / d f_n, shape (N, C)."""
        raise NotImplementedError

    def hessian(self, f: np.ndarray) -> np.ndarray:
        """Lambda_n = d^2 l_n / d f_n^2, shape (N, C, C) (label-independent here)."""
        raise NotImplementedError

    def hessian_factor(self, f: np.ndarray) -> np.ndarray:
        """Q_n with Q_n Q_n^T = Lambda_n, shape (N, C, K); columns are the "pseudo-labels"
        whose back-propagation gives J^T Lambda J = sum_k (J^T q_k)(J^T q_k)^T."""
        raise NotImplementedError

    def hessian_diag(self, f: np.ndarray) -> np.ndarray:
        """diag(Lambda_n), shape (N, C): the cheap structured form."""
        return np.diagonal(self.hessian(f), axis1=-2, axis2=-1).copy()

    def sample(self, f: np.ndarray, rng: np.random.Generator, samples: int | None = None) -> np.ndarray:
        """Labels drawn from p(y | f_n): one per example, shape (N, ...), or with
        `samples` = S, shape (N, S, ...).

        Random numbers are consumed example by example, so drawing for rows
        [0, a) and then [a, N) gives exactly the labels drawn for [0, N) at once:
        chunked (streamed) estimators do not depend on the chunk size.
        """
        if samples is None:
            return self._sample(f[:, None, :], rng)[:, 0]
        return self._sample(np.broadcast_to(f[:, None, :], (f.shape[0], samples, f.shape[1])), rng)

    def _sample(self, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def mean(self, f: np.ndarray) -> np.ndarray:
        """E[y | f] (probabilities for categorical/bernoulli), shape (N, C)."""
        raise NotImplementedError

    def most_probable(self, f: np.ndarray) -> np.ndarray:
        """The mode of p(y | f_n): argmax class, thresholded bits, or the mean."""
        raise NotImplementedError

    def check_labels(self, y, n: int, n_outputs: int, name: str = "y") -> np.ndarray:
        """Validate labels for N = n examples and C = n_outputs; raise ValueError naming `name`."""
        raise NotImplementedError

    def accuracy(self, f: np.ndarray, y: np.ndarray) -> float | None:
        """Fraction of correct most-probable predictions, or None where undefined."""
        return None

    # -- per-likelihood rules of the naive twins, diagnose's mc moments and the test strategies
    #: Fewest outputs C the likelihood is defined for.
    min_outputs: int = 1

    def random_labels(self, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Labels anywhere in the support for f : (N, C), not drawn from the model (test data)."""
        raise NotImplementedError

    def label_quadrature(self, f: np.ndarray, points: int = 3) -> tuple[list, np.ndarray]:
        """Every label with its probability under p(y | f_n), for exact expectations.

        f : (N, C). Returns labels, a list of K label arrays shaped like y for N rows, and
        weights : (N, K) summing to 1 per row, with E_y[h(y)] = sum_k weights[:, k] h(labels[k])
        exactly for the quadratic h = g g^T of the Fisher (a quadrature rule for continuous y).
        """
        raise TypeError(f"lik: no label enumeration for {type(self).__name__}")

    def gradient_cumulants(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(m2, k4) : (N, C), second moment and fourth cumulant of the independent zero-mean
        entries e_c of e = d l / d f under y ~ p(y | f); None when the entries are dependent
        (then diagnose enumerates ``label_quadrature``)."""
        raise TypeError(f"lik: no mc moments for {type(self).__name__}")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model.npz metadata keys for this likelihood."""
        return {"__likelihood__": np.array(self.name)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_arrays().keys() == other.to_arrays().keys() and all(
            np.array_equal(v, other.to_arrays()[k]) for k, v in self.to_arrays().items()
        )

    def __hash__(self) -> int:
        return hash(self.name)


def _check_shape(y: np.ndarray, shape: tuple, name: str) -> None:
    if y.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {y.shape}")


def softmax_and_complement(f: np.ndarray):
    """p = softmax(f) and q = 1 - p, both to round-off relative to themselves.

    1 - p cancels when p is near 1: for the most probable class q is the sum of the other
    probabilities instead (for the others p <= 1/2 and 1 - p is exact enough). This keeps the
    Fisher of a confident network (margins > 37 nats, where fl(p) = 1) from being lost.
    """
    p = softmax(f, axis=-1)
    q = 1.0 - p
    top = np.argmax(f, axis=-1)[..., None]
    others = p.copy()
    np.put_along_axis(others, top, 0.0, axis=-1)
    np.put_along_axis(q, top, others.sum(axis=-1, keepdims=True), axis=-1)
    return p, q


class Categorical(Likelihood):
    """Softmax over C logits; labels are integer class indices 0..C-1."""

    name = "categorical"
    nll_formula = "logsumexp(f) - f[y_n]"
    lambda_formula = "diag(p) - p p^T, p = softmax(f)"

    def nll(self, f, y):
        return logsumexp(f, axis=-1) - np.take_along_axis(f, y[..., None], axis=-1)[..., 0]

    def grad(self, f, y):
        # p - onehot(y), with p_y - 1 = -(1 - p_y) taken from the accurate complement.
        p, q = softmax_and_complement(f)
        np.put_along_axis(p, y[..., None], -np.take_along_axis(q, y[..., None], axis=-1), axis=-1)
        return p

    def hessian(self, f):
        # Lambda = diag(p) - p p^T, with the diagonal p (1 - p) from the accurate complement.
        p, q = softmax_and_complement(f)
        lam = -p[..., :, None] * p[..., None, :]
        diagonal = np.einsum("...ii->...i", lam)
        diagonal[...] = p * q
        return lam

    def hessian_factor(self, f):
        """Q : (N, C, C - 1) with Q Q^T = Lambda: C - 1 = rank(Lambda) backward passes for `exact`.

        With s = sqrt(p), a unit vector, Lambda = diag(p) - p p^T = diag(s) (I - s s^T) diag(s),
        and I - s s^T = U U^T for any orthonormal basis U of the complement of s. The
        Householder reflection H = I - 2 v v^T / |v|^2 with v = s + e_m, m = the most probable
        class, maps s to -e_m, so its columns k != m are such a basis; written out
        (|v|^2 = 2 (1 + s_m)):

            U[m, k] = -s_k,    U[i, k] = delta_ik - s_i s_k / (1 + s_m)   (i, k != m)

        and Q = diag(s) U. Anchoring at the most probable class keeps every entry of Q Q^T
        accurate to round-off relative to itself, also for saturated outputs (p_m = 1 - 1e-20),
        where 1 - p_m would cancel. The square factor diag(s) - p s^T (one column more) is
        `hessian_factor_square`, the readable twin.

        Entry by entry, with c_k the k-th class other than m, t_k = s_{c_k} / (1 + s_m) and
        p_i = s_i^2 (products only, no sum, so no cancellation):

            Q[i, k] = -p_i t_k  (i != c_k, m),  Q[c_k, k] = s_{c_k} (1 - s_{c_k} t_k),  Q[m, k] = -s_m s_{c_k}

        so Q is one broadcast product plus two (N, C - 1) corrections (2x faster than forming U).
        Its memory is ordered (C - 1, N, C): ``np.moveaxis(Q, -1, 0)``, the backward vectors of
        ``exact``, is C-contiguous, so the stacked backward GEMM reads it without a copy.
        """
        c = f.shape[-1]
        if c == 1:  # one class: p = 1, Lambda = 0
            return np.zeros(f.shape + (1,), dtype=f.dtype)
        lead, k = f.shape[:-1], c - 1
        f = f.reshape(-1, c)
        s = np.sqrt(softmax(f, axis=-1))
        rows = np.arange(f.shape[0])[:, None]
        m = np.argmax(f, axis=-1)[:, None]  # (N, 1)
        ks = np.arange(k)
        columns = ks + (ks >= m)  # (N, C - 1): the classes k != m
        s_m, s_k = s[rows, m], s[rows, columns]  # (N, 1), (N, C - 1)
        Q = np.empty((k,) + f.shape, dtype=s.dtype).transpose(1, 2, 0)  # (N, C, C - 1) view of (C - 1, N, C)
        np.multiply(-(s * s)[:, :, None], (s_k / (1.0 + s_m))[:, None, :], out=Q)
        Q[rows, columns, ks] = s_k * ((-s_k * s_k) / (1.0 + s_m) + 1.0)
        Q[rows, m, ks] = s_m * -s_k
        return Q.reshape(*lead, c, k)

    def hessian_factor_square(self, f):
        """Q = diag(sqrt p) - p sqrt(p)^T : (N, C, C); Q Q^T = diag(p) - p p^T because sum(p) = 1."""
        p = softmax(f, axis=-1)
        s = np.sqrt(p)
        return s[..., :, None] * np.eye(f.shape[-1], dtype=f.dtype) - p[..., :, None] * s[..., None, :]

    def hessian_diag(self, f):
        p, q = softmax_and_complement(f)
        return p * q

    def _sample(self, f, rng):
        # Gumbel-max: argmax(log p + G) ~ Categorical(p), stable for any logits.
        return np.argmax(log_softmax(f, axis=-1) + rng.gumbel(size=f.shape), axis=-1)

    def mean(self, f):
        return softmax(f, axis=-1)

    def most_probable(self, f):
        return np.argmax(f, axis=-1)

    def check_labels(self, y, n, n_outputs, name="y"):
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: categorical labels must be integer class indices, got dtype {y.dtype}")
        _check_shape(y, (n,), name)
        if y.size and (y.min() < 0 or y.max() >= n_outputs):
            raise ValueError(
                f"{name}: categorical labels must lie in 0..{n_outputs - 1} (the model has {n_outputs} outputs), "
                f"got range {y.min()}..{y.max()}"
            )
        return y.astype(np.intp, copy=False)

    def accuracy(self, f, y):
        return float(np.mean(np.argmax(f, axis=-1) == y))

    min_outputs = 2

    def random_labels(self, f, rng):
        return rng.integers(0, f.shape[-1], f.shape[0])

    def label_quadrature(self, f, points=3):
        n, c = f.shape
        return [np.full(n, k) for k in range(c)], self.mean(f)

    def gradient_cumulants(self, f):
        return None  # e = p - onehot(y): the C entries are dependent, enumerate the C labels


class Gaussian(Likelihood):
    """Independent Gaussian per output with fixed standard deviation sigma, identity link."""

    name = "gaussian"
    nll_formula = "sum_c (y_nc - f_c)^2 / (2 sigma^2) + C/2 log(2 pi sigma^2)"
    lambda_formula = "I / sigma^2"

    def __init__(self, sigma: float = 1.0):
        sigma = check_number(sigma, "sigma")  # Gaussian('1') is a mistake, not a sigma
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma: expected a finite number > 0, got {sigma}")
        self.sigma = sigma

    def nll(self, f, y):
        c = f.shape[-1]
        return 0.5 * np.sum((y - f) ** 2, axis=-1) / self.sigma**2 + 0.5 * c * np.log(2 * np.pi * self.sigma**2)

    def grad(self, f, y):
        return (f - y) / self.sigma**2

    def hessian(self, f):
        eye = np.eye(f.shape[-1], dtype=f.dtype) / self.sigma**2
        return np.broadcast_to(eye, f.shape + f.shape[-1:]).copy()

    def hessian_factor(self, f):
        eye = np.eye(f.shape[-1], dtype=f.dtype) / self.sigma
        return np.broadcast_to(eye, f.shape + f.shape[-1:]).copy()

    def hessian_diag(self, f):
        return np.full_like(f, 1 / self.sigma**2)

    def _sample(self, f, rng):
        # In f's dtype, as Bernoulli: float64 noise would promote a float32 model's mc Fisher.
        return (f + self.sigma * rng.standard_normal(f.shape)).astype(f.dtype, copy=False)

    def mean(self, f):
        return f

    def most_probable(self, f):
        return f.copy()

    def check_labels(self, y, n, n_outputs, name="y"):
        y = as_float_array(y, name, ndim=2)
        _check_shape(y, (n, n_outputs), name)
        return y

    def random_labels(self, f, rng):
        return f + rng.standard_normal(f.shape)

    def label_quadrature(self, f, points=3):
        # Tensor-product Gauss-Hermite with k points per output: exact for polynomials of degree
        # <= 2k - 1 in y; g g^T is quadratic, so k = 2 would do and k = 3 leaves a margin.
        n, c = f.shape
        if c > 6:
            raise ValueError(f"f: Gauss-Hermite over C outputs needs C <= 6, got C = {c}")
        nodes, w = np.polynomial.hermite_e.hermegauss(points)  # weight exp(-t^2/2)
        w = w / w.sum()
        grid = list(itertools.product(range(len(nodes)), repeat=c))
        labels = [f + self.sigma * nodes[list(idx)] for idx in grid]
        weights = np.array([np.prod(w[list(idx)]) for idx in grid])
        return labels, np.broadcast_to(weights, (n, len(grid))).copy()

    def gradient_cumulants(self, f):
        # e = (f - y) / sigma^2 ~ N(0, 1 / sigma^2): no fourth cumulant.
        return np.full(f.shape, 1.0 / self.sigma**2), np.zeros(f.shape)

    def to_arrays(self):
        return {"__likelihood__": np.array(self.name), "__sigma__": np.array(self.sigma)}

    def __repr__(self):
        return f"Gaussian(sigma={self.sigma!r})"


class Bernoulli(Likelihood):
    """Independent Bernoulli per output, p = sigmoid(f); labels in {0, 1}^C."""

    name = "bernoulli"
    nll_formula = "sum_c [log(1 + e^{f_c}) - y_nc f_c]"
    lambda_formula = "diag(p (1 - p)), p = sigmoid(f)"

    def nll(self, f, y):
        return np.sum(np.logaddexp(0, f) - y * f, axis=-1)

    def grad(self, f, y):
        # sigmoid(f) - 1 = -sigmoid(-f) without cancellation where y = 1.
        return np.where(y == 1, -expit(-f), expit(f) - y)

    def hessian(self, f):
        return self.hessian_diag(f)[..., :, None] * np.eye(f.shape[-1], dtype=f.dtype)

    def hessian_factor(self, f):
        return np.sqrt(self.hessian_diag(f))[..., :, None] * np.eye(f.shape[-1], dtype=f.dtype)

    def hessian_diag(self, f):
        return expit(f) * expit(-f)  # p (1 - p) without cancellation

    def _sample(self, f, rng):
        return (rng.random(f.shape) < expit(f)).astype(f.dtype)

    def mean(self, f):
        return expit(f)

    def random_labels(self, f, rng):
        return rng.integers(0, 2, f.shape).astype(f.dtype)

    def label_quadrature(self, f, points=3):
        n, c = f.shape
        if c > 12:
            raise ValueError(f"f: enumerating 2^C bernoulli labels needs C <= 12, got C = {c}")
        # 1 - p as sigmoid(-f): for a saturated logit (f ~ 600) 1 - p cancels to 0, losing the
        # only label with weight (a Bernoulli with f = 584.8 enumerated to F = 0).
        p, complement = self.mean(f), self.mean(-f)
        bits = [np.array(b, dtype=float) for b in itertools.product([0.0, 1.0], repeat=c)]
        weights = np.stack([np.prod(np.where(b == 1, p, complement), axis=-1) for b in bits], axis=-1)
        return [np.broadcast_to(b, (n, c)).copy() for b in bits], weights

    def gradient_cumulants(self, f):
        # e = p - y: E e^2 = p (1 - p), E e^4 = m2 (1 - 3 m2), so k4 = m2 (1 - 3 m2) - 3 m2^2.
        m2 = self.hessian_diag(f)
        return m2, m2 * (1 - 3 * m2) - 3 * m2**2

    def most_probable(self, f):
        return (f >= 0).astype(f.dtype)

    def check_labels(self, y, n, n_outputs, name="y"):
        y = as_float_array(y, name, ndim=2)
        _check_shape(y, (n, n_outputs), name)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{name}: bernoulli labels must be 0 or 1, got values such as {y[(y != 0) & (y != 1)][0]!r}")
        return y

    def accuracy(self, f, y):
        return float(np.mean((f >= 0) == (y == 1)))


LIKELIHOODS = {"categorical": Categorical, "gaussian": Gaussian, "bernoulli": Bernoulli}


def get_likelihood(name: str, sigma: float | None = None) -> Likelihood:
    """Build a likelihood by name; `sigma` only for 'gaussian' (default 1.0)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, got {name!r}")
    if name == "gaussian":
        return Gaussian(1.0 if sigma is None else sigma)
    if sigma is not None:
        raise ValueError(f"sigma: only meaningful for the gaussian likelihood, got sigma={sigma} for {name!r}")
    return LIKELIHOODS[name]()
