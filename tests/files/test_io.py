"""model.npz / data.npz I/O: bit-exact round trips and one named error per bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from support.memory import traced_peak

import ewc_ref as er
from ewc_ref import atomic
from ewc_ref.strategies import models_and_data


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(models_and_data())
def test_round_trip_is_bit_exact(tmp_path, case):
    model, lik, x, y = case
    er.save_model(tmp_path / "m.npz", model, lik)
    er.save_data(tmp_path / "d.npz", x, y)
    model2, lik2 = er.load_model(tmp_path / "m.npz")
    x2, y2 = er.load_data(tmp_path / "d.npz", model2, lik2)
    assert model2.param_names == model.param_names
    assert model2.activation.name == model.activation.name
    assert lik2 == lik
    np.testing.assert_array_equal(model2.theta, model.theta)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_float32_model_is_preserved(tmp_path):
    model = er.MLP.random([3, 4, 2], "relu", rng=0, dtype=np.float32)
    er.save_model(tmp_path / "m.npz", model, er.Categorical())
    loaded, _ = er.load_model(tmp_path / "m.npz")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded.theta, model.theta)


def _good_model():
    rng = np.random.default_rng(0)
    return {
        "0.weight": rng.standard_normal((4, 3)), "0.bias": rng.standard_normal(4),
        "2.weight": rng.standard_normal((2, 4)), "2.bias": rng.standard_normal(2),
        "__activation__": np.array("relu"), "__likelihood__": np.array("categorical"),
    }


def _edit(**changes):
    arrays = _good_model()
    for key, value in changes.items():
        key = key.replace("_dot_", ".").replace("_dunder_", "__")
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


BAD_MODELS = [
    ("missing activation", _edit(_dunder_activation__=None), "missing key '__activation__'"),
    ("missing likelihood", _edit(_dunder_likelihood__=None), "missing key '__likelihood__'"),
    ("unknown key", {**_good_model(), "0.running_mean": np.ones(4)}, "unknown key '0.running_mean'"),
    ("unknown activation", _edit(_dunder_activation__=np.array("gelu")), "'__activation__' must be one of"),
    ("unknown likelihood", _edit(_dunder_likelihood__=np.array("poisson")), "'__likelihood__' must be one of"),
    ("activation not a string", _edit(_dunder_activation__=np.array(1.0)), "0-d unicode"),
    ("layers do not chain", _edit(**{"2_dot_weight": np.ones((2, 5))}), "'2.weight'.*does not chain"),
    ("bias shape", _edit(**{"0_dot_bias": np.ones(3)}), "'0.bias': expected shape \\(4,\\)"),
    ("bias without weight", {**_good_model(), "6.bias": np.ones(2)}, "'6.bias' has no matching '6.weight'"),
    ("non-finite weight", _edit(**{"0_dot_weight": np.full((4, 3), np.nan)}), "'0.weight'.*non-finite"),
    ("integer weight", _edit(**{"0_dot_weight": np.ones((4, 3), dtype=int)}), "'0.weight' must be a float array"),
    ("sigma for categorical", {**_good_model(), "__sigma__": np.array(1.0)}, "'__sigma__' is only allowed"),
    ("negative sigma", _edit(_dunder_likelihood__=np.array("gaussian"), _dunder_sigma__=np.array(-1.0)), "'__sigma__' must be finite and > 0"),
    ("no layers", {"__activation__": np.array("relu"), "__likelihood__": np.array("categorical")}, "no '<module>.weight'"),
]


@pytest.mark.parametrize(("arrays", "message"), [(a, m) for _, a, m in BAD_MODELS], ids=[n for n, _, _ in BAD_MODELS])
def test_bad_model_file_names_the_key(tmp_path, arrays, message):
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        er.load_model(path)
    assert str(path) in str(info.value)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, **_good_model(), **{"4.weight": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="'4.weight' holds Python objects"):
        er.load_model(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        er.load_model(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        er.load_data(tmp_path / "bad.npz")


BAD_DATA = [
    ("missing y", {"x": np.ones((3, 3))}, "missing key 'y'", None),
    ("unknown key", {"x": np.ones((3, 3)), "y": np.zeros(3, int), "w": np.ones(3)}, "unknown key", None),
    ("row mismatch", {"x": np.ones((3, 3)), "y": np.zeros(4, int)}, "'y' must have 3 rows", None),
    ("nan x", {"x": np.full((3, 3), np.nan), "y": np.zeros(3, int)}, "'x'.*non-finite", None),
    ("x not 2-d", {"x": np.ones(3), "y": np.zeros(3, int)}, "'x'.*2-d", None),
    ("no rows", {"x": np.ones((0, 3)), "y": np.zeros(0, int)}, "'x' has no rows \\(shape \\(0, 3\\)\\)", None),
    # Without a model (I1, I3): the shape and finiteness of y are checked at the file, not left to the likelihood.
    ("nan y", {"x": np.ones((3, 3)), "y": np.array([0.0, np.nan, 1.0])}, "'y' contains non-finite", None),
    ("inf 2-d y", {"x": np.ones((3, 3)), "y": np.full((3, 2), np.inf)}, "'y' contains non-finite", None),
    ("y 3-d", {"x": np.ones((3, 3)), "y": np.zeros((3, 1, 2))}, "'y'.*2-d targets\\), got shape \\(3, 1, 2\\)", None),
    ("y 0-d", {"x": np.ones((3, 3)), "y": np.array(1.0)}, "'y'.*got shape \\(\\)", None),
    ("y strings", {"x": np.ones((3, 3)), "y": np.array(["a", "b", "c"])}, "'y' must be integer or float", None),
    ("label out of range", {"x": np.ones((3, 3)), "y": np.array([0, 1, 2])}, "'y'.*0..1", "categorical"),
    ("float class labels", {"x": np.ones((3, 3)), "y": np.array([0.0, 1.0, 1.0])}, "'y'.*integer", "categorical"),
    ("bernoulli not binary", {"x": np.ones((3, 3)), "y": np.full((3, 2), 0.5)}, "'y'.*0 or 1", "bernoulli"),
    ("wrong feature count", {"x": np.ones((3, 5)), "y": np.zeros(3, int)}, "'x'.*expected 3 features", "categorical"),
]


@pytest.mark.parametrize(("arrays", "message", "likelihood"), [b[1:] for b in BAD_DATA], ids=[b[0] for b in BAD_DATA])
def test_bad_data_file_names_the_key(tmp_path, arrays, message, likelihood):
    """Contract (load_data docstring, docs/file-format.md): a bad data.npz is a ValueError naming the file
    and the key; without a model, y must be 1-d or 2-d with N rows and finite."""
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    model = er.MLP.random([3, 4, 2], "relu", rng=0)
    with pytest.raises(ValueError, match=message) as info:
        if likelihood is None:
            er.load_data(path)
        else:
            er.load_data(path, model, er.get_likelihood(likelihood))
    assert str(path) in str(info.value)


def test_pytorch_export_recipe_is_readable(tmp_path):
    # The export line of docs/file-format.md, reproduced without torch: a state_dict of float64 arrays
    # plus two 0-d unicode strings.
    state = _good_model()
    path = tmp_path / "exported.npz"
    np.savez(path, **state)
    model, lik = er.load_model(path)
    assert isinstance(lik, er.Categorical)
    assert model.layer_sizes == [3, 4, 2]


def test_atomic_write_has_the_usual_file_mode(tmp_path):
    import os

    er.save_data(tmp_path / "d.npz", np.ones((2, 2)), np.zeros(2, int))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "d.npz").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left behind


# ----------------------------------------------------------------------------- temporaries
_SLOW_WRITER = """
import sys, time
from ewc_ref.atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    with open(tmp, "wb") as handle:
        handle.write(b"partial" * 1000)
        handle.flush()
    print(tmp, flush=True)
    time.sleep(120)
"""
_WRITER = "import sys, numpy as np, ewc_ref as er; er.save_data(sys.argv[1], np.ones((2, 2)), np.zeros(2, int))"


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigkilled_writer_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    out = tmp_path / "d.npz"
    killed = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        killed_tmp, live_tmp = killed.stdout.readline().strip(), live.stdout.readline().strip()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert re.fullmatch(rf"\.d\.npz\.ewc-ref\.{killed.pid}\.[a-z0-9_]{{8}}\.tmp", os.path.basename(killed_tmp))
        assert _temporaries(tmp_path) == sorted([os.path.basename(killed_tmp), os.path.basename(live_tmp)])
        assert not out.exists()  # nothing half-written at the output path
        subprocess.run([sys.executable, "-c", _WRITER, str(out)], check=True)
        # the killed writer's temporary is gone; the live (concurrent) writer's is untouched
        assert _temporaries(tmp_path) == [os.path.basename(live_tmp)]
        x, y = er.load_data(out)
        np.testing.assert_array_equal(x, np.ones((2, 2)))
    finally:
        live.kill()
        live.wait()


def test_stale_temporary_needs_a_dead_pid_and_an_mtime_before_our_start(tmp_path):
    import os
    import subprocess
    import sys


    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    names = {
        "fresh": f".d.npz.ewc-ref.{dead_pid}.abcdefgh.tmp",  # dead, but modified since we started: kept
        "old": f".d.npz.ewc-ref.{dead_pid}.ijklmnop.tmp",  # dead and older than us: removed
        "alive": f".d.npz.ewc-ref.{os.getppid()}.qrstuvwx.tmp",  # a live process's: kept
        "other output": f".e.npz.ewc-ref.{dead_pid}.abcdefgh.tmp",  # another output in the folder: removed
        "staging folder": f".figs.ewc-ref.{dead_pid}.abcdefgh.tmp",  # a killed figures run's: removed
        "earlier naming": f".d.npz.{dead_pid}.abcdefgh.tmp",  # same output, earlier naming: removed
        "earlier naming, other output": f".e.npz.{dead_pid}.abcdefgh.tmp",  # not provably ours: kept
        "user file": f".notes.{dead_pid}.abcdefgh.txt",  # not our naming: kept
        "user tmp": "data.npz.tmp",  # not our naming: kept
    }
    paths = {key: tmp_path / name for key, name in names.items()}
    for key, p in paths.items():
        if key == "staging folder":
            p.mkdir()
            (p / "laplace.npz").write_bytes(b"partial")
        else:
            p.write_bytes(b"partial")
    before_start = atomic._PROCESS_START - 10
    for key, p in paths.items():
        if key != "fresh":
            os.utime(p, (before_start, before_start))
    er.save_data(tmp_path / "d.npz", np.ones((2, 2)), np.zeros(2, int))
    removed = {"old", "other output", "staging folder", "earlier naming"}
    assert {key for key, p in paths.items() if not p.exists()} == removed


_NAMED_WRITER = """
import sys, time
from ewc_ref.atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"partial")
    print(tmp, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_two_concurrent_writers_in_one_folder_keep_their_temporaries(tmp_path):
    """Writers of a.npz and b.npz at once in one folder: a write of c.npz while both live removes
    neither temporary; once a's writer is killed, the next write into the folder removes its file only."""
    import os
    import signal
    import subprocess
    import sys
    import time

    writers = {name: subprocess.Popen([sys.executable, "-c", _NAMED_WRITER, str(tmp_path / name), "120"],
                                      stdout=subprocess.PIPE, text=True) for name in ("a.npz", "b.npz")}
    try:
        temporaries = {name: os.path.basename(w.stdout.readline().strip()) for name, w in writers.items()}
        time.sleep(0.05)  # the temporaries are older than the cleaner below (mtime < its start)
        subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path / "c.npz")], check=True)
        assert _temporaries(tmp_path) == sorted(temporaries.values())  # both writers alive: both kept
        os.kill(writers["a.npz"].pid, signal.SIGKILL)
        writers["a.npz"].wait()
        subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path / "c.npz")], check=True)
        assert _temporaries(tmp_path) == [temporaries["b.npz"]]  # the dead writer's only
        assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()
    finally:
        for writer in writers.values():
            writer.kill()
            writer.wait()


def test_atomic_folder_moves_files_in_only_on_success_and_keeps_other_files(tmp_path):
    from ewc_ref.atomic import atomic_folder

    out = tmp_path / "figs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "a.npz").write_text("old a")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as staging:
            (staging / "a.npz").write_text("new a")
            raise RuntimeError("interrupted after one of two figures")
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "notes.txt"] and (out / "a.npz").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]  # the staging folder is gone
    with atomic_folder(out) as staging:
        (staging / "a.npz").write_text("new a")
        (staging / "b.npz").write_text("new b")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.npz": "new a", "b.npz": "new b", "notes.txt": "mine"}
    fresh = tmp_path / "new" / "figs"
    with atomic_folder(fresh) as staging:
        (staging / "a.npz").write_text("a")
    assert [p.name for p in fresh.iterdir()] == ["a.npz"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["figs"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="path: .*file exists and is not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass


def test_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def full(stream, **arrays):
        stream.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError, match="d.npz: cannot write the output \\(No space left on device\\); nothing was written"):
        er.save_data(tmp_path / "d.npz", np.ones((2, 2)), np.zeros(2, int))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: er.save_model(p, "notamodel", er.Categorical()), "model: expected an ewc_ref.MLP, got str"),
        (lambda p: er.save_model(p, er.MLP.random([2, 2], "relu", rng=0), "categorical"), "lik: expected an ewc_ref Likelihood, got str"),
        (lambda p: er.load_data(p, "notamodel"), "model: expected an ewc_ref.MLP, got str"),
        (lambda p: er.load_data(p, er.MLP.random([2, 2], "relu", rng=0), "categorical"), "lik: expected"),
        (lambda p: er.save_data(p, np.array([None, 1], dtype=object), np.zeros(2)), "x: expected a numeric or string array, got dtype object"),
    ],
)
def test_api_type_errors_name_the_argument(tmp_path, call, message):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.ones((2, 2)), y=np.zeros(2, int))
    before = path.read_bytes()
    with pytest.raises(TypeError, match=message):
        call(path)
    assert path.read_bytes() == before


def test_unwritable_folder_names_the_output(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".d.npz.ewc-ref.1.abcdefgh.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError, match=f"d.npz: cannot create the output in {tmp_path} \\(Permission denied\\)"):
        er.save_data(tmp_path / "d.npz", np.ones((2, 2)), np.zeros(2, int))


def _state(order="<", dtype="f8", bias=(True, False, True), names=("0", "2", "10")):
    rng = np.random.default_rng(5)
    sizes = [3, 5, 4, 2]
    state = {}
    for i, name in enumerate(names):
        state[f"{name}.weight"] = rng.standard_normal((sizes[i + 1], sizes[i])).astype(f"{order}{dtype}")
        if bias[i]:
            state[f"{name}.bias"] = rng.standard_normal(sizes[i + 1]).astype(f"{order}{dtype}")
    return state


@pytest.mark.parametrize(("case", "state"), [
    ("float64, keys reordered ('10' before '2')", dict(reversed(list(_state().items())))),
    ("float32", _state(dtype="f4")),
    ("big-endian", _state(order=">")),
    ("named modules, every bias", _state(bias=(True, True, True), names=("features.0", "features.2", "head"))),
    ("no biases", _state(bias=(False, False, False))),
    ("mixed dtypes (read one by one)", {**_state(), "0.weight": _state()["0.weight"].astype(np.float32)}),
    ("Fortran order (read one by one)", {**_state(), "2.weight": np.asfortranarray(_state()["2.weight"])}),
])
def test_load_model_reads_into_one_parameter_vector_like_from_state_dict(tmp_path, case, state):
    """The no-copy path of load_model (weights read straight into theta) gives the model
    MLP.from_state_dict builds from the same arrays: same theta, shapes, names, biases, outputs."""
    np.savez(tmp_path / "m.npz", **state, __activation__=np.array("tanh"), __likelihood__=np.array("categorical"))
    loaded, _ = er.load_model(tmp_path / "m.npz")
    native = {k: v.astype(v.dtype.newbyteorder("=")) for k, v in state.items()}
    expected = er.MLP.from_state_dict(native, "tanh")
    np.testing.assert_array_equal(loaded.theta, expected.theta)
    assert loaded.theta.dtype == expected.theta.dtype
    assert (loaded.shapes, loaded.has_bias, loaded.param_names) == (expected.shapes, expected.has_bias, expected.param_names)
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_array_equal(loaded.forward(x)[0], expected.forward(x)[0])
    for key, value in loaded.state_dict().items():  # the views are the parameter vector's
        np.testing.assert_array_equal(value, native[key])


def test_load_model_holds_one_copy_of_the_parameters(tmp_path):
    """tracemalloc peak of load_model on a 16 MiB weight: the parameter vector plus a chunk, not two copies."""
    weight = np.random.default_rng(0).standard_normal((2, 2**20))
    np.savez(tmp_path / "m.npz", **{"0.weight": weight, "0.bias": np.zeros(2)},
             __activation__=np.array("relu"), __likelihood__=np.array("categorical"))
    with traced_peak() as traced:
        model, _ = er.load_model(tmp_path / "m.npz")
    peak = traced.peak
    np.testing.assert_array_equal(model.weights[0], weight)
    assert peak < 1.3 * weight.nbytes, (peak, weight.nbytes)
