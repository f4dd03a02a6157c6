"""ewc_ref.pytorch.diagnose_penalty names the catalogue's torch penalties as the command line names their files.

The penalties, the points and the tolerances: tests/support/torch_penalties.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.penalty_catalogue import CATALOGUE, HERE, verdict
from support.torch_penalties import (
    GAMMA,
    LAMBDA,
    assert_unchanged,
    net_of,
    snapshot,
    with_grads,
)
from torch import nn

import ewc_ref as er
import ewc_ref.pytorch as ep
from ewc_ref.cli import main
from ewc_ref.verify.penalty_fit import PENALTY_TOL, read_penalty_samples


# ----------------------------------------------------------------------------- the catalogue, named
@pytest.mark.parametrize("name", sorted(CATALOGUE["entries"]))
def test_catalogue_penalty_named_through_torch_as_the_cli_names_its_file(name, catalogue):
    states, tasks, penalty, module = catalogue.inputs(name)
    with_grads(module)
    before = snapshot(module)
    result = ep.diagnose_penalty(states, tasks, penalty, model=module, likelihood=nn.CrossEntropyLoss(),
                                 takes="named_parameters", lam=LAMBDA, gamma=GAMMA).to_dict()
    assert_unchanged(module, before)
    cli = verdict(name)
    meta = CATALOGUE["entries"][name]
    assert result["combination"] == cli["combination"] == meta["combination"], result["causes"]
    assert result["penalty_fit"]["quadratic"] == cli["penalty_fit"]["quadratic"]
    assert result["penalty_fit"]["precision"] == cli["penalty_fit"]["precision"]
    assert result["factor_expression"] == cli["factor_expression"]
    assert result["n_params"] == cli["n_params"] and result["penalty_fit"]["n_points"] == 2 * 3 - 1 + 2 * 3
    if cli["curvature"] is None:
        assert result["curvature"] is None and result["causes"]
        return
    tol = PENALTY_TOL[cli["penalty_fit"]["precision"]]
    ours, theirs = result["curvature"], cli["curvature"]
    for key in ("estimator", "batch_size", "row"):
        assert ours[key] == theirs[key], key
    assert ours["scale"] == pytest.approx(theirs["scale"], rel=tol)
    assert (result["gamma_fitted"] is None) == (cli["gamma_fitted"] is None)
    if cli["gamma_fitted"] is not None:
        assert result["gamma_fitted"] == pytest.approx(cli["gamma_fitted"], rel=tol)
    assert (result["anchor"] or {}).get("name") == (cli["anchor"] or {}).get("name")
    assert [(d["estimator"], d["batch_size"]) for d in result["per_task"]] == [
        (d["estimator"], d["batch_size"]) for d in cli["per_task"]]


@pytest.mark.parametrize("name", ["avalanche_separate", "schwarz_online", "wrong_anchor", "avalanche_separate_float32"])
def test_w_and_anchor_from_torch_equal_those_of_the_committed_file(name, catalogue):
    """The fit itself: W (P,) and the anchor (P,) read at our points equal those read from the file's 9 points,
    coordinate by coordinate (a column permuted or a gradient of the wrong point would differ by O(1))."""
    states, _, penalty, module = catalogue.inputs(name)
    theta, value, grad = ep.penalty_samples(states, penalty, model=module, takes="named_parameters")
    ours, theirs = er.fit_penalty(theta, value, grad), er.fit_penalty(*read_penalty_samples(HERE / f"{name}.npz"))
    assert ours.quadratic == theirs.quadratic == "diagonal quadratic"
    tol = PENALTY_TOL[theirs.precision]
    scale = np.max(np.abs(theirs.weights))
    np.testing.assert_allclose(ours.weights, theirs.weights, rtol=0, atol=tol * scale)
    penalised = np.abs(theirs.weights) > 1e-3 * scale  # the anchor of a tiny W_i is ill-conditioned
    np.testing.assert_allclose(ours.anchor[penalised], theirs.anchor[penalised], rtol=0, atol=10 * tol)


def test_the_points_are_the_optima_their_midpoints_and_lines_rounded_to_the_module_dtype(catalogue):
    theta32, _, _ = ep.penalty_samples(catalogue.states32, catalogue.entries["avalanche_separate_float32"],
                                       model=net_of(torch.float32), takes="named_parameters")
    theta, _, _ = ep.penalty_samples(catalogue.states, catalogue.entries["avalanche_separate"],
                                     model=net_of(torch.float64), takes="named_parameters")
    optima = [torch.nn.utils.parameters_to_vector(s.values()).numpy() for s in catalogue.states]
    np.testing.assert_array_equal(theta[:3], np.stack(optima))
    np.testing.assert_array_equal(theta[3:5], [0.5 * (optima[0] + optima[1]), 0.5 * (optima[1] + optima[2])])
    steps = theta[5:] - optima[2]
    np.testing.assert_allclose(steps[1::2], 2 * steps[0::2], rtol=1e-12, atol=1e-15)  # theta + d, theta + 2 d
    assert theta32.dtype == np.float64 and np.array_equal(theta32, theta32.astype(np.float32).astype(np.float64))
    assert not np.array_equal(theta, theta.astype(np.float32).astype(np.float64))


# ----------------------------------------------------------------------------- the file for the command line
def test_save_penalty_gives_the_command_line_the_verdict_of_the_torch_path(catalogue, tmp_path, capsys):
    states, tasks, penalty, module = catalogue.inputs("avalanche_online")
    result = ep.diagnose_penalty(states, tasks, penalty, model=module, likelihood="categorical",
                                 takes="named_parameters", lam=LAMBDA, gamma=GAMMA)
    paths = []
    for t, (state, task) in enumerate(zip(states, tasks, strict=True)):
        past = net_of(torch.float64)
        past.load_state_dict(state)
        ep.save(past, tmp_path / f"model_{t}.npz", likelihood="categorical")
        ep.save_data(tmp_path / f"data_{t}.npz", task)
        paths.append((str(tmp_path / f"model_{t}.npz"), str(tmp_path / f"data_{t}.npz")))
    assert ep.save_penalty(tmp_path / "theirs.npz", states, penalty, model=module,
                           takes="named_parameters") == PENALTY_TOL["float64"]
    with np.load(tmp_path / "theirs.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["grad", "theta", "value"] and f["theta"].shape == (11, 51)
    code = main(["diagnose-penalty", *(m for m, _ in paths), "--data", *(d for _, d in paths), str(tmp_path / "theirs.npz"),
                 "--lambda", str(LAMBDA), "--gamma", str(GAMMA), "--json", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == json.loads(result.to_json())
