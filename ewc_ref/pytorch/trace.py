"""Read a torch module's forward as an ewc_ref MLP, by tracing it with torch.fx.

Accepted: Linear -> phi -> Linear ... -> Linear, where every Linear is an ``nn.Linear`` (with or
without bias) called once, phi is ONE kind of activation for every gap (nn.ReLU/Tanh/Sigmoid,
torch.relu/tanh/sigmoid, F.relu/tanh/sigmoid, x.relu()/.tanh()/.sigmoid()), nn.Identity and
eval-mode nn.Dropout are no-ops, and before the first Linear the input rows may be flattened
(x.view(x.size(0), -1), x.reshape, x.flatten(1), torch.flatten(x, 1), nn.Flatten). Everything else
is refused with a ValueError naming the module or operation and why; ``check_forward`` in the
bridge then compares the module's forward with the MLP on the data.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
_ACTIVATION_FUNCTIONS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                         torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_FLATTEN_METHODS = {"view", "reshape", "flatten", "contiguous"}
_WHY = {  # refused modules and functions: why ewc_ref's MLP cannot be them
    nn.Conv1d: "a convolution; ewc_ref's model is a chain of nn.Linear layers",
    nn.Conv2d: "a convolution; ewc_ref's model is a chain of nn.Linear layers",
    nn.modules.batchnorm._BatchNorm: "batch normalisation couples the examples of a batch and has running "
                                     "statistics; no per-example Fisher of ewc_ref's MLP equals it",
    nn.LayerNorm: "layer normalisation is not a Linear layer or one of the supported activations",
    nn.Softmax: "a softmax inside forward: ewc_ref's likelihoods take the logits; move it into the loss "
                "(nn.CrossEntropyLoss)",
    nn.LogSoftmax: "a log-softmax inside forward: ewc_ref's likelihoods take the logits; use nn.CrossEntropyLoss "
                   "on the logits",
    nn.Embedding: "an embedding lookup is not a Linear layer",
}
_ADDS = {operator.add, operator.iadd, torch.add}
_SOFTMAX = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax}


@dataclass
class TracedMLP:
    """What ``trace_mlp`` read: the Linear modules in forward order, the one hidden activation,
    whether forward flattens the input rows first."""

    linears: list  # [(qualified module name, nn.Linear)]
    activation: str
    flattens_input: bool


def _refuse(where: str, why: str):
    raise ValueError(f"module: {where} is not supported: {why}")


def trace_mlp(module) -> TracedMLP:
    """Trace `module`'s forward with torch.fx and read it as Linear -> phi -> Linear ... -> Linear.

    Raises
    ------
    TypeError when `module` is not an nn.Module; ValueError naming the module or operation that is
    not a Linear layer, a supported activation, an ignorable no-op or an input flatten, and why
    (also: forward not traceable, a branch such as a residual add, shared weights, parameters
    forward does not use, activations that differ between layers).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as error:  # data-dependent control flow, unsupported Python in forward
        raise ValueError(f"module: torch.fx cannot trace {type(module).__name__}.forward ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); ewc_ref reads chains of nn.Linear and "
                         "activations") from None
    current, steps, size_nodes, flattens, used = None, [], set(), False, set()
    prefix = set()  # the input and its flattened forms, before the first Linear: x.size(0) may read any of them
    for node in graph.nodes:
        where = _describe(node)
        inputs = set(node.all_input_nodes)
        if node.op == "placeholder":
            if current is not None:
                _refuse(f"forward argument {node.target!r}", "forward must take exactly one input tensor")
            current = node
            prefix.add(node)
            continue
        if node.op == "get_attr":
            _refuse(f"attribute {node.target!r} used in forward", "parameters and buffers must enter through "
                    "nn.Linear modules (a tensor used directly, e.g. x @ self.W or F.linear, is not read)")
        if node.op == "call_method" and node.target == "size" and not steps and inputs <= prefix:
            size_nodes.add(node)  # feeds x.view(x.size(0), -1): not a step of the chain
            continue
        if node.op == "output":
            if inputs != {current}:
                _refuse("the output of forward", "forward must return the last layer's output alone")
            break
        if current not in inputs or inputs - size_nodes - {current}:
            kind = "a residual add" if node.target in _ADDS or node.target in ("add", "add_") else "a branch"
            _refuse(where, f"{kind}: forward combines values other than the previous step's output; ewc_ref's "
                    "model is a single chain of layers")
        if node.op == "call_module":
            sub = module.get_submodule(node.target)
            if node.target in used and next(sub.parameters(), None) is not None:  # a reused ReLU() is fine
                _refuse(f"module {node.target!r} ({type(sub).__name__})",
                        "called twice in forward: shared weights are not an MLP's independent layers")
            used.add(node.target)
            step = _module_step(node.target, sub, flattens_allowed=not any(s[0] == "linear" for s in steps))
        elif node.op == "call_function":
            step = _function_step(where, node, first=not any(s[0] == "linear" for s in steps))
        else:  # call_method
            step = _method_step(where, node, first=not any(s[0] == "linear" for s in steps))
        if step is not None:
            flattens |= step[0] == "flatten"
            if step[0] != "flatten":
                steps.append(step)
            elif not steps:
                prefix.add(node)
        current = node
    return _chain(module, steps, flattens)


def _describe(node) -> str:
    """'call_function relu', 'call_method view': the operation as the user wrote it."""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return {"call_function": f"function {target}()", "call_method": f"method .{target}()"}.get(node.op, f"{node.op} {target}")


def _module_step(name: str, sub, flattens_allowed: bool):
    label = f"module {name!r} ({type(sub).__name__})"
    if type(sub) is nn.Linear:
        return ("linear", name, sub)
    if type(sub) in _ACTIVATION_MODULES:
        return ("activation", _ACTIVATION_MODULES[type(sub)], label)
    if isinstance(sub, nn.Identity):
        return None
    if isinstance(sub, nn.modules.dropout._DropoutNd):
        if sub.training and sub.p > 0:
            _refuse(label, "Dropout in train mode makes the network random; call module.eval() (the Fisher of "
                    "EWC is taken at the trained network, dropout off)")
        return None
    if isinstance(sub, nn.Flatten):
        if not flattens_allowed or sub.start_dim != 1 or sub.end_dim != -1:
            _refuse(label, "only a flatten of the input rows (start_dim=1) before the first Linear layer is read")
        return ("flatten",)
    for kind, why in _WHY.items():
        if isinstance(sub, kind):
            _refuse(label, why)
    if isinstance(sub, nn.Linear):
        _refuse(label, "a subclass of nn.Linear may compute something else; use nn.Linear")
    _refuse(label, "not nn.Linear, one of the activations ReLU/Tanh/Sigmoid, Identity or eval-mode Dropout")


def _function_step(where: str, node, first: bool):
    fn = node.target
    if fn in _ACTIVATION_FUNCTIONS:
        return ("activation", _ACTIVATION_FUNCTIONS[fn], where)
    if fn in (torch.flatten,) and first and node.args[1:2] == (1,) and node.args[2:] in ((), (-1,)):
        return ("flatten",)
    if fn in _SOFTMAX:
        _refuse(where, "a softmax inside forward: ewc_ref's likelihoods take the logits; move it into the loss "
                "(nn.CrossEntropyLoss)")
    if fn in (F.dropout, torch.dropout):
        _refuse(where, "functional dropout: use nn.Dropout and module.eval() (the Fisher is taken with dropout off)")
    _refuse(where, "not one of the activations relu/tanh/sigmoid (torch.* or F.*) or torch.flatten(x, 1)")


def _method_step(where: str, node, first: bool):
    name = node.target
    if name in _ACTIVATION_METHODS:
        return ("activation", _ACTIVATION_METHODS[name], where)
    if first and name in _FLATTEN_METHODS:
        return ("flatten",)  # the rows' flattening is checked on data by check_forward
    if name in ("softmax", "log_softmax"):
        _refuse(where, "a softmax inside forward: ewc_ref's likelihoods take the logits; move it into the loss")
    _refuse(where, "not an activation method (x.relu(), x.tanh(), x.sigmoid()) or a flatten of the input rows "
            "before the first Linear layer")


def _chain(module, steps: list, flattens: bool) -> TracedMLP:
    """Check steps = Linear (phi Linear)*, one phi for every gap, and that forward uses every parameter once."""
    linears = [(s[1], s[2]) for s in steps if s[0] == "linear"]
    if not linears:
        _refuse(type(module).__name__, "forward calls no nn.Linear")
    if steps[0][0] != "linear":
        _refuse(steps[0][2], "an activation before the first Linear layer; ewc_ref's MLP starts with a Linear layer")
    if steps[-1][0] != "linear":
        _refuse(steps[-1][2], "an activation after the last Linear layer; the output must be the logits or the mean "
                "(put a sigmoid into nn.BCEWithLogitsLoss, a softmax into nn.CrossEntropyLoss)")
    gaps, gap = [], []
    for step in steps[1:]:
        if step[0] == "linear":
            gaps.append(gap)
            gap = []
        else:
            gap.append(step)
    for g in gaps:
        if len(g) > 1:
            _refuse(" then ".join(s[2] for s in g), "two activations between Linear layers; ewc_ref's MLP has one")
    names = {g[0][1] if g else "identity" for g in gaps}
    if len(names) > 1:
        shown = ", ".join(f"{a} -> {b}: {g[0][1] if g else 'none'}" for (a, _), (b, _), g in zip(linears[:-1], linears[1:], gaps, strict=True))
        _refuse("mixed activations", f"ewc_ref's MLP has one hidden activation for every layer, this forward has {shown}")
    seen = {}
    for name, linear in linears:
        for kind, p in (("weight", linear.weight), ("bias", linear.bias)):
            if p is not None and id(p) in seen:
                _refuse(f"'{name}.{kind}'", f"shared weights: the same Parameter as '{seen[id(p)]}'")
            if p is not None:
                seen[id(p)] = f"{name}.{kind}"
    unused = [n for n, p in module.named_parameters() if id(p) not in seen]
    if unused:
        _refuse(f"parameters {unused}", "forward does not use them through its chain of nn.Linear layers; their "
                "Fisher would not be a Fisher of this network")
    return TracedMLP(linears, names.pop() if names else "identity", flattens)
