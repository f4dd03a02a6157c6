"""Hypothesis strategies for torch modules (ewc_ref.pytorch.strategies), and the strategies extra.

The property: every drawn module, in each style and dtype (parametrized explicitly: the two tracing
paths x float32/float64), converts to an MLP with the module's own names and forward, and the
bridge's exact Fisher equals er.fisher on the MLP the module was built from (float64 reference:
1e-12 relative; float32 weights are exact in float64, so the same bound holds).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.pytorch.strategies import STYLES, torch_models_and_data
from ewc_ref.verify.gradcheck import relative_error


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style", STYLES)
def test_drawn_modules_convert_with_their_names_forward_and_fisher(style, dtype):
    @settings(max_examples=15)  # x 4 parametrizations; the bridge's cost is torch.fx tracing
    @given(torch_models_and_data(styles=(style,), dtype=dtype, max_layers=3, max_width=6))
    def check(case):
        module, lik, x, y, source = case
        model, _, names = ep.to_model(module, lik)
        assert names == [n for n, _ in module.named_parameters()] == model.param_names
        assert model.dtype == dtype
        assert model.activation.name == (source.activation.name if source.n_layers > 1 else "identity")
        tolerance = 1e-12 if dtype == np.float64 else 1e-5  # float32 forward round-off
        assert relative_error(model.predict(x.numpy()), module(x).detach().numpy()) <= tolerance
        reference = source.with_theta(source.theta.astype(np.float64))
        y64 = y.numpy().astype(np.float64) if y.is_floating_point() else y.numpy()
        ours = er.fisher(reference, lik, x.numpy().astype(np.float64), y64, "exact")
        got = ep.fisher(module, (x, y), "exact", likelihood=lik)
        flat = np.concatenate([got[name].numpy().ravel() for name in model.param_names])  # source's order
        assert relative_error(flat, ours.diagonal) <= 1e-12

    check()


BLOCK_HYPOTHESIS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ModuleNotFoundError("No module named 'hypothesis'", name="hypothesis")
sys.meta_path.insert(0, Block())
try:
    import ewc_ref.strategies
except ImportError as error:
    print(error)
"""


def test_strategies_without_hypothesis_name_the_extra():
    out = subprocess.run([sys.executable, "-c", BLOCK_HYPOTHESIS], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("ewc_ref.strategies needs Hypothesis: pip install 'ewc_ref[strategies]' "
                                  "(the test extra includes it)")
