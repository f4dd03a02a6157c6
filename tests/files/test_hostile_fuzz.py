"""The fuzz suite of issue 25 (item 8): every fault class of the issue, crossed with every command.

Hypothesis draws a command, a file from one of the classes below in the command's input slot, an
-o spelling and --json, and runs the CLI in-process. The contract of every run, whatever was drawn:
- exit 0 (or 1 for compare's mismatch) with strictly valid JSON on stdout under --json, or exit 2
  with exactly ONE line on stderr -- never a traceback, never another status;
- no input file changed, no temporary file left, nothing written at -o unless the exit is 0/1.
Each class also has its own table test (the file named beside it); this suite checks that no
combination of them escapes the contract. Sizes are scaled down (the ratio floor of
ewc_ref.safe_zip is lowered), so every run takes milliseconds.

==================  ====================================================  ============================
class               what is drawn                                         table test
==================  ====================================================  ============================
bomb                a valid-layout member of zeros, deflate/bzip2/lzma     test_hostile_archives.py
byte order          the good file rewritten big-endian                     test_safe_files.py
extreme values      weights 1e200 / 1e308, x 1e300, +-1e308 curvatures     test_hostile_json.py,
                                                                           test_hostile_finite.py
damaged bytes       a truncation or a flipped byte                         test_hostile_files.py
-o spelling         the input itself, ./, a symbolic link, a folder        test_output_guard.py
==================  ====================================================  ============================
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.hostile import npy_bytes, npy_header, zip_bytes

import ewc_ref as er
from ewc_ref import safe_zip
from ewc_ref.cli import main

MODEL = er.MLP.random([3, 4, 2], "tanh", rng=0)
X = np.random.default_rng(0).uniform(-1, 1, (12, 3))
Y = np.random.default_rng(1).integers(0, 2, 12)
META = {"__activation__": np.array("tanh"), "__likelihood__": np.array("categorical")}


def _model_arrays(scale=1.0, order="<"):
    return {**{k: (v * scale).astype(f"{order}f8") for k, v in MODEL.state_dict().items()}, **META}


def _fisher_arrays(fill=None, order="<"):
    arrays = er.fisher(MODEL, er.Categorical(), X, Y, "exact").to_arrays()
    return {k: (np.full_like(v, fill) if fill is not None else v).astype(f"{order}f8") if not k.startswith("__") else v
            for k, v in arrays.items()}


def _bomb(slot: str, method: str) -> bytes:
    """The slot's file with its largest array replaced by a valid-layout member of zeros, 32x the ratio floor."""
    n = 4 * 1024**2  # 32 MiB of float64 zeros; the floor is lowered to 1 MiB below
    if slot == "model":
        head = npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': (4, {n // 4}), }}")
        members = [("0.weight.npy", head)]
        members += [(f"{k}.npy", npy_bytes(v)) for k, v in _model_arrays().items() if k != "0.weight"]
        members[0] = ("0.weight.npy", head + bytes(8 * n))
    elif slot == "data":
        head = npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n // 3}, 3), }}")
        members = [("x.npy", head + bytes(8 * (n // 3) * 3)), ("y.npy", npy_bytes(np.zeros(n // 3, np.int64)))]
    else:
        head = npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n},), }}")
        members = [("0.weight.npy", head + bytes(8 * n)), ("__structure__.npy", npy_bytes(np.array("diag")))]
    return zip_bytes(members, method)


def _npz(arrays: dict) -> bytes:
    return zip_bytes([(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()])


# class -> slot -> variant -> bytes of the file
def _file(kind: str, slot: str, variant: int) -> bytes:
    good = {"model": _model_arrays(), "data": {"x": X, "y": Y}, "theirs": _fisher_arrays()}[slot]
    if kind == "bomb":
        return _bomb(slot, ("deflated", "bzip2", "lzma")[variant % 3])
    if kind == "byte order":
        big = {k: v.astype(v.dtype.newbyteorder(">")) if v.dtype.kind in "fiu" else v for k, v in good.items()}
        return _npz(big)
    if kind == "extreme values":
        scale = (1e200, 1e308, 1e300)[variant % 3]
        if slot == "model":
            return _npz(_model_arrays(scale))
        if slot == "data":
            return _npz({"x": X * scale, "y": Y})
        return _npz(_fisher_arrays(fill=(1e308, -1e308, 1e300)[variant % 3]))
    raw = bytearray(_npz(good))  # damaged bytes
    if variant % 2:
        return bytes(raw[: len(raw) * (1 + variant % 7) // 9])
    raw[(variant * 7919) % len(raw)] ^= 0x20
    return bytes(raw)


COMMANDS = {
    "inspect": (["inspect", "MODEL", "DATA"], False),
    "fisher": (["fisher", "MODEL", "DATA", "--estimator", "exact"], True),
    "laplace": (["laplace", "MODEL", "DATA", "--prior-precision", "1"], False),
    "compare": (["compare", "THEIRS", "THEIRS2"], False),
    "diagnose": (["diagnose", "MODEL", "DATA", "THEIRS"], False),
}
KINDS = ["bomb", "byte order", "extreme values", "damaged bytes"]
SPELLINGS = ["new file", "the input", "./the input", "symbolic link to the input", "a folder"]


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def small_floor(monkeypatch):
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 1024**2)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(list(COMMANDS)), kind=st.sampled_from(KINDS), slot=st.sampled_from(["model", "data", "theirs"]),
       variant=st.integers(0, 20), spelling=st.sampled_from(SPELLINGS), as_json=st.booleans())
def test_no_hostile_combination_escapes_the_contract(tmp_path_factory, small_floor, capsys, command, kind, slot,
                                                    variant, spelling, as_json):
    folder = tmp_path_factory.mktemp("fuzz")
    files = {"MODEL": folder / "model.npz", "DATA": folder / "data.npz", "THEIRS": folder / "theirs.npz",
             "THEIRS2": folder / "theirs2.npz"}
    files["MODEL"].write_bytes(_npz(_model_arrays()))
    files["DATA"].write_bytes(_npz({"x": X, "y": Y}))
    files["THEIRS"].write_bytes(_npz(_fisher_arrays()))
    files["THEIRS2"].write_bytes(_npz(_fisher_arrays()))
    files[{"model": "MODEL", "data": "DATA", "theirs": "THEIRS"}[slot]].write_bytes(_file(kind, slot, variant))
    argv, needs_output = COMMANDS[command]
    argv = [str(files.get(word, word)) for word in argv]
    first_input = next(files[w] for w in COMMANDS[command][0] if w in files)
    (folder / "sub").mkdir()
    if spelling == "symbolic link to the input":
        (folder / "link.npz").symlink_to(first_input)
    output = {"new file": folder / "out.npz", "the input": first_input, "./the input": f"{folder}/./{first_input.name}",
              "symbolic link to the input": folder / "link.npz", "a folder": folder / "sub"}[spelling]
    if needs_output or spelling != "new file":
        argv += ["-o", str(output)]
    if as_json:
        argv.append("--json")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    capsys.readouterr()
    code = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    event(f"{kind}: exit {code}")
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code == 1:
        assert command == "compare"
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"ewc-ref {command}: error: "), err
        assert out == ""
    elif as_json and not (command != "fisher" and spelling == "new file" and "-o" in argv):
        _strict(out)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for name, content in before.items():
        assert after.get(name) == content, name  # no input (nor anything else) changed
    new = set(after) - set(before)
    assert new <= ({"out.npz"} if code in (0, 1) else set()), new
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert os.listdir(folder / "sub") == []
