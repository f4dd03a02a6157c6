"""Bayes' rule for network parameters, the report's eqs. (1), (2) and (4), as arrays.

For a data set D = {(x_n, y_n)}, n = 1..N, and parameters theta:

    (1)  p(theta | D) = p(D | theta) p(theta) / p(D),   p(D) = int p(D | theta) p(theta) d theta
    (2)  log p(theta | D) = log p(D | theta) + log p(theta) - log p(D)
    (L1) log p(D | theta) = sum_n log p(y_n | f(x_n; theta)) = -sum_n l_n(theta)

(L1) is local to this module: the report's (3) is the maximisation of the log posterior (2).

The log-likelihood is a SUM over examples (the training loss of docs/file-format.md is the mean,
L = 1/N sum_n l_n, so log p(D | theta) = -N L(theta)). The gaussian NLL keeps its
normalising constant, so every evidence computed from these densities is a true log p(D).

With D = A u B (two tasks, independent given theta), task A's posterior is task B's prior:

    (4)  log p(theta | A, B) = log p(B | theta) + log p(theta | A) - log p(B | A)

and p(A, B) = p(A) p(B | A) (the evidence chain rule). EWC replaces p(theta | A) by a
Gaussian (laplace.py); here it stays exact (`PosteriorPrior`).

Low-dimensional parameter spaces
--------------------------------
Posteriors are integrated numerically (grid.py), which is possible only in d <= 3 dimensions.
`Subspace(model, free_indices)` maps a vector z : (d,) to the full theta : (P,) by writing z into
the chosen entries of a fixed base theta, so a single Linear layer (logistic or linear
regression) or a real MLP with all but 2-3 parameters frozen has a posterior over z:

    theta(z) = theta_0 + E z,   E : (P, d) the columns of the identity at `free_indices`

and by the chain rule d log p / d z = E^T d log p / d theta (the entries at `free_indices`).

Example
-------
>>> import numpy as np, ewc_ref as er
>>> model = er.MLP([np.zeros((1, 2))], [None], "identity")     # logistic regression, 2 weights
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((50, 2)); y = (rng.random((50, 1)) < 0.5).astype(float)
>>> post = er.LogPosterior(er.Subspace(model, [0, 1]), er.Bernoulli(), x, y,
...                        er.GaussianPrior.isotropic(2, variance=4.0))
>>> bool(post(np.zeros(2)) == post.log_likelihood(np.zeros(2)) + post.prior.logpdf(np.zeros(2)))
True
"""

from __future__ import annotations

import numpy as np

from .._validate import as_float_array, finite_or_refused
from ..model.likelihoods import Likelihood
from ..model.loss import check_model_data
from ..model.mlp import MLP

# Evaluate the network at K parameter vectors at once in chunks whose activations hold at
# most this many floats (K * N * width), about 32 MB in float64.
_BATCH_FLOATS = 2**22

LOG_2PI = float(np.log(2 * np.pi))


def as_points(z, d: int, name: str = "z") -> np.ndarray:
    """Validate a (d,) point or a (..., d) batch of points."""
    z = as_float_array(z, name).astype(np.float64, copy=False)
    if z.ndim == 0 or z.shape[-1] != d:
        raise ValueError(f"{name}: expected shape (d,) or (K, d) with d = {d}, got shape {z.shape}")
    return z


# ----------------------------------------------------------------------------- priors
class GaussianPrior:
    """p(theta) = N(theta; m, Lambda^{-1}), fully normalised.

    log p(theta) = -1/2 (theta - m)^T Lambda (theta - m) + 1/2 log det Lambda - d/2 log 2 pi

    Parameters
    ----------
    mean : (d,) m
    precision : float, (d,) or (d, d): Lambda as isotropic alpha * I, diagonal, or full
        symmetric positive definite matrix.
    """

    def __init__(self, mean, precision):
        mean = as_float_array(mean, "mean", ndim=1).astype(np.float64)
        d = mean.size
        if d == 0:
            raise ValueError("mean: expected at least one dimension, got shape (0,)")
        # No copy when already float64: the stored matrix below is a new array in every branch (issue #26).
        precision = as_float_array(precision, "precision").astype(np.float64, copy=False)
        if precision.ndim == 0:
            precision = np.full(d, float(precision))
        if precision.ndim == 1:
            if precision.shape != (d,):
                raise ValueError(f"precision: expected shape ({d},) to match mean, got {precision.shape}")
            if np.any(precision <= 0):
                raise ValueError(f"precision: expected entries > 0, got minimum {precision.min()}")
            matrix = np.diag(precision)
        elif precision.ndim == 2:
            if precision.shape != (d, d):
                raise ValueError(f"precision: expected shape ({d}, {d}) to match mean, got {precision.shape}")
            # allclose by row blocks (the same test entry by entry): its temporaries are a block,
            # not several d x d arrays (issue #26: d = 2410 took 4 d^2 besides the input).
            rows = max(1, 2**20 // d)
            if not all(np.allclose(precision[i:i + rows], precision.T[i:i + rows], rtol=1e-12, atol=0)
                       for i in range(0, d, rows)):
                raise ValueError("precision: expected a symmetric matrix")
            matrix = precision + precision.T
            matrix *= 0.5
        else:
            raise ValueError(f"precision: expected a scalar, (d,) or (d, d) array, got shape {precision.shape}")
        try:
            self._cholesky = np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ValueError("precision: expected a positive definite matrix") from None
        self.mean = mean
        self.precision = matrix
        self.is_diagonal = precision.ndim == 1
        self.log_det_precision = 2.0 * float(np.sum(np.log(np.diag(self._cholesky))))

    @classmethod
    def isotropic(cls, d: int, variance: float = 1.0, mean=0.0) -> GaussianPrior:
        """N(m, variance * I) in d dimensions (weight decay alpha = 1 / variance)."""
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
            raise ValueError(f"d: expected an integer >= 1, got {d!r}")
        variance = float(variance)
        if not np.isfinite(variance) or variance <= 0:
            raise ValueError(f"variance: expected a finite number > 0, got {variance}")
        return cls(np.broadcast_to(np.asarray(mean, np.float64), (int(d),)).copy(), 1.0 / variance)

    @classmethod
    def diagonal(cls, mean, variances) -> GaussianPrior:
        """N(m, diag(variances))."""
        variances = as_float_array(variances, "variances", ndim=1)
        if np.any(variances <= 0):
            raise ValueError(f"variances: expected entries > 0, got minimum {variances.min()}")
        return cls(mean, 1.0 / variances)

    @property
    def d(self) -> int:
        return self.mean.size

    @property
    def cov(self) -> np.ndarray:
        return np.linalg.inv(self.precision)

    def logpdf(self, z) -> np.ndarray:
        """log N(z; m, Lambda^{-1}) for z : (..., d); returns (...)."""
        z = as_points(z, self.d)
        r = z - self.mean
        quad = np.einsum("...i,ij,...j->...", r, self.precision, r)
        return -0.5 * quad + 0.5 * self.log_det_precision - 0.5 * self.d * LOG_2PI

    def grad(self, z) -> np.ndarray:
        """d log p / d z = -Lambda (z - m) : (..., d)."""
        z = as_points(z, self.d)
        return -(z - self.mean) @ self.precision

    def __repr__(self) -> str:
        kind = "diagonal" if self.is_diagonal else "full"
        return f"GaussianPrior(d={self.d}, {kind} precision)"


class PosteriorPrior:
    """Task A's normalised posterior used as task B's prior, eq (4).

    log p(theta | A) = log p(A | theta) + log p(theta) - log p(A)

    Parameters
    ----------
    log_posterior : LogPosterior of task A (unnormalised)
    log_evidence : log p(A), e.g. `grid_posterior(...).log_evidence`
    """

    def __init__(self, log_posterior: LogPosterior, log_evidence: float):
        if not isinstance(log_posterior, LogPosterior):
            raise TypeError(f"log_posterior: expected an ewc_ref.LogPosterior, got {type(log_posterior).__name__}")
        log_evidence = float(log_evidence)
        if not np.isfinite(log_evidence):
            raise ValueError(f"log_evidence: expected a finite number, got {log_evidence}")
        self.log_posterior = log_posterior
        self.log_evidence = log_evidence

    @property
    def d(self) -> int:
        return self.log_posterior.d

    def logpdf(self, z) -> np.ndarray:
        return self.log_posterior(z) - self.log_evidence

    def grad(self, z) -> np.ndarray:
        return self.log_posterior.grad(z)

    def __repr__(self) -> str:
        return f"PosteriorPrior(N_A={self.log_posterior.n}, log p(A)={self.log_evidence:.6g})"


# ----------------------------------------------------------------------------- likelihood
@finite_or_refused
def log_likelihood(model: MLP, lik: Likelihood, x, y) -> float:
    """log p(D | theta) = sum_n log p(y_n | f(x_n; theta)) = -sum_n l_n, (L1): a SUM, not a mean."""
    x, y = check_model_data(model, lik, x, y)
    return -float(np.sum(lik.nll(model.forward(x)[0], y)))


class Subspace:
    """theta(z) = theta_0 + E z: a model whose only free parameters are `free_indices`.

    Parameters
    ----------
    model : MLP whose current theta is theta_0 (the frozen values); it is copied
    free_indices : d distinct flat indices into theta (see `model.param_names`,
        `model.param_slices`), 1 <= d <= P
    """

    def __init__(self, model: MLP, free_indices):
        if not isinstance(model, MLP):
            raise TypeError(f"model: expected an ewc_ref.MLP, got {type(model).__name__}")
        free = np.asarray(free_indices)
        if free.ndim != 1 or free.size == 0 or free.dtype.kind not in "iu":
            raise ValueError(f"free_indices: expected a non-empty 1-d list of integers, got {free_indices!r}")
        if free.min() < 0 or free.max() >= model.n_params or np.unique(free).size != free.size:
            raise ValueError(
                f"free_indices: expected distinct integers in 0..{model.n_params - 1} (the model has "
                f"P = {model.n_params} parameters), got {free.tolist()}"
            )
        self.model = model.with_theta(model.theta.astype(np.float64))
        self.free_indices = free.astype(np.intp)

    @property
    def d(self) -> int:
        return self.free_indices.size

    @property
    def base_theta(self) -> np.ndarray:
        return self.model.theta

    def z0(self) -> np.ndarray:
        """The current values of the free parameters, (d,)."""
        return self.model.theta[self.free_indices].copy()

    def full_theta(self, z) -> np.ndarray:
        """theta(z) : (..., P) for z : (..., d)."""
        z = as_points(z, self.d)
        theta = np.broadcast_to(self.model.theta, z.shape[:-1] + (self.model.n_params,)).copy()
        theta[..., self.free_indices] = z
        return theta

    def model_at(self, z) -> MLP:
        """The MLP with parameters theta(z) for one point z : (d,)."""
        return self.model.with_theta(self.full_theta(np.reshape(z, (self.d,))))

    @property
    def free_names(self) -> list[str]:
        """State-dict names of the free entries, e.g. ['0.weight[1, 2]', '0.bias[0]']."""
        model, names = self.model, []
        for i in self.free_indices:
            for name, s, shape in zip(model.param_names, model.param_slices, model.param_shapes, strict=True):
                if s.start <= i < s.stop:
                    index = ", ".join(str(int(k)) for k in np.unravel_index(i - s.start, shape))
                    names.append(f"{name}[{index}]")
        return names

    def __repr__(self) -> str:
        return f"Subspace({self.model!r}, free={self.free_names})"


def _forward_batch(model: MLP, thetas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f(x; theta_k) for K parameter vectors at once: thetas (K, P), x (N, in) -> (K, N, C).

    The same layers as MLP.forward, with a leading K axis on every weight:
    z_l[k] = a_{l-1}[k] W_l[k]^T + b_l[k].
    """
    k = thetas.shape[0]
    a = x  # (N, in) for the first layer, then (K, N, width): matmul broadcasts the K axis
    for l, ((out, inp), ws, bs) in enumerate(zip(model.shapes, model.weight_slices, model.bias_slices, strict=True)):
        weight = thetas[:, ws].reshape(k, out, inp)
        z = np.matmul(a, weight.transpose(0, 2, 1))
        if bs is not None:
            z = z + thetas[:, None, bs]
        a = model.activation.value(z) if l < model.n_layers - 1 else z
    return a


def _forward_batch_naive(model: MLP, thetas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Naive twin of _forward_batch: one MLP.forward per parameter vector."""
    return np.stack([model.with_theta(theta).forward(x)[0] for theta in thetas])


# ----------------------------------------------------------------------------- posterior
class LogPosterior:
    """Unnormalised log posterior over z, eq. (2) with (L1):

    log p(D | theta(z)) + log p(z) = -sum_n l_n(theta(z)) + log p(z)

    (the missing term is -log p(D), which grid.py computes by integration and laplace.py
    approximates).

    Parameters
    ----------
    subspace : Subspace (use `Subspace(model, range(model.n_params))` for all parameters)
    lik : Likelihood
    x : (N, in), y : labels of N examples (docs/file-format.md data.npz conventions)
    prior : GaussianPrior or PosteriorPrior over z, dimension d = subspace.d

    Calling the object on z : (d,) gives a float; on z : (K, d) a (K,) array (streamed in
    chunks, one batched forward pass per chunk).
    """

    def __init__(self, subspace: Subspace, lik: Likelihood, x, y, prior):
        if not isinstance(subspace, Subspace):
            raise TypeError(f"subspace: expected an ewc_ref.Subspace, got {type(subspace).__name__}")
        x, y = check_model_data(subspace.model, lik, x, y)
        if not isinstance(prior, GaussianPrior | PosteriorPrior):
            raise TypeError(f"prior: expected a GaussianPrior or PosteriorPrior, got {type(prior).__name__}")
        if prior.d != subspace.d:
            raise ValueError(
                f"prior: has dimension {prior.d} but the subspace has d = {subspace.d} free parameters"
            )
        self.subspace, self.lik, self.prior = subspace, lik, prior
        self.x, self.y = np.asarray(x, np.float64), y

    @property
    def d(self) -> int:
        return self.subspace.d

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def log_likelihood(self, z) -> np.ndarray:
        """log p(D | theta(z)) = -sum_n l_n, for z : (d,) or (K, d)."""
        z = as_points(z, self.d)
        flat = z.reshape(-1, self.d)
        model = self.subspace.model
        width = max(model.layer_sizes)
        chunk = max(1, _BATCH_FLOATS // (self.n * width))
        out = np.empty(flat.shape[0])
        for start in range(0, flat.shape[0], chunk):
            thetas = self.subspace.full_theta(flat[start:start + chunk])
            f = _forward_batch(model, thetas, self.x)
            out[start:start + chunk] = -np.sum(self.lik.nll(f, self.y[None]), axis=-1)
        return out.reshape(z.shape[:-1]) if z.ndim > 1 else float(out[0])

    def log_likelihood_grad(self, z) -> np.ndarray:
        """d log p(D | theta(z)) / d z : (d,) = -[sum_n J_n^T d l_n / d f]_free, one backward pass."""
        model = self.subspace.model_at(as_points(z, self.d))
        f, cache = model.forward(self.x)
        return -model.backward(cache, self.lik.grad(f, self.y))[self.subspace.free_indices]

    def __call__(self, z):
        """log p(D | theta(z)) + log p(z) for z : (d,) (float) or (K, d) ((K,) array)."""
        z = as_points(z, self.d)
        return self.log_likelihood(z) + self.prior.logpdf(z)

    def grad(self, z) -> np.ndarray:
        """d/dz [log p(D | theta(z)) + log p(z)] : (d,)."""
        z = as_points(z, self.d)
        if z.ndim != 1:
            raise ValueError(f"z: expected one point of shape ({self.d},), got shape {z.shape}")
        return self.log_likelihood_grad(z) + self.prior.grad(z)

    def __repr__(self) -> str:
        return f"LogPosterior(d={self.d}, N={self.n}, lik={self.lik!r}, prior={self.prior!r})"


def sequential_log_posterior(log_posterior_a: LogPosterior, log_evidence_a: float, x_b, y_b) -> LogPosterior:
    """Task B's log posterior with task A's exact posterior as prior, eq (4):

    log p(theta | A, B) + log p(B | A) = log p(B | theta) + log p(theta | A)

    Normalising the result (grid.py) gives p(theta | A, B) and log p(B | A).
    """
    if not isinstance(log_posterior_a, LogPosterior):
        raise TypeError(f"log_posterior_a: expected an ewc_ref.LogPosterior, got {type(log_posterior_a).__name__}")
    prior = PosteriorPrior(log_posterior_a, log_evidence_a)
    return LogPosterior(log_posterior_a.subspace, log_posterior_a.lik, x_b, y_b, prior)


def linear_gaussian_posterior(features, y, sigma: float, prior_mean, prior_cov):
    """Closed-form posterior and evidence of Bayesian linear regression.

    y_n = phi_n^T w + eps_n, eps_n ~ N(0, sigma^2), w ~ N(m_0, S_0):

        S_N^{-1} = S_0^{-1} + Phi^T Phi / sigma^2
        m_N = S_N (S_0^{-1} m_0 + Phi^T y / sigma^2)
        log p(y) = log N(y; Phi m_0, sigma^2 I + Phi S_0 Phi^T)

    Parameters
    ----------
    features : (N, d) Phi (append a column of ones for a bias; ewc_ref's flat order is
        weights then bias)
    y : (N,) targets
    sigma : noise standard deviation
    prior_mean : (d,), prior_cov : (d, d)

    Returns
    -------
    mean : (d,), cov : (d, d), log_evidence : float
    """
    phi = as_float_array(features, "features", ndim=2).astype(np.float64)
    n, d = phi.shape
    y = as_float_array(y, "y", ndim=1).astype(np.float64)
    if y.shape != (n,):
        raise ValueError(f"y: expected shape ({n},) to match features {phi.shape}, got {y.shape}")
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: expected a finite number > 0, got {sigma}")
    m0 = as_float_array(prior_mean, "prior_mean", ndim=1).astype(np.float64)
    s0 = as_float_array(prior_cov, "prior_cov", ndim=2).astype(np.float64)
    if m0.shape != (d,) or s0.shape != (d, d):
        raise ValueError(f"prior_mean, prior_cov: expected shapes ({d},) and ({d}, {d}), got {m0.shape} and {s0.shape}")
    prior_precision = np.linalg.inv(s0)
    precision = prior_precision + phi.T @ phi / sigma**2
    cov = np.linalg.inv(precision)
    mean = cov @ (prior_precision @ m0 + phi.T @ y / sigma**2)
    marginal_cov = sigma**2 * np.eye(n) + phi @ s0 @ phi.T
    chol = np.linalg.cholesky(marginal_cov)
    r = np.linalg.solve(chol, y - phi @ m0)
    log_evidence = -0.5 * r @ r - np.sum(np.log(np.diag(chol))) - 0.5 * n * LOG_2PI
    return mean, cov, float(log_evidence)
