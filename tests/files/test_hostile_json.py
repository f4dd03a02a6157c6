"""JSON is always JSON (issue 25, item 2): every command's --json over extreme inputs is strict RFC 8259.

Each row is a command run on files of extreme values (weights of 1e200-1e308, inputs of 1e300,
a prior precision of 1e308, curvatures of +-1e308, a THEIRS of 1e300 x a Fisher). The contract:
stdout parses with ``json.loads(..., parse_constant=raise)`` (no NaN, Infinity), every null that
stands for a non-finite number is named under "non_finite", and a quantity that is the command's
answer is refused instead (exit 2, one line naming it, nothing on stdout). The expected exit
status of each row is part of the table: no row accepts either of two outcomes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.cli import COMMANDS, main
from ewc_ref.commands._args import write_json
from ewc_ref.jsonio import strict_json


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _model(weight_scale=1.0, bias_shift=0.0):
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    state = {key: value * weight_scale if key.endswith("weight") else value + bias_shift
             for key, value in model.state_dict().items()}
    return er.MLP.from_state_dict(state, "tanh")


@pytest.fixture
def files(tmp_path):
    """Good files and extreme ones, built once per test in tmp_path."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (12, 3)), rng.integers(0, 2, 12)
    lik = er.Categorical()
    good = _model()
    er.save_model(tmp_path / "model.npz", good, lik)
    er.save_model(tmp_path / "bias1e308.npz", _model(bias_shift=1e308), lik)
    er.save_model(tmp_path / "weights1e200.npz", _model(weight_scale=1e200), lik)
    er.save_model(tmp_path / "weights10.npz", _model(weight_scale=10), lik)
    er.save_data(tmp_path / "data.npz", x, y)
    er.save_data(tmp_path / "x1e300.npz", x * 1e300, y)
    fisher = er.fisher(good, lik, x, y, estimator="exact", structure="diag")
    fisher.save(tmp_path / "theirs.npz")
    arrays = fisher.to_arrays()
    params = [key for key in arrays if not key.startswith("__")]
    for name, change in {"theirs1e300": lambda v: v * 1e300, "plus1e308": lambda v: np.full_like(v, 1e308),
                         "minus1e308": lambda v: np.full_like(v, -1e308)}.items():
        np.savez(tmp_path / f"{name}.npz", **{k: change(v) if k in params else v for k, v in arrays.items()})
    # THEIR penalty lam/2 sum F d^2 (docs/file-format.md section 11) at 3 points, and the same x 1e300
    points = good.theta + 0.1 * np.random.default_rng(2).standard_normal((3, good.n_params))
    weighted = fisher.flat * (points - good.theta)
    for name, scale in (("penalty", 1.0), ("penalty1e300", 1e300)):
        np.savez(tmp_path / f"{name}.npz", theta=points, value=scale * 0.5 * np.sum(weighted * (points - good.theta), axis=1),
                 grad=scale * weighted)
    return tmp_path


# (argv, expected exit status, fragment of the one stderr line when refused)
CASES = {
    "inspect bias 1e308": (["inspect", "bias1e308.npz", "data.npz"], 0, None),
    "inspect weights 1e200": (["inspect", "weights1e200.npz", "data.npz"], 0, None),
    "inspect x 1e300": (["inspect", "model.npz", "x1e300.npz"], 0, None),
    "fisher bias 1e308": (["fisher", "bias1e308.npz", "data.npz", "--estimator", "exact", "-o", "out.npz"], 0, None),
    "fisher x 1e300": (["fisher", "model.npz", "x1e300.npz", "--estimator", "empirical", "-o", "out.npz"], 2, "not finite"),
    "laplace prior 1e308": (["laplace", "model.npz", "data.npz", "--prior-precision", "1e308"], 0, None),
    "laplace prior 1e308, weights x 10": (["laplace", "weights10.npz", "data.npz", "--prior-precision", "1e308"], 2,
                                          "--prior-precision: the Laplace log_prior is -inf"),
    "laplace bias 1e308": (["laplace", "bias1e308.npz", "data.npz", "--prior-precision", "1"], 2, "log_prior"),
    "laplace weights 1e200": (["laplace", "weights1e200.npz", "data.npz", "--prior-precision", "1"], 2, "model: the Laplace"),
    "laplace x 1e300": (["laplace", "model.npz", "x1e300.npz", "--prior-precision", "1"], 2, "x: the exact curvature is not finite"),
    "compare +-1e308": (["compare", "plus1e308.npz", "minus1e308.npz"], 1, None),
    "compare 1e300 vs Fisher": (["compare", "theirs1e300.npz", "theirs.npz"], 1, None),
    "diagnose THEIRS 1e300 x F": (["diagnose", "model.npz", "data.npz", "theirs1e300.npz"], 0, None),
    "diagnose bias 1e308": (["diagnose", "bias1e308.npz", "data.npz", "theirs.npz"], 0, None),
    "figures": (["figures", "--data-only", "--only", "laplace", "-o", "figs"], 0, None),
    "demo": (["demo", "--epochs", "1", "--tasks", "2", "--scenario", "task", "--lambda", "1e300"], 2, "--lambda"),
}
if "diagnose-penalty" in COMMANDS:  # the command of issue 23 (merged separately)
    CASES.update({
        "diagnose-penalty": (["diagnose-penalty", "model.npz", "--data", "data.npz", "penalty.npz"], 0, None),
        "diagnose-penalty x 1e300": (["diagnose-penalty", "model.npz", "--data", "data.npz", "penalty1e300.npz"], 0, None),
        "diagnose-penalty bias 1e308": (["diagnose-penalty", "bias1e308.npz", "--data", "data.npz", "penalty.npz"], 0, None),
    })


def test_the_table_covers_every_command():
    assert {argv[0] for argv, _, _ in CASES.values()} == set(COMMANDS)


@pytest.mark.parametrize("name", list(CASES))
def test_json_output_is_strict_or_the_command_refuses(name, files, capsys, monkeypatch):
    argv, expected, fragment = CASES[name]
    monkeypatch.chdir(files)
    code = main([*argv, "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == expected, (code, err)
    if fragment is not None:
        assert out == ""
        assert err.count("\n") == 1 and fragment in err, err
        return
    assert out.count("\n") == 1
    report = _strict(out)
    assert isinstance(report, dict)
    for path, what in report.get("non_finite", {}).items():
        assert what in ("nan", "inf", "-inf")
        assert _at(report, path) is None, path


def _at(report, path: str):
    """The value at a path written by strict_json ('keys["0.weight"].max_abs_error', 'candidates[0].scale')."""
    value = report
    for name, index, quoted in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]', path):
        value = value[int(index)] if index else value[json.loads(quoted) if quoted else name]
    return value


def test_compare_names_the_overflowed_errors(files, capsys, monkeypatch):
    """+1e308 against -1e308: |a - b| overflows; each overflowed error is null and named as inf."""
    monkeypatch.chdir(files)
    code = main(["compare", "plus1e308.npz", "minus1e308.npz", "--json"])
    report = _strict(capsys.readouterr().out)
    assert code == 1
    key = next(iter(report["keys"]))
    assert report["keys"][key]["max_abs_error"] is None
    assert report["non_finite"][f'keys["{key}"].max_abs_error'] == "inf"


def test_write_json_nulls_and_names_every_non_finite_number(capsys):
    write_json({"a": 1.0, "b": [np.float32(2.5), float("nan")], "c": {"d": -np.inf, "e": np.int64(3)}, "f": None})
    report = _strict(capsys.readouterr().out)
    assert report == {"a": 1.0, "b": [2.5, None], "c": {"d": None, "e": 3}, "f": None,
                      "non_finite": {"b[1]": "nan", "c.d": "-inf"}}


def test_write_json_adds_nothing_to_a_finite_object(capsys):
    write_json({"a": [1, 2.0], "b": "x"})
    assert _strict(capsys.readouterr().out) == {"a": [1, 2.0], "b": "x"}


def test_write_json_refuses_anything_but_one_object():
    with pytest.raises(TypeError, match="value: expected a dict"):
        write_json([1.0])


def test_strict_json_leaves_finite_values_alone():
    value = {"x": [1, 2.5, "s", True, None]}
    assert strict_json(value) == value


def test_every_command_prints_json_only_through_write_json():
    """One writer: no command module calls json.dump(s) or prints JSON itself."""
    commands = Path(er.__file__).parent / "commands"
    for module in commands.glob("*.py"):
        if module.name == "_args.py":
            continue
        assert not re.search(r"\bjson\.dumps?\(|^import json", module.read_text(), re.M), module.name
