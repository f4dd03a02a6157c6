"""FisherOptions: the options of one curvature computation, checked once at the public edge and passed down.

The count that matters is how often a rule runs on one call: the options' rules (estimator, structure,
samples, batch_size, kfac_bias) once on `er.fisher` and on `ewc-ref fisher`, where they ran two or three
times before (issue 27).
"""

import contextlib
import dataclasses
import sys

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.curvature import accumulator as accumulator_module
from ewc_ref.curvature.accumulator import FisherAccumulator, FisherOptions


def _problem():
    model = er.MLP.random([3, 4, 3], "tanh", rng=1)
    lik = er.get_likelihood("categorical")
    x = np.random.default_rng(2).standard_normal((8, 3))
    return model, lik, x, lik.random_labels(model.forward(x)[0], np.random.default_rng(3))


def test_checked_fills_the_defaults_and_freezes():
    assert FisherOptions.checked("mc") == FisherOptions("mc", "diag", 1, None, None)
    assert FisherOptions.checked("exact", "kfac") == FisherOptions("exact", "kfac", None, None, "joined")
    assert FisherOptions.checked("batched", batch_size=4) == FisherOptions("batched", "diag", None, 4, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FisherOptions.checked().estimator = "mc"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"estimator": "nope"}, "^estimator: "),
    ({"estimator": "hessian", "structure": "kfac"}, "^structure: 'kfac' is defined for per-example outer products"),
    ({"samples": 2}, "^samples: only used by estimator='mc'"),
    ({"estimator": "batched"}, "^batch_size: required for estimator='batched'"),
    ({"kfac_bias": "separate"}, "^kfac_bias: only used by structure='kfac'"),
])
def test_checked_refuses_what_the_tables_refuse(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FisherOptions.checked(**kwargs)


@contextlib.contextmanager
def _option_checks():
    """[one entry per run of the options' rules] inside the block, whoever calls them and however they were
    imported (a profiler sees the function's code, not the name it was called by)."""
    calls, code = [], accumulator_module.check_estimator_options.__code__

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is code:
            calls.append(frame.f_locals["estimator"])

    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(None)


@pytest.mark.parametrize(("estimator", "structure", "options"), [
    ("batched", "diag", {"batch_size": 3}), ("mc", "kfac", {"samples": 2, "kfac_bias": "separate"}),
    ("exact", "full", {}),
])
def test_fisher_checks_the_options_once(estimator, structure, options):
    model, lik, x, y = _problem()
    with _option_checks() as calls:
        curvature = er.fisher(model, lik, x, y, estimator, structure, **options)
    assert len(calls) == 1 and (curvature.estimator, curvature.structure) == (estimator, structure)
    assert curvature.kfac_bias == options.get("kfac_bias") and curvature.batch_size == options.get("batch_size")


def test_the_fisher_command_checks_the_options_once(tmp_path):
    model, lik, x, y = _problem()
    er.save_model(tmp_path / "m.npz", model, lik)
    er.save_data(tmp_path / "d.npz", x, y)
    argv = ["fisher", str(tmp_path / "m.npz"), str(tmp_path / "d.npz"), "--estimator", "exact", "--structure", "kfac",
            "--kfac-bias", "separate", "-o", str(tmp_path / "F.npz"), "--quiet"]
    with _option_checks() as calls:
        assert main(argv) == 0
    assert len(calls) == 1
    assert er.Curvature.load(tmp_path / "F.npz", model).kfac_bias == "separate"


def test_from_options_equals_the_checking_constructor():
    model, lik, x, y = _problem()
    options = FisherOptions.checked("mc", "diag", samples=2)
    a = FisherAccumulator.from_options(model, lik, options, rng=5).update(x, y).result()
    b = FisherAccumulator(model, lik, "mc", "diag", samples=2, rng=5).update(x, y).result()
    assert np.array_equal(a.data, b.data) and (a.samples, b.samples) == (2, 2)
    broken = model.with_theta(model.theta.copy())
    broken.theta[0] = np.nan  # after construction: MLP itself refuses NaN parameters
    with pytest.raises(ValueError, match="^model: parameters contain NaN or inf"):  # still checked on this path
        FisherAccumulator.from_options(broken, lik, options)
