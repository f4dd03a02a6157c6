"""One error format for every failure (docs/file-format.md, section 8), argparse's own included.

Every bad invocation prints exactly one line ``ewc-ref COMMAND: error: WHAT: MESSAGE`` on stderr
(``ewc-ref: error: ...`` when no command was named), nothing on stdout, and exits 2. The table
holds one row per kind of usage error argparse can raise; a second test walks every command of
COMMANDS with its required arguments plus an unknown flag, so a new command is covered too.
"""

from __future__ import annotations

import argparse
import re

import pytest

from ewc_ref.cli import COMMANDS, build_parser, main, usage_message
from ewc_ref.curvature.estimators import ESTIMATORS

FORMAT = re.compile(r"^ewc-ref(?: (?P<command>[a-z]+))?: error: (?P<what>[^:]+): (?P<message>.+)$")

BAD_INVOCATIONS = [
    # (argv, the line on stderr)
    (["--frobnicate"], "ewc-ref: error: --frobnicate: unrecognized argument; a COMMAND comes first: "
     + ", ".join(COMMANDS)),
    (["frobnicate"], "ewc-ref: error: COMMAND: invalid choice: 'frobnicate' (choose from "
     + ", ".join(f"'{c}'" for c in COMMANDS) + ")"),
    (["--frobnicate", "inspect", "m.npz"],
     "ewc-ref inspect: error: --frobnicate: unrecognized argument; `ewc-ref inspect --help` lists the flags"),
    (["inspect", "m.npz", "--frobnicate"],
     "ewc-ref inspect: error: --frobnicate: unrecognized argument; `ewc-ref inspect --help` lists the flags"),
    (["inspect", "m.npz", "d.npz", "extra.npz", "more"],
     "ewc-ref inspect: error: extra.npz more: unrecognized arguments; `ewc-ref inspect --help` lists the flags"),
    (["inspect"], "ewc-ref inspect: error: MODEL: required, not given"),
    (["fisher", "m.npz"], "ewc-ref fisher: error: DATA, --estimator, -o/--output: required, not given"),
    (["fisher", "m.npz", "d.npz", "--estimator", "nope", "-o", "F.npz"],
     "ewc-ref fisher: error: --estimator: invalid choice: 'nope' (choose from "
     + ", ".join(repr(name) for name in ESTIMATORS) + ")"),  # the rows of ewc_ref/curvature/estimators.py
    (["inspect", "m.npz", "-o"], "ewc-ref inspect: error: -o/--output: expected one argument"),
    (["demo", "--e", "3"], "ewc-ref demo: error: --e: ambiguous, could be --epochs, --estimator, --ewc"),
    (["demo", "--epochs", "zero"], "ewc-ref demo: error: --epochs: expected an integer, got 'zero'"),
    (["laplace", "m.npz", "d.npz", "--prior-precision", "0"],
     "ewc-ref laplace: error: --prior-precision: expected a finite number > 0, got 0"),
    (["compare", "missing_a.npz", "missing_b.npz"], None),  # a file error: checked for the format only
]


@pytest.mark.parametrize(("argv", "line"), BAD_INVOCATIONS, ids=[" ".join(a) or "-" for a, _ in BAD_INVOCATIONS])
def test_every_bad_invocation_prints_one_line_in_the_one_format(argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the named files do not exist; nothing may be written
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    match = FORMAT.match(err.rstrip("\n"))
    assert match, err
    command = next((word for word in argv if word in COMMANDS), None)
    assert match["command"] == command
    if line is not None:
        assert err == line + "\n"
    assert list(tmp_path.iterdir()) == []


def _required_arguments(subparser: argparse.ArgumentParser) -> list[str]:
    """argv words that satisfy every required positional and option of `subparser` (values unchecked)."""
    words = []
    for action in subparser._actions:
        value = str(action.choices[0] if action.choices else "1") if action.choices is not None else "1"
        if not action.option_strings:
            words += [value] * (action.nargs if isinstance(action.nargs, int) else 1)
        elif action.required:
            words += [action.option_strings[0], value]
    return words


def _subparsers():
    parser = build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unknown_flag_inside_every_command_is_named_under_the_command(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [command, *_required_arguments(_subparsers()[command]), "--frobnicate"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"ewc-ref {command}: error: --frobnicate: unrecognized argument; "
                   f"`ewc-ref {command} --help` lists the flags\n")


@pytest.mark.parametrize(("message", "expected"), [
    ("argument --seed: expected an integer >= 0, got -1", "--seed: expected an integer >= 0, got -1"),
    ("the following arguments are required: MODEL, DATA", "MODEL, DATA: required, not given"),
    ("one of the arguments --a --b is required", "--a --b: one of them is required"),
    ("ambiguous option: --e could match --epochs, --ewc", "--e: ambiguous, could be --epochs, --ewc"),
    ("unrecognized arguments: --x", "--x: unrecognized argument"),
    ("argument -o: not allowed with argument --json", "-o: not allowed with argument --json"),
    ("something argparse says one day", "something argparse says one day"),
])
def test_usage_messages_name_what_first(message, expected):
    assert usage_message(message) == expected


def _refuse_constant(name):
    raise AssertionError(f"not strict JSON: {name}")


def test_result_objects_have_to_dict_and_to_json_text():
    """to_dict() is the JSON object; to_json() its strict text (NaN -> null), for every result type."""
    import json
    import math

    from ewc_ref.bayes.evidence import LaplaceEvidence
    from ewc_ref.verify.results import Candidate, Diagnosis, MCTest
    from ewc_ref.verify.shuffled import ShuffledTest

    candidate = Candidate("exact", 2.0, 1e-16, fits=True)
    results = [
        LaplaceEvidence(-1.5, math.nan, -0.5, 3.0, 1.0, "exact", "diag", None, 10, 4),
        candidate,
        MCTest(accepted=False, reason="r"),
        ShuffledTest(accepted=False, reason="r"),
        Diagnosis("exact", 2.0, 1e-16, None, None, [candidate], 10, 4, "diag", "float64", 1e-8, runner_up=candidate),
    ]
    for result in results:
        obj, text = result.to_dict(), result.to_json()
        assert isinstance(obj, dict) and isinstance(text, str)
        parsed = json.loads(text, parse_constant=_refuse_constant)
        non_finite = parsed.pop("non_finite", {})  # the reason for each null (file-format.md, section 9)
        assert parsed == json.loads(json.dumps(obj, allow_nan=True).replace("NaN", "null"))
        assert sorted(non_finite) == sorted(key for key, value in obj.items() if isinstance(value, float) and math.isnan(value))
    assert json.loads(results[0].to_json())["log_likelihood"] is None
    assert json.loads(results[-1].to_json())["candidates"][0] == candidate.to_dict()
