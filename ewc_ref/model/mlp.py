"""A hand-written multilayer perceptron with explicit forward and backward passes.

The network is f(x) = W_L phi(... phi(W_1 x + b_1) ...) + b_L: Linear layers with
one hidden activation phi between them and a linear output (logits or mean).
It mirrors a PyTorch ``nn.Sequential`` of ``nn.Linear`` layers and
parameter-free activations (docs/file-format.md), and keeps the module positions so
``state_dict()`` round-trips the user's names exactly.

All parameters live in one flat vector ``theta`` in
``torch.nn.utils.parameters_to_vector`` order (per layer: weight row-major,
then bias); ``weights[l]`` and ``biases[l]`` are views into it, so an optimiser
that updates ``theta`` in place updates the layers.

Shapes: N examples, C = n_outputs, P = n_params, layer l maps in_l -> out_l.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .._validate import as_float_array, as_generator
from .activations import get_activation
from .layers import (
    activation_backward,
    activation_forward,
    affine_backward,
    affine_backward_per_sample,
    affine_forward,
)

PARAM_KEY = re.compile(r"^(.+)\.(weight|bias)$")
"""A parameter name: '<module>.weight' or '<module>.bias', the module any non-empty name
('0', 'features.0', 'classifier', 'Dense_1'); group 1 is the module, group 2 the kind."""


def layer_order(modules: list[str]) -> list[str]:
    """The Linear layers' order from their module names as they appear in a state_dict: that
    order (the order the modules run), or numerical order when every name is an integer (an
    nn.Sequential; a file whose keys were reordered, '10' before '2', still reads)."""
    return sorted(modules, key=int) if all(m.isdigit() for m in modules) else list(modules)


def _rebuild_mlp(state: dict, activation: str) -> MLP:
    return MLP.from_state_dict(state, activation)


@dataclass
class ForwardCache:
    """Everything the backward pass needs, as plain arrays.

    Attributes
    ----------
    inputs : list of (N, in_l) arrays; inputs[0] is x and inputs[l] = a_{l-1} = phi(z_{l-1})
    pre_activations : list of (N, out_l) arrays z_l; the last one is the output f
    affine_caches, activation_caches : the per-layer caches of layers.py
    """

    inputs: list
    pre_activations: list
    affine_caches: list
    activation_caches: list

    @property
    def output(self) -> np.ndarray:
        return self.pre_activations[-1]


class MLP:
    """Multilayer perceptron with explicit backprop.

    Parameters
    ----------
    weights : list of (out_l, in_l) arrays, consecutive layers must chain
    biases : list of (out_l,) arrays or None (a layer without bias)
    activation : 'identity', 'relu', 'tanh' or 'sigmoid' (all hidden layers)
    module_indices : positions of the Linear modules in the PyTorch Sequential;
        default 0, 2, 4, ... (Linear, activation, Linear, ...)
    module_names : the Linear modules' names instead, any distinct non-empty strings
        (an Avalanche SimpleMLP: ['features.0', 'classifier']); parameters are then named
        '<module>.weight', '<module>.bias'. Give at most one of module_indices, module_names.
    """

    def __init__(self, weights, biases=None, activation: str = "relu", module_indices=None,
                 module_names=None):
        weights = list(weights)
        if not weights:
            raise ValueError("weights: expected at least one layer")
        if biases is None:
            biases = [None] * len(weights)
        if len(biases) != len(weights):
            raise ValueError(f"biases: expected {len(weights)} entries (one per layer), got {len(biases)}")
        # Errors name what the caller passed: state-dict keys ('2.weight') when the module
        # positions are given (from_state_dict), list positions (weights[1]) otherwise.
        if module_indices is not None and module_names is not None:
            raise ValueError("module_names: give module_indices or module_names, not both")
        if module_names is not None:
            module_names = [str(m) for m in module_names]
            if len(module_names) != len(weights) or len(set(module_names)) != len(module_names) or "" in module_names:
                raise ValueError(f"module_names: expected {len(weights)} distinct non-empty names, got {module_names}")
            w_name, b_name = (lambda i: f"'{module_names[i]}.weight'"), (lambda i: f"'{module_names[i]}.bias'")
        elif module_indices is None:
            module_names = [str(2 * i) for i in range(len(weights))]
            w_name, b_name = (lambda i: f"weights[{i}]"), (lambda i: f"biases[{i}]")
        else:
            module_indices = [int(m) for m in module_indices]
            if len(module_indices) != len(weights) or sorted(set(module_indices)) != module_indices:
                raise ValueError(f"module_indices: expected {len(weights)} strictly increasing integers, got {module_indices}")
            module_names = [str(m) for m in module_indices]
            w_name, b_name = (lambda i: f"'{module_names[i]}.weight'"), (lambda i: f"'{module_names[i]}.bias'")
        weights = [as_float_array(w, w_name(i), ndim=2) for i, w in enumerate(weights)]
        biases = [None if b is None else as_float_array(b, b_name(i), ndim=1) for i, b in enumerate(biases)]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if b is not None and b.shape != (w.shape[0],):
                raise ValueError(f"{b_name(i)}: expected shape ({w.shape[0]},) to match {w_name(i)} {w.shape}, got {b.shape}")
            if i > 0 and w.shape[1] != weights[i - 1].shape[0]:
                raise ValueError(
                    f"{w_name(i)}: shape {w.shape} does not chain with {w_name(i - 1)} {weights[i - 1].shape}: "
                    f"expected {weights[i - 1].shape[0]} input columns"
                )
        self.activation = get_activation(activation)
        self.module_names = module_names
        dtype = np.result_type(*weights, *[b for b in biases if b is not None])
        self.has_bias = [b is not None for b in biases]
        self.shapes = [w.shape for w in weights]
        # One allocation, filled layer by layer: a nested concatenate held 3x the parameters at its peak.
        sizes = [w.size + (0 if b is None else b.size) for w, b in zip(weights, biases, strict=True)]
        self.theta = np.empty(sum(sizes), dtype=dtype)
        offset = 0
        for w, b in zip(weights, biases, strict=True):
            self.theta[offset : offset + w.size] = w.ravel()
            offset += w.size
            if b is not None:
                self.theta[offset : offset + b.size] = b
                offset += b.size
        self._bind_views()

    @classmethod
    def _adopt(cls, theta: np.ndarray, shapes, has_bias, activation: str, module_names) -> MLP:
        """An MLP whose parameter vector IS `theta` (P,) (no copy), in flat order; for ``load_model``,
        which reads a file straight into it. The caller has checked that the shapes chain and the
        values are finite; __init__ would copy every parameter once more."""
        model = cls.__new__(cls)
        model.activation = get_activation(activation)
        model.module_names = [str(m) for m in module_names]
        model.has_bias, model.shapes = list(has_bias), [tuple(shape) for shape in shapes]
        model.theta = theta
        model._bind_views()
        return model

    # ----------------------------------------------------------------- parameters
    def _bind_views(self) -> None:
        self.weights, self.biases, self.weight_slices, self.bias_slices = [], [], [], []
        offset = 0
        for (out, inp), has_bias in zip(self.shapes, self.has_bias, strict=True):
            s = slice(offset, offset + out * inp)
            self.weight_slices.append(s)
            self.weights.append(self.theta[s].reshape(out, inp))
            offset = s.stop
            if has_bias:
                s = slice(offset, offset + out)
                self.bias_slices.append(s)
                self.biases.append(self.theta[s])
                offset = s.stop
            else:
                self.bias_slices.append(None)
                self.biases.append(None)

    @property
    def module_indices(self) -> list:
        """The module names as integers where they are ('0', '2' -> 0, 2), else the names."""
        return [int(m) if m.isdigit() else m for m in self.module_names]

    @classmethod
    def from_state_dict(cls, state: dict, activation: str) -> MLP:
        """Build from PyTorch-style keys '<module>.weight', '<module>.bias'.

        The Linear layers are taken in the order their modules first appear in `state` (a
        PyTorch state_dict lists them in forward order: 'features.0.weight', ...,
        'classifier.weight'); when every module name is an integer (an nn.Sequential: '0', '2',
        ...) they are sorted numerically instead, so a file whose keys were reordered ('10' before
        '2') still reads. Names are kept: ``param_names`` and every output use them.

        Raises ValueError naming the key when a key is unknown, a weight is missing
        for a bias, or layers do not chain.
        """
        layers: dict[str, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            match = PARAM_KEY.match(str(key))
            if match is None:
                raise ValueError(f"unknown key {key!r}: expected '<module>.weight' or '<module>.bias' "
                                 "(e.g. '0.weight', 'features.0.bias', 'classifier.weight')")
            layers.setdefault(match.group(1), {})[match.group(2)] = value
        if not layers:
            raise ValueError("state dict: no '<module>.weight' keys found")
        names = layer_order(list(layers))
        for name in names:
            if "weight" not in layers[name]:
                raise ValueError(f"key '{name}.bias' has no matching '{name}.weight'")
        weights = [layers[m]["weight"] for m in names]
        biases = [layers[m].get("bias") for m in names]
        return cls(weights, biases, activation, module_names=names)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters keyed like PyTorch's state_dict (copies, in flat order)."""
        return {name: value.copy() for name, value in self.unflatten(self.theta).items()}

    @property
    def param_names(self) -> list[str]:
        """State-dict names in flat order, e.g. ['0.weight', '0.bias', '2.weight', ...]."""
        names = []
        for module, has_bias in zip(self.module_names, self.has_bias, strict=True):
            names.append(f"{module}.weight")
            if has_bias:
                names.append(f"{module}.bias")
        return names

    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        shapes = []
        for (out, inp), has_bias in zip(self.shapes, self.has_bias, strict=True):
            shapes.append((out, inp))
            if has_bias:
                shapes.append((out,))
        return shapes

    @property
    def param_slices(self) -> list[slice]:
        """Slice of each named parameter in the flat vector, in param_names order."""
        return [s for pair in zip(self.weight_slices, self.bias_slices, strict=True) for s in pair if s is not None]

    @property
    def layer_slices(self) -> list[slice]:
        """Slice of each layer's (weight, bias) block in the flat vector."""
        return [slice(w.start, (b or w).stop) for w, b in zip(self.weight_slices, self.bias_slices, strict=True)]

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Views of a (..., P) vector as {name: (..., *shape)}."""
        lead = vector.shape[:-1]
        return {
            name: vector[..., s].reshape(*lead, *shape)
            for name, s, shape in zip(self.param_names, self.param_slices, self.param_shapes, strict=True)
        }

    def flatten(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Inverse of unflatten for arrays without leading axes."""
        return np.concatenate([np.asarray(arrays[name]).ravel() for name in self.param_names])

    @property
    def dtype(self) -> np.dtype:
        return self.theta.dtype

    @property
    def n_params(self) -> int:
        return self.theta.size

    @property
    def n_layers(self) -> int:
        return len(self.shapes)

    @property
    def n_inputs(self) -> int:
        return self.shapes[0][1]

    @property
    def n_outputs(self) -> int:
        return self.shapes[-1][0]

    @property
    def layer_sizes(self) -> list[int]:
        return [self.n_inputs] + [out for out, _ in self.shapes]

    def copy(self) -> MLP:
        return self.with_theta(self.theta.copy())

    def with_theta(self, theta: np.ndarray) -> MLP:
        """A model with the same architecture and parameters `theta` (P,), copied."""
        theta = as_float_array(theta, "theta", ndim=1)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta: expected shape ({self.n_params},), got {theta.shape}")
        new = object.__new__(MLP)
        new.activation, new.module_names = self.activation, list(self.module_names)
        new.has_bias, new.shapes = list(self.has_bias), list(self.shapes)
        new.theta = np.array(theta, copy=True)
        new._bind_views()
        return new

    @classmethod
    def random(cls, layer_sizes, activation: str = "relu", bias=True, rng=None, dtype=np.float64) -> MLP:
        """PyTorch's default nn.Linear initialisation, U(-1/sqrt(in), 1/sqrt(in)).

        `bias` is a bool for all layers or a list of bools, one per layer.
        """
        rng = as_generator(rng)
        n_layers = len(layer_sizes) - 1
        if n_layers < 1:
            raise ValueError(f"layer_sizes: expected at least two sizes, got {list(layer_sizes)}")
        bias = [bias] * n_layers if isinstance(bias, bool) else list(bias)
        weights, biases = [], []
        for l in range(n_layers):
            bound = 1.0 / np.sqrt(layer_sizes[l])
            weights.append(rng.uniform(-bound, bound, (layer_sizes[l + 1], layer_sizes[l])).astype(dtype))
            biases.append(rng.uniform(-bound, bound, layer_sizes[l + 1]).astype(dtype) if bias[l] else None)
        return cls(weights, biases, activation)

    def __reduce__(self):
        # The activation table holds lambdas, which do not pickle: rebuild from names and arrays
        # (so an MLP can travel to multiprocessing / Dask / Ray workers).
        return (_rebuild_mlp, (self.state_dict(), self.activation.name))

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.layer_sizes))
        return f"MLP({sizes}, activation={self.activation.name!r}, P={self.n_params}, dtype={self.dtype})"

    # ----------------------------------------------------------------- passes
    def check_input(self, x, name: str = "x") -> np.ndarray:
        x = as_float_array(x, name, ndim=2)
        if x.shape[1] != self.n_inputs:
            raise ValueError(f"{name}: expected {self.n_inputs} features per row to match the model, got shape {x.shape}")
        return x

    def forward(self, x: np.ndarray):
        """f(x) for a batch.

        Parameters
        ----------
        x : (N, in_0)

        Returns
        -------
        f : (N, C) outputs (logits or mean)
        cache : ForwardCache with every z_l and a_l
        """
        cache = ForwardCache([], [], [], [])
        a = x
        for l in range(self.n_layers):
            cache.inputs.append(a)
            z, affine_cache = affine_forward(a, self.weights[l], self.biases[l])
            cache.pre_activations.append(z)
            cache.affine_caches.append(affine_cache)
            if l < self.n_layers - 1:
                a, activation_cache = activation_forward(z, self.activation)
                cache.activation_caches.append(activation_cache)
        return z, cache

    def backward_deltas(self, cache: ForwardCache, df: np.ndarray) -> list[np.ndarray]:
        """Back-propagate d s / d f to every pre-activation.

        Parameters
        ----------
        cache : from forward
        df : (..., N, C) upstream gradient of a scalar s = sum_n s_n w.r.t. the outputs

        Returns
        -------
        deltas : list of (..., N, out_l) arrays, delta_l = d s / d z_l (the "backpropagated
            errors"); the parameter gradient of example n in layer l is
            delta_l[n] a_{l-1}[n]^T (weight) and delta_l[n] (bias).
        """
        deltas = [None] * self.n_layers
        delta = df
        for l in range(self.n_layers - 1, -1, -1):
            deltas[l] = delta
            if l > 0:
                da = delta @ self.weights[l]
                delta = activation_backward(da, cache.activation_caches[l - 1])
        return deltas

    def backward(self, cache: ForwardCache, df: np.ndarray) -> np.ndarray:
        """Gradient of s = sum_n s_n w.r.t. theta, summed over examples.

        Parameters
        ----------
        df : (..., N, C) d s / d f

        Returns
        -------
        grad : (..., P) in flat parameter order
        """
        deltas = self.backward_deltas(cache, df)
        grad = np.empty(df.shape[:-2] + (self.n_params,), dtype=np.result_type(df, self.theta))
        for l, delta in enumerate(deltas):
            _, dW, db = affine_backward(delta, cache.affine_caches[l], self.has_bias[l], input_grad=False)
            grad[..., self.weight_slices[l]] = dW.reshape(*dW.shape[:-2], -1)
            if db is not None:
                grad[..., self.bias_slices[l]] = db
        return grad

    def per_sample_grads(self, cache: ForwardCache, df: np.ndarray) -> np.ndarray:
        """Per-example gradients g_n = J_n^T df_n, no sum over n.

        Parameters
        ----------
        df : (..., N, C)

        Returns
        -------
        G : (..., N, P) with G[..., n, :] = d s_n / d theta. Memory N*P: stream chunks of N.
        """
        deltas = self.backward_deltas(cache, df)
        n = df.shape[-2]
        G = np.empty(df.shape[:-1] + (self.n_params,), dtype=np.result_type(df, self.theta))
        for l, delta in enumerate(deltas):
            dW, db = affine_backward_per_sample(delta, cache.affine_caches[l], self.has_bias[l])
            G[..., self.weight_slices[l]] = dW.reshape(*dW.shape[:-3], n, -1)
            if db is not None:
                G[..., self.bias_slices[l]] = db
        return G

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """J : (N, C, P), J[n, c] = d f_c(x_n) / d theta, by C backward passes of unit vectors.

        Reference path for small models: memory N*C*P.
        """
        x = self.check_input(x)
        f, cache = self.forward(x)
        n, c = f.shape
        unit = np.broadcast_to(np.eye(c, dtype=f.dtype)[:, None, :], (c, n, c))
        return np.moveaxis(self.per_sample_grads(cache, unit), 0, 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Network outputs f(x) : (N, C)."""
        return self.forward(self.check_input(x))[0]
