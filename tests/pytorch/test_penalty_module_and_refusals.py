"""ewc_ref.pytorch.diagnose_penalty leaves the module bit for bit as it was, and refuses bad penalties and arguments.

The penalties, the points and the tolerances: tests/support/torch_penalties.py.
"""

from __future__ import annotations

import pytest
import torch
from support.torch_penalties import (
    LAMBDA,
    assert_unchanged,
    custom_tasks,
    snapshot,
    with_grads,
)
from torch import nn

import ewc_ref.pytorch as ep


# ----------------------------------------------------------------------------- the module is restored
def test_the_module_the_penalty_writes_into_is_restored_bit_for_bit(catalogue):
    """fisher_at_theta copies the point into the script's net and runs backward on it (zero_grad, .grad):
    with that net as `model`, every value, .grad object and flag is put back."""
    states, tasks, penalty, _ = catalogue.inputs("fisher_at_theta")
    net = with_grads(catalogue.net)
    try:
        before = snapshot(net)
        result = ep.diagnose_penalty(states, tasks, penalty, model=net, likelihood="categorical",
                                     takes="named_parameters", lam=LAMBDA)
        assert result.fit.quadratic == "not quadratic" and result.curvature.row == "at theta"
        assert_unchanged(net, before)
    finally:  # the shared net back as the catalogue's penalties use it
        for p in net.parameters():
            p.requires_grad_(True)
            p.grad = None
        net.train()


class Fails:
    """A penalty that works at the first `after` points, then does `how` (raise, return non-finite ...)."""

    def __init__(self, after: int, how: str):
        self.calls, self.after, self.how = 0, after, how

    def __call__(self, module):
        self.calls += 1
        module.train()  # as a Fisher loop inside a penalty would: train mode, .grad cleared, a counter stepped
        module.zero_grad()
        module.calls += 1
        value = sum((p ** 2).sum() for p in module.parameters())
        if self.calls <= self.after:
            return value
        if self.how == "raise":
            raise RuntimeError("their code failed")
        make = {"nan": lambda: value * float("nan"), "inf": lambda: value / 0.0,
                "vector": lambda: torch.stack([value, value]), "detached": value.detach, "float": lambda: float(value.detach()), "half": value.half}
        return make[self.how]()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how, error, words", [
    ("raise", RuntimeError, "their code failed"),
    ("nan", ValueError, r"^penalty: non-finite value or gradient at point 2"),
    ("inf", ValueError, r"^penalty: non-finite value or gradient at point 2"),
    ("vector", ValueError, r"^penalty: expected a scalar tensor, got shape \(2,\) at point 2"),
    ("detached", ValueError, r"^penalty: returned a tensor not connected to the module's parameters at point 2 \(requires_grad is False\)"),
    ("half", ValueError, r"^penalty: expected a float32 or float64 tensor, got torch.float16 at point 2"),
    ("float", TypeError, r"^penalty: expected it to return a scalar torch tensor, got float at point 2"),
])
def test_a_failing_penalty_is_refused_naming_it_and_the_module_restored(how, error, words, dtype):
    past, data = custom_tasks(dtype)
    net = with_grads(custom_tasks(dtype, tasks=1)[0][0])
    before = snapshot(net)
    penalty = Fails(2, how)
    with pytest.raises(error, match=words):
        ep.diagnose_penalty(past, data, penalty, model=net, likelihood="categorical")
    assert penalty.calls == 3  # two points evaluated (the module then held them), failed at the third
    assert_unchanged(net, before)


def test_a_penalty_of_other_tensors_than_the_parameters_is_refused():
    past, data = custom_tasks()
    other = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^penalty: .* not connected .* \(its graph reaches none of them\)"):
        ep.diagnose_penalty(past, data, lambda module: (other ** 2).sum(), model=custom_tasks(tasks=1)[0][0],
                            likelihood="categorical")


@pytest.mark.parametrize("change, error, words", [
    (dict(penalty=3.0), TypeError, r"^penalty: expected a callable"),
    (dict(takes="weights"), ValueError, r"^takes: expected one of"),
    (dict(model="net"), TypeError, r"^model: expected the torch nn.Module"),
    (dict(likelihood=None), TypeError, r"^likelihood: required"),
    (dict(models=[{"fc1.weight": torch.zeros(5, 4)}]), ValueError, r"^models\[0\]: does not match model's parameters: missing"),
    (dict(models=[3]), TypeError, r"^models\[0\]: expected an nn.Module or a state_dict"),
    (dict(data=[(torch.zeros(20, 4), torch.zeros(20, dtype=torch.long))]), ValueError, r"^data: expected one .* per past task \(2\)"),
    (dict(directions=0), ValueError, r"^directions: expected an integer >= 1"),
    (dict(scale=-0.1), ValueError, r"^scale: expected a finite number > 0"),
    (dict(seed=0.5), TypeError, r"^seed: expected an integer"),
    (dict(models=[]), TypeError, r"^models: expected a list .*, got an empty list"),
    (dict(lam=-1.0), ValueError, r"^lam: expected a finite number > 0"),
])
def test_bad_arguments_are_refused_naming_them(change, error, words):
    past, data = custom_tasks()
    net = with_grads(custom_tasks(tasks=1)[0][0])
    before = snapshot(net)
    arguments = dict(models=past, data=data, penalty=lambda m: sum((p ** 2).sum() for p in m.parameters()),
                     model=net, likelihood="categorical") | change
    with pytest.raises(error, match=words):
        ep.diagnose_penalty(arguments.pop("models"), arguments.pop("data"), arguments.pop("penalty"), **arguments)
    assert_unchanged(net, before)


def test_a_plain_list_of_one_tasks_batches_is_refused_and_a_list_inside_the_list_is_that_task():
    """The rule for `data`: a list is one entry per past task. One task's four batches as a plain list
    are ambiguous (four tasks?) and refused naming data; [[batches]] is the task, the same verdict as (x, y)."""
    past, data = custom_tasks(tasks=1)
    x, y = data[0]
    batches = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5)]
    fisher = ep.fisher(past[0], (x, y), "exact", likelihood=nn.CrossEntropyLoss())
    anchor = {n: p.detach().clone() for n, p in past[0].named_parameters()}

    def penalty(model):
        return 0.3 * sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())

    net = custom_tasks(tasks=1)[0][0]
    with pytest.raises(ValueError, match=r"^data: expected one entry per past task \(1\), oldest first; got a plain "
                                         r"list of 4 \(x, y\) pairs, ambiguous .* \[\[\(x1, y1\), \(x2, y2\), ...\]\]"):
        ep.diagnose_penalty(past, batches, penalty, model=net, likelihood="categorical")
    results = [ep.diagnose_penalty(past, form, penalty, model=net, likelihood="categorical", lam=0.3).to_dict()
               for form in ([batches], (x, y))]
    assert results[0] == results[1] and (results[0]["combination"], results[0]["factor_expression"]) == ("single task", "2")
