"""Shared problems for the diagnosis tests: small networks with data, and Fishers written independently.

Every Fisher here is written in plain NumPy from per-sample gradients (ewc_ref.per_sample_gradients),
the network Jacobian (model.jacobian) and the likelihood formulas, independently of ewc_ref.curvature
and ewc_ref.verify. The observed labels of ``make_problem`` are the network's most probable class, 30%
of them replaced at random: not samples from the model, so empirical, pred and mc differ in distribution.
"""

import numpy as np
from scipy.special import expit, softmax

import ewc_ref as er
from ewc_ref.curvature.result import Curvature, read_theirs
from ewc_ref.io import load_data, load_model

FIXTURES = "tests/fixtures/libraries/"

N = 480  # divisors include 8 and 32


def make_problem(likelihood="categorical", seed=0, n=N, sizes=(5, 10, 4), activation="tanh"):
    rng = np.random.default_rng(seed)
    model = er.MLP.random(list(sizes), activation, rng=rng)
    model = model.with_theta(model.theta * 2.0)
    lik = er.get_likelihood(likelihood)
    x = rng.standard_normal((n, sizes[0]))
    f = model.predict(x)
    flip = rng.random(n) < 0.3
    if likelihood == "categorical":
        y = np.where(flip, rng.integers(0, sizes[-1], n), f.argmax(1))
    elif likelihood == "bernoulli":
        y = np.where(flip[:, None], rng.integers(0, 2, f.shape), f > 0).astype(float)
    else:
        y = f + 0.3 * rng.standard_normal(f.shape)  # less noise than the model's sigma = 1
    return model, lik, x, y


# --------------------------------------------------------------------------- independent NumPy Fishers
def grads(model, lik, x, y):
    return er.per_sample_gradients(model, lik, x, y)  # (N, P)


def exact_diag(model, lik, x):
    J = model.jacobian(x)  # (N, C, P)
    f = model.predict(x)
    if lik.name == "categorical":
        p = softmax(f, axis=1)
        Lam = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None, :]
    elif lik.name == "bernoulli":
        s = expit(f)
        Lam = np.einsum("nc,cd->ncd", s * (1 - s), np.eye(s.shape[1]))
    else:
        Lam = np.broadcast_to(np.eye(f.shape[1]) / lik.sigma**2, (len(x),) + (f.shape[1],) * 2)
    return np.einsum("ncp,ncd,ndp->p", J, Lam, J) / len(x)


def sample_labels(model, lik, x, rng):
    """Labels from the model by inverse-CDF sampling (not likelihoods.sample)."""
    f = model.predict(x)
    if lik.name == "categorical":
        cdf = np.cumsum(softmax(f, axis=1), axis=1)
        return np.minimum((rng.random((len(x), 1)) > cdf).sum(axis=1), f.shape[1] - 1)
    if lik.name == "bernoulli":
        return (rng.random(f.shape) < expit(f)).astype(float)
    return f + lik.sigma * rng.standard_normal(f.shape)


def mc_diag(model, lik, x, samples, seed):
    rng = np.random.default_rng(seed)
    return np.mean([grads(model, lik, x, sample_labels(model, lik, x, rng)) ** 2 for _ in range(samples)], axis=0).mean(0)


def batched_diag(G, batch_size, reduce="mean"):
    rows = []
    for start in range(0, len(G), batch_size):
        block = G[start:start + batch_size]
        rows.append(block.mean(0) if reduce == "mean" else block.sum(0))
    return np.mean(np.square(rows), axis=0)


def pred_labels(model, lik, x):
    f = model.predict(x)
    if lik.name == "categorical":
        return f.argmax(1)
    if lik.name == "bernoulli":
        return (f >= 0).astype(float)
    return f


def wrong_loss_diag(model, x, y):
    """Squared gradient of 0.5 ||softmax(f) - onehot(y)||^2 (a Brier loss, not the NLL)."""
    f = model.predict(x)
    p = softmax(f, axis=1)
    d = p - np.eye(f.shape[1])[y]
    dl_df = p * (d - np.sum(d * p, axis=1, keepdims=True))  # softmax Jacobian applied to d
    J = model.jacobian(x)
    return (np.einsum("ncp,nc->np", J, dl_df) ** 2).mean(0)


def perturbed(model, size=3e-2, seed=99):
    return model.with_theta(model.theta + size * np.random.default_rng(seed).standard_normal(model.n_params))


# --------------------------------------------------------------------------- committed library fixtures
def as_dict(result):
    """The JSON object of a result: ``to_dict()`` where results have it (format 1.1), else ``to_json()``."""
    return result.to_dict() if hasattr(result, "to_dict") else result.to_json()

def fixture(name):
    net = name.split("__")[0]
    model, lik = load_model(FIXTURES + net + "_model.npz")
    x, y = load_data(FIXTURES + net.replace("_weak", "") + "_data.npz", model, lik)
    return model, lik, x, y, read_theirs(FIXTURES + name + ".npz", model)


# --------------------------------------------------------------------------- Kronecker-factored problems
def rescaled(curvature, scale, split, rng=None, noise=0.0):
    """THEIRS = scale x ours with A multiplied by split and G by scale/split (the products scale by
    `scale`), plus optional relative noise on every factor."""
    data = []
    for factors in curvature.data:
        A, G = factors[0] * split, factors[1] * (scale / split)
        if noise:
            A = A + noise * np.abs(A).max() * rng.standard_normal(A.shape)
            G = G + noise * np.abs(G).max() * rng.standard_normal(G.shape)
        data.append((A, G) if len(factors) == 2 else (A, G, None if factors[2] is None else factors[2] * scale))
    return Curvature("kfac", "theirs", curvature.param_names, curvature.param_shapes, data, curvature.layer_has_bias,
                     kfac_bias=curvature.kfac_bias)


def small_problem():
    model = er.MLP.random([5, 10, 4], "tanh", rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5))
    y = er.Categorical().sample(model.predict(x), rng)
    return model, er.Categorical(), x, y


# --------------------------------------------------------------------------- training-script loops
def loader_fisher(G, batch_size, order=None, drop_last=False, reduction="mean", aggregation="mean"):
    """for xb, yb in DataLoader(batch_size, drop_last): F += grad(loss(reduction))**2; F /= K (or not, or / N)."""
    n = len(G)
    order = np.arange(n) if order is None else order
    F, k, sizes = np.zeros(G.shape[1]), 0, []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if drop_last and len(rows) < batch_size:
            break
        g = G[rows].sum(axis=0)
        if reduction == "mean":
            g = g / len(rows)
        F += g * g
        k += 1
        sizes.append(len(rows))
    scale = {"mean": 1 / k, "sum": 1.0, "over N": 1 / n}[aggregation]
    return F * scale, np.array(sizes)
