"""The command line under hostile files and faults (issue 15): a fixed table, a fuzz, and signals.

The contract of every case: exit 2 with ONE line on stderr naming the file, key or flag and no
output file, or exit 0 with the right result. Most cases run ``ewc_ref.cli.main`` in-process
(milliseconds each); the signal cases need a real process (about a second each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.hostile import gzip_bytes, idx_bytes, npy_header, npz_bytes, zip_bytes

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.continual.datasets import MNIST_FILES


def _model(scale=1.0, activation="relu", lik=None):
    model = er.MLP.random([3, 4, 2], activation, rng=0)
    return model.with_theta(model.theta * scale), lik or er.Categorical()


def _data(n=20, scale=1.0):
    rng = np.random.default_rng(0)
    return np.clip(rng.standard_normal((n, 3)), -1, 1) * scale, rng.integers(0, 2, n)


@pytest.fixture
def files(tmp_path):
    """model.npz and data.npz that work, and the path every case may write to."""
    er.save_model(tmp_path / "model.npz", *_model())
    er.save_data(tmp_path / "data.npz", *_data())
    return tmp_path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write(path, payload):
    path.write_bytes(payload)
    return path


def _bad_model(kind):
    def build(folder):
        arrays = {**_model()[0].state_dict(), "__activation__": np.array("relu"), "__likelihood__": np.array("categorical")}
        raw = {
            "deflate": lambda: bytearray(npz_bytes(arrays, "deflated")),
            "raw member": lambda: zip_bytes([("0.weight.npy", b"raw bytes"), ("__activation__.npy", b"relu")]),
            "huge shape": lambda: zip_bytes([("0.weight.npy", npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({10**6}, {10**6}), }}"))]),
            "ambiguous": lambda: npz_bytes({**arrays, "00.weight": arrays["0.weight"]}),
            "pickle": lambda: npz_bytes({**arrays, "4.weight": np.array([None], dtype=object)}),
        }[kind]()
        if kind == "deflate":
            start = raw.find(b"0.weight.npy") + len("0.weight.npy")
            raw[start + 30 : start + 38] = b"\xff" * 8
        return _write(folder / "model.npz", bytes(raw))

    return build


def _overflowing(model_scale=1.0, data_scale=1.0, lik=None):
    def build(folder):
        er.save_model(folder / "model.npz", *_model(model_scale, lik=lik))
        x, y = _data(scale=data_scale)
        er.save_data(folder / "data.npz", x, np.random.default_rng(1).standard_normal((20, 2)) if lik else y)

    return build


def _bad_mnist(images):
    def build(folder):
        for key, stem in MNIST_FILES.items():
            array = images if key.endswith("images") else np.zeros(len(images), np.uint8)
            _write(folder / (stem + ".gz"), gzip_bytes(idx_bytes(array)))
        return folder

    return build


def _damaged_gzip(folder):
    _bad_mnist(np.zeros((5, 2, 2), np.uint8))(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[12:16] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))


def _theirs_times(scale):
    def build(folder):
        model, lik = _model()
        x, y = _data()
        arrays = er.fisher(model, lik, x, y, "exact", "diag").to_arrays()
        np.savez(folder / "theirs.npz", **{k: v * scale for k, v in arrays.items() if not k.startswith("__")})

    return build


def _theirs_with_n(n):
    def build(folder):
        model, lik = _model()
        arrays = er.fisher(model, lik, *_data(), "exact", "diag").to_arrays()
        np.savez(folder / "theirs.npz", **{**arrays, "__n__": np.array(n)})

    return build


def _empty_curvatures(folder):
    np.savez(folder / "a.npz")
    np.savez(folder / "b.npz")


def _hard_link(folder):
    os.link(folder / "data.npz", folder / "alias.npz")


FISHER = ["fisher", "MODEL", "DATA", "--estimator", "exact", "--quiet", "-o", "OUT"]
# name, prepare(folder), argv (MODEL, DATA, OUT, DIR, F are replaced by paths), fragments of the one line
CASES = [
    ("damaged deflate in the model", _bad_model("deflate"), FISHER, ["model.npz: key '0.weight': malformed .npy header"]),
    ("raw bytes as a member", _bad_model("raw member"), ["inspect", "MODEL"], ["model.npz: key '0.weight': not a .npy array"]),
    ("shape of 10**12 entries", _bad_model("huge shape"), ["inspect", "MODEL"], ["key '0.weight': shape (1000000, 1000000)", "7.3 TiB", "memory budget"]),
    ("ambiguous keys", _bad_model("ambiguous"), FISHER, ["keys '0.weight' and '00.weight' are ambiguous"]),
    ("pickled member", _bad_model("pickle"), ["inspect", "MODEL"], ["key '4.weight' holds Python objects"]),
    ("weights of 1e300", _overflowing(model_scale=1e300), FISHER, ["parameter '0.weight' is not finite", "overflow in the forward pass", "nothing was written"]),
    ("inputs of 1e300", _overflowing(data_scale=1e300), FISHER, ["is not finite", "overflow", "nothing was written"]),
    ("gaussian sigma 1e-200", _overflowing(lik=er.Gaussian(1e-200)), FISHER, ["is not finite", "likelihood's derivatives", "sigma=1e-200"]),
    ("N = 0", lambda f: np.savez(f / "data.npz", x=np.zeros((0, 3)), y=np.zeros(0, int)), ["inspect", "MODEL", "DATA"],
     ["data.npz: key 'x' has no rows"]),
    ("-o is the model", None, [*FISHER[:-1], "MODEL"], ["-o", "is the same file as the input MODEL"]),
    ("-o is a hard link to the data", _hard_link, [*FISHER[:-1], "DIR/alias.npz"], ["is the same file as the input DATA"]),
    ("inspect -o is the model", None, ["inspect", "MODEL", "-o", "MODEL"], ["-o", "is the same file as the input MODEL"]),
    ("compare -o is a symbolic link to B", lambda f: (f / "link.npz").symlink_to(f / "data.npz"),
     ["compare", "MODEL", "DATA", "-o", "DIR/link.npz"], ["is the same file as the input B"]),
    ("--samples 10**9", None, ["fisher", "MODEL", "DATA", "--estimator", "mc", "--samples", "1000000000", "-o", "OUT"],
     ["--samples: 1000000000 labels per example need", "GiB", "at most"]),
    ("negative --seed", None, ["fisher", "MODEL", "DATA", "--estimator", "mc", "--seed", "-1", "-o", "OUT"], ["--seed", "expected an integer >= 0, got -1"]),
    ("0 x 0 pixel IDX images", _bad_mnist(np.zeros((5, 0, 0), np.uint8)), ["demo", "--data-dir", "DIR", "--quiet"], ["a dimension of size 0"]),
    ("damaged gzip IDX", _damaged_gzip, ["demo", "--data-dir", "DIR", "--quiet"], ["train-images-idx3-ubyte.gz"]),
    ("two empty curvature files", _empty_curvatures, ["compare", "DIR/a.npz", "DIR/b.npz"], ["a.npz: holds no curvature arrays (no arrays at all)"]),
    ("non-integer __n__", _theirs_with_n("abc"), ["diagnose", "MODEL", "DATA", "DIR/theirs.npz", "--quiet"],
     ["theirs.npz: key '__n__' must be a 0-d non-negative integer array, got <U3 'abc'"]),
    ("missing model", None, ["inspect", "DIR/nope.npz"], ["nope.npz: model file not found"]),
]


@pytest.mark.parametrize(("prepare", "argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_case_is_one_line_exit_2_and_writes_nothing(files, capsys, prepare, argv, fragments):
    if prepare is not None:
        prepare(files)
    before = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    names = {"MODEL": files / "model.npz", "DATA": files / "data.npz", "OUT": files / "out.npz", "DIR": files}
    argv = [str(names.get(a, a)).replace("DIR/", f"{files}/") for a in argv]
    code, out, err = _run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    after = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    assert after == before  # no output, no temporary file, no input touched


def test_good_run_writes_the_library_result(files, capsys):
    code, out, err = _run(["fisher", files / "model.npz", files / "data.npz", "--estimator", "exact", "-o", files / "out.npz", "--json", "--quiet"], capsys)
    assert code == 0, err
    model, lik = _model()
    expected = er.fisher(model, lik, *_data(), "exact", "diag")
    written = er.Curvature.load(files / "out.npz", model)
    np.testing.assert_array_equal(written.flat, expected.flat)
    assert json.loads(out)["n_params"] == model.n_params


def _strict_json(text):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_diagnose_json_is_strict_when_their_scale_overflows(files, capsys):
    _theirs_times(1e300)(files)
    code, out, err = _run(["diagnose", files / "model.npz", files / "data.npz", files / "theirs.npz", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert "NaN" not in out and "Infinity" not in out
    _strict_json(out)


def test_full_disk_is_one_line_naming_the_output(files, capsys, monkeypatch):
    import errno

    def full(stream, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    code, out, err = _run(["fisher", files / "model.npz", files / "data.npz", "--estimator", "exact", "-o", files / "out.npz", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "out.npz: cannot write the output (No space left on device)" in err
    assert sorted(p.name for p in files.iterdir()) == ["data.npz", "model.npz"]


@pytest.mark.parametrize(("value", "traceback"), [("0", False), ("yes", False), ("", False), ("1", True)])
def test_debug_only_when_set_to_1(files, capsys, monkeypatch, value, traceback):
    monkeypatch.setenv("EWC_REF_DEBUG", value)
    argv = ["inspect", str(files / "nope.npz")]
    if traceback:
        with pytest.raises(ValueError, match="nope.npz: model file not found"):
            main(argv)
    else:
        code, out, err = _run(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- fuzz, in-process
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_inspect_fuzz(tmp_path, capsys, data):
    """Byte mutations of a model file through ``inspect --json``: exit 2 with one line naming the
    file, or exit 0 with the facts of the same model saved cleanly."""
    model, lik = _model()
    arrays = {**model.state_dict(), "__activation__": np.array("relu"), "__likelihood__": np.array("categorical")}
    raw = bytearray(npz_bytes(arrays, data.draw(st.sampled_from(["stored", "deflated"]))))
    kind = data.draw(st.sampled_from(["truncate", "flip"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    path = _write(tmp_path / "fuzz.npz", bytes(raw))
    code, out, err = _run(["inspect", path, "--json"], capsys)
    if code == 2:
        event("refused")
        assert out == "" and len(err.strip().splitlines()) == 1 and str(path) in err
        return
    event("accepted")
    assert code == 0, err
    clean = tmp_path / "clean.npz"
    er.save_model(clean, *er.load_model(path))
    _run(["inspect", clean, "--json"], capsys)
    facts = _strict_json(out)
    assert facts["n_params"] == model.n_params and facts["layers"] == model.layer_sizes


# ----------------------------------------------------------------------------- signals
def _cli(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ewc_ref.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("moment", ["start-up imports", "mid-run"])
def test_ctrl_c_exits_130_without_a_traceback(files, moment):
    if moment == "start-up imports":
        # The process reports 'started' once ewc_ref.cli runs; the heavy imports (numpy, scipy,
        # the command) follow inside main, and the SIGINT lands among them.
        code = ("import sys, ewc_ref.cli as c; sys.stderr.write('started\\n'); sys.stderr.flush(); "
                "sys.exit(c.main(sys.argv[1:]))")
        process = subprocess.Popen([sys.executable, "-c", code, "inspect", str(files / "model.npz")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr.readline() == "started\n"
        time.sleep(0.05)  # into main, which imports numpy, scipy and the command (~0.5 s)
    else:
        big = files / "big.npz"
        er.save_data(big, *_data(n=100_000))
        process = _cli("fisher", files / "model.npz", big, "--estimator", "mc", "--samples", "2000", "-o", files / "out.npz")
        seen = ""
        while "fisher mc" not in seen:  # the progress meter: the computation is running
            seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("interrupted")
    assert not (files / "out.npz").exists()
    assert not [p for p in files.iterdir() if p.name.endswith(".tmp")]


def test_import_ewc_ref_loads_no_numpy():
    # What makes Ctrl-C during start-up catchable: ewc_ref.cli runs before numpy is imported.
    code = "import sys, ewc_ref.cli; print(sorted(m for m in ('numpy', 'scipy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
