"""ewc_ref.recorder.Recorder without torch: any iterable of (x, y) NumPy batches (LOADER_CONTRACT)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.recorder import Recorder


def batches(sizes, seed=0, extra=False):
    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        xb, yb = rng.standard_normal((size, 2, 3)), rng.integers(0, 4, size)
        out.append((xb, yb, np.zeros(size)) if extra else (xb, yb))
    return out


def test_iteration_is_unchanged_and_rows_are_recorded_in_yielded_order(tmp_path):
    items = batches([3, 3, 2], extra=True)  # Avalanche yields (x, y, task label): the third item passes through
    recorder = Recorder(items)
    assert [b for b in recorder] == items  # the very same batch objects
    assert np.array_equal(recorder.x, np.concatenate([b[0] for b in items]))
    assert np.array_equal(recorder.y, np.concatenate([b[1] for b in items]))
    assert recorder.batches.tolist() == [3, 3, 2] and recorder.batches.dtype == np.int64 and recorder.complete
    recorder.save(tmp_path / "d.npz")  # x rows flattened to (M, 6), as data.npz holds them
    x, y = er.load_data(tmp_path / "d.npz")
    assert np.array_equal(x, recorder.x.reshape(8, 6)) and np.array_equal(y, recorder.y)
    assert er.load_loader(tmp_path / "d.npz").batches.tolist() == [3, 3, 2]


def test_a_new_pass_starts_a_new_record_and_copies_survive_buffer_reuse():
    buffer = np.zeros((2, 1))

    def reusing():  # a loader that refills one buffer
        for value in (1.0, 2.0):
            buffer[:] = value
            yield buffer, np.arange(2)

    recorder = Recorder(list(reusing()))  # the list holds the same buffer twice
    for _ in recorder:
        pass
    for _ in recorder:  # a second pass replaces the first
        pass
    assert recorder.batches.tolist() == [2, 2]
    generator_recorder = Recorder(reusing())
    for _ in generator_recorder:
        pass
    assert generator_recorder.x.ravel().tolist() == [1.0, 1.0, 2.0, 2.0]  # copied as they passed


@pytest.mark.parametrize("items, error, words", [
    ([{"x": np.zeros(2)}], TypeError, "batch 0: expected an \\(x, y\\) pair, got dict"),
    ([(np.zeros((2, 1)), np.zeros(3))], ValueError, "batch 0: x and y must have the same number of rows"),
    ([(np.zeros((2, 1)), np.zeros(2)), (np.zeros((2, 3)), np.zeros(2))], ValueError, "batch 1: row shapes"),
])
def test_bad_batches_are_refused_naming_the_batch(items, error, words):
    recorder = Recorder(items)
    with pytest.raises(error, match=words):
        list(recorder)


def test_nothing_recorded_and_non_iterables_are_refused():
    with pytest.raises(TypeError, match="iterable: expected an iterable"):
        Recorder(3)
    with pytest.raises(ValueError, match="nothing recorded yet"):
        _ = Recorder([]).x
    empty = Recorder([])
    list(empty)
    with pytest.raises(ValueError, match="yielded no batches"):
        _ = empty.batches


def test_the_recorder_and_testing_do_not_import_torch():
    code = "import sys, ewc_ref.recorder, ewc_ref.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_attributes_are_the_loaders():
    class Loader(list):
        dataset, batch_size = "the dataset", 3

    recorder = Recorder(Loader(batches([3, 1])))
    assert (recorder.dataset, recorder.batch_size, len(recorder)) == ("the dataset", 3, 2)
    with pytest.raises(AttributeError):
        _ = recorder.no_such_attribute
