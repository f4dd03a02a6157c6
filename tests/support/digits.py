"""The issue-28 user's network: a 64-32-10 ReLU net trained on the 1,797 shipped digits, and its
per-example gradients written by hand (independently of ewc_ref's backward pass)."""

import functools

import numpy as np

import ewc_ref as er


@functools.lru_cache(maxsize=1)
def digits_net():
    """(model, likelihood, x, y): 64-32-10 ReLU, 20 epochs of SGD on all 1,797 digits (96% training accuracy)."""
    from ewc_ref.continual.training import train_task

    data = np.load("ewc_ref/data/digits.npz")
    x, y = data["x"] / 16.0, data["y"].astype(np.int64)
    model = er.MLP.random([64, 32, 10], "relu", rng=np.random.default_rng(0))
    train_task(model, x, y, np.arange(10), epochs=20, batch_size=32, lr=0.1, rng=0)
    return model, er.get_likelihood("categorical"), x, y


def relu_net_per_example_gradients(model, x, y):
    """(N, P) gradients of -log softmax(f)_y for f = W2 relu(W1 x + b1) + b2, by hand (state_dict order)."""
    sd = model.state_dict()
    W1, b1, W2, b2 = (np.asarray(sd[k], np.float64) for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    z = x @ W1.T + b1
    h = np.maximum(z, 0.0)
    f = h @ W2.T + b2
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    df = p - np.eye(10)[y]
    dz = (df @ W2) * (z > 0)
    n = len(x)
    return np.concatenate([(dz[:, :, None] * x[:, None, :]).reshape(n, -1), dz,
                           (df[:, :, None] * h[:, None, :]).reshape(n, -1), df], axis=1)
