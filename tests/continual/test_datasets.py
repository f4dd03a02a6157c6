"""Shipped digits, the MNIST IDX reader (on small files written here, never downloaded), scenarios."""

import gzip

import numpy as np
import pytest

from ewc_ref.continual.datasets import (
    MNIST_FILES,
    check_n_tasks,
    head_labels,
    load_digits,
    load_mnist,
    make_scenario,
    read_idx,
    write_idx,
)


def test_digits_are_scaled_and_split_stratified_and_fixed():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape[1] == x_test.shape[1] == 64
    assert x_train.shape[0] + x_test.shape[0] == 1797
    assert x_train.dtype == np.float64 and 0.0 <= x_train.min() and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(np.unique(y_test)) == set(range(10))
    # stratified: every class contributes round(0.2 * n_class) test images
    counts = np.bincount(np.concatenate([y_train, y_test]))
    np.testing.assert_array_equal(np.bincount(y_test), np.round(0.2 * counts).astype(int))
    again = load_digits()
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) % 100).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_header_is_the_mnist_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x01" and raw[4:8] == (3).to_bytes(4, "big") and raw[8:] == bytes([3, 1, 4])


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "magic"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "size mismatch"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "size mismatch"),
    ],
)
def test_bad_idx_files_name_the_file(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_is_a_value_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(path)


def _write_mnist(directory, n_train=30, n_test=12, side=4, gz=False, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, side, side)).astype(np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, side, side)).astype(np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays.update(overrides)
    for key, stem in MNIST_FILES.items():
        if arrays[key] is not None:
            write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_small_idx_files(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)
    assert x_train.shape == (30, 16) and x_test.shape == (12, 16)
    np.testing.assert_array_equal(x_train * 255.0, arrays["train_images"].reshape(30, 16))
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.max() <= 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"test_labels": None}, "missing MNIST file t10k-labels-idx1-ubyte"),
        ({"train_labels": np.zeros(29, np.uint8)}, "29 labels for 30 images"),
        ({"train_labels": np.full(30, 10, np.uint8)}, "0..9"),
        ({"train_images": np.zeros((30, 16), np.uint8)}, "3-d unsigned-byte images"),
        ({"test_images": np.zeros((12, 4, 4), np.float32)}, "3-d unsigned-byte images"),
        ({"train_labels": np.zeros((30, 1), np.uint8)}, "1-d unsigned-byte labels"),
        ({"test_images": np.zeros((12, 5, 5), np.uint8)}, "image size"),
    ],
)
def test_load_mnist_rejects_mismatched_files(tmp_path, overrides, message):
    _write_mnist(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path)


def test_load_mnist_needs_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")


def test_load_mnist_reads_gzip_written_by_gzip_module(tmp_path):
    # A .gz produced independently of write_idx (as downloaded from the MNIST page).
    _write_mnist(tmp_path)
    for stem in MNIST_FILES.values():
        raw = (tmp_path / stem).read_bytes()
        (tmp_path / stem).unlink()
        with gzip.open(tmp_path / (stem + ".gz"), "wb") as handle:
            handle.write(raw)
    assert load_mnist(tmp_path)[0].shape == (30, 16)


# ----------------------------------------------------------------------------- scenarios
def test_permuted_scenario():
    data = load_digits()
    scenario = make_scenario("domain", data, 4, rng=np.random.default_rng(1))
    assert scenario.n_tasks == 4
    np.testing.assert_array_equal(scenario.tasks[0].x_train, data[0])
    for t in range(1, 4):
        p = scenario.permutations[t]
        assert sorted(p) == list(range(64)) and not np.array_equal(p, np.arange(64))
        np.testing.assert_array_equal(scenario.tasks[t].x_test, data[2][:, p])
        np.testing.assert_array_equal(scenario.tasks[t].y_train, data[1])
    np.testing.assert_array_equal(scenario.train_columns(2), np.arange(10))
    np.testing.assert_array_equal(scenario.test_columns(0, 3), np.arange(10))
    again = make_scenario("domain", data, 4, rng=np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(scenario.permutations, again.permutations, strict=True))


@pytest.mark.parametrize("name", ["task", "class"])
def test_split_scenarios(name):
    data = load_digits()
    scenario = make_scenario(name, data, 5)
    for t, task in enumerate(scenario.tasks):
        np.testing.assert_array_equal(task.classes, [2 * t, 2 * t + 1])
        assert set(np.unique(task.y_train)) == set(np.unique(task.y_test)) == {2 * t, 2 * t + 1}
    assert sum(task.x_train.shape[0] for task in scenario.tasks) == data[0].shape[0]
    if name == "task":
        np.testing.assert_array_equal(scenario.train_columns(3), [6, 7])
        np.testing.assert_array_equal(scenario.test_columns(4, 1), [2, 3])
    else:
        np.testing.assert_array_equal(scenario.train_columns(2), np.arange(6))
        np.testing.assert_array_equal(scenario.test_columns(3, 1), np.arange(8))
    assert [len(t.classes) for t in make_scenario(name, data, 3).tasks] == [4, 3, 3]


def test_head_labels():
    np.testing.assert_array_equal(head_labels(np.array([7, 6, 3]), np.array([6, 7])), [1, 0, -1])


@pytest.mark.parametrize(
    "scenario, tasks, error",
    [("task", 1, ValueError), ("domain", 1, ValueError), ("class", 6, ValueError), ("task", 6, ValueError),
     ("task", 2.0, TypeError), ("split", 2, ValueError)],
)
def test_bad_task_counts(scenario, tasks, error):
    with pytest.raises(error, match="tasks|scenario"):
        check_n_tasks(scenario, tasks)


def test_many_permuted_tasks_are_allowed():
    assert check_n_tasks("domain", 12) == 12


def test_load_mnist_refuses_zero_pixel_images(tmp_path):
    _write_mnist(tmp_path, train_images=np.zeros((30, 0, 0), np.uint8), test_images=np.zeros((12, 0, 0), np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: IDX header declares shape \\(30, 0, 0\\): a dimension of size 0"):
        load_mnist(tmp_path)


def test_load_mnist_checks_all_headers_before_reading_any_images(tmp_path, monkeypatch):
    # 4 MiB of zero images with 5 labels: refused from the headers, the images never read.
    import ewc_ref.safe_files as safe_files

    _write_mnist(tmp_path, gz=True, train_images=np.zeros((2**18, 4, 4), np.uint8), train_labels=np.zeros(5, np.uint8))
    monkeypatch.setattr(safe_files, "read_into", lambda *a: pytest.fail("data read before the header checks"))
    with pytest.raises(ValueError, match="5 labels for 262144 images"):
        load_mnist(tmp_path)


def test_load_mnist_refuses_images_whose_float64_copy_is_over_budget(tmp_path, monkeypatch):
    import ewc_ref.safe_files as safe_files

    _write_mnist(tmp_path)
    monkeypatch.setattr(safe_files, "MAX_FILE_BYTES", 8 * 42 * 16 - 1)
    with pytest.raises(ValueError, match="the MNIST images as float64 needs 5.2 KiB \\(5376 bytes\\), above the memory budget"):
        load_mnist(tmp_path)
