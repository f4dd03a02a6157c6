"""`ewc-ref demo`: the JSON schema on a tiny configuration, the text report, and bad input (exit 2)."""

import json

import numpy as np
import pytest

from ewc_ref.cli import main
from ewc_ref.continual.datasets import MNIST_FILES, write_idx

TINY = ["--tasks", "2", "--epochs", "1", "--hidden", "8"]


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_schema_on_a_tiny_run(capsys):
    code, out, err = _run(["demo", *TINY, "--json", "--quiet"], capsys)
    assert code == 0 and err == ""
    result = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(result["seconds"], float) and result["seconds"] > 0
    assert set(result["scenarios"]) == {"task", "domain", "class"}
    for scenario in result["scenarios"].values():
        assert set(scenario["methods"]) == {"sgd", "l2", "ewc"}
        for entry in scenario["methods"].values():
            R = np.array(entry["accuracy_matrix"])
            assert R.shape == (2, 2) and np.all((R >= 0) & (R <= 1))
            assert isinstance(entry["average_accuracy"], float) and isinstance(entry["forgetting"], float)
            _assert_metrics_by_their_definitions(entry, R)
    # task identity: class-incremental cannot score on a task whose classes are not yet in the head
    assert result["scenarios"]["class"]["methods"]["sgd"]["accuracy_matrix"][0][1] == 0.0


def _assert_metrics_by_their_definitions(entry, R):
    """The reported metrics, recomputed from R by the definitions the demo prints (written out
    here, not ewc_ref.continual.metrics): avg acc = mean_j R[T-1, j]; forgetting = mean_{j<T-1}
    (max_{i<T-1} R[i, j] - R[T-1, j]); BWT = mean_{j<T-1} (R[T-1, j] - R[j, j]); plasticity = mean_j R[j, j]."""
    T = R.shape[0]
    last = T - 1
    assert entry["average_accuracy"] == pytest.approx(sum(R[last, j] for j in range(T)) / T, abs=1e-15)
    assert entry["forgetting"] == pytest.approx(
        sum(max(R[i, j] for i in range(last)) - R[last, j] for j in range(last)) / last, abs=1e-15)
    assert entry["backward_transfer"] == pytest.approx(sum(R[last, j] - R[j, j] for j in range(last)) / last, abs=1e-15)
    assert entry["plasticity"] == pytest.approx(sum(R[j, j] for j in range(T)) / T, abs=1e-15)


def test_accuracies_are_counts_over_each_tasks_test_images(capsys):
    """Every R[i, j] is (correct images) / (test images of task j): split digits into T = 2 tasks,
    task j = classes 5j..5j+4 of the 359 test images (np.array_split); permuted digits, all 359.
    A wrong denominator fails."""
    from ewc_ref.continual.datasets import load_digits

    y_test = load_digits()[3]
    code, out, _ = _run(["demo", *TINY, "--json", "--quiet"], capsys)
    assert code == 0
    for name, scenario in json.loads(out)["scenarios"].items():
        for entry in scenario["methods"].values():
            R = np.array(entry["accuracy_matrix"])
            for j in range(R.shape[1]):
                n_j = len(y_test) if name == "domain" else int(np.isin(y_test, range(5 * j, 5 * j + 5)).sum())
                counts = R[:, j] * n_j
                assert np.allclose(counts, np.round(counts), atol=1e-9), (name, j, n_j, R[:, j])


def test_json_is_deterministic_apart_from_the_clock(capsys):
    outputs = []
    for _ in range(2):
        code, out, _ = _run(["demo", *TINY, "--scenario", "domain", "--json", "--quiet", "--seed", "3"], capsys)
        assert code == 0
        result = json.loads(out)
        result.pop("seconds")
        outputs.append(result)
    assert outputs[0] == outputs[1]


def test_text_report_and_progress(capsys):
    code, out, err = _run(["demo", *TINY, "--scenario", "class", "--estimator", "empirical"], capsys)
    assert code == 0
    assert "class-incremental" in out and "summary" in out and "avg acc" in out
    assert out.count("accuracy R[i, j]") == 3
    assert "class/ewc" in err  # progress goes to stderr, not stdout


def test_sweep_lambda(capsys):
    code, out, _ = _run(["demo", *TINY, "--scenario", "task", "--json", "--quiet", "--sweep-lambda", "0.5,1e6"], capsys)
    assert code == 0
    sweep = json.loads(out)["scenarios"]["task"]["sweep"]
    assert [row["lambda"] for row in sweep["ewc"]] == [0.5, 1e6]
    assert sweep["l2"][0]["diverged"] is False and isinstance(sweep["l2"][0]["average_accuracy"], float)
    # L2 with lambda 1e6: lr * lambda * 1 > 2, refused as unstable and reported, not crashed
    assert sweep["l2"][1]["diverged"] is True and sweep["l2"][1]["average_accuracy"] is None


def test_data_dir_with_small_mnist_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for key, stem in MNIST_FILES.items():
        n = 40 if key.startswith("train") else 20
        array = rng.integers(0, 256, size=(n, 3, 3)) if key.endswith("images") else np.arange(n) % 10
        write_idx(tmp_path / stem, array.astype(np.uint8))
    code, out, _ = _run(["demo", *TINY, "--data-dir", str(tmp_path), "--json", "--quiet"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["config"]["n_train"] == 40 and result["config"]["layers"][0] == 9


def _bad_mnist_dir(tmp_path):
    for stem in MNIST_FILES.values():
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    return tmp_path


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--lambda", "-1"], "--lambda"),
        (["--l2-lambda", "nan"], "--l2-lambda"),
        (["--ewc", "online", "--gamma", "0"], "--gamma: expected a number in (0, 1], got 0"),
        (["--ewc", "online", "--gamma", "1.5"], "--gamma: expected a number in (0, 1], got 1.5"),
        (["--gamma", "0.5"], "--gamma: only used by --ewc online, not by --ewc separate"),
        (["--ewc", "accumulated", "--gamma", "0.5"], "--gamma: only used by --ewc online, not by --ewc accumulated"),
        (["--tasks", "1"], "--tasks"),
        (["--tasks", "6"], "--tasks"),
        (["--scenario", "domain", "--tasks", "0"], "--tasks"),
        (["--epochs", "0"], "--epochs"),
        (["--estimator", "fisherish"], "--estimator"),
        (["--lr", "0"], "--lr"),
        (["--data-dir", "/nonexistent/mnist"], "not a directory"),
        (["--data-dir", "EMPTY"], "missing MNIST file"),
        (["--data-dir", "BAD"], "size mismatch"),
        (["--scenario", "domain", "--lambda", "1e9"], "lambda"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    argv = [str(tmp_path) if a == "EMPTY" else str(_bad_mnist_dir(tmp_path)) if a == "BAD" else a for a in argv]
    code, out, err = _run(["demo", *TINY, "--quiet", *argv], capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err


def test_output_file_receives_the_report_and_stdout_stays_empty(tmp_path, capsys):
    target = tmp_path / "demo.json"
    code, out, _ = _run(["demo", *TINY, "--scenario", "task", "--json", "--quiet", "-o", str(target)], capsys)
    assert code == 0 and out == ""
    assert set(json.loads(target.read_text())["scenarios"]) == {"task"}


def test_a_failed_run_writes_no_output_file(tmp_path, capsys):
    target = tmp_path / "demo.txt"
    code, out, err = _run(["demo", *TINY, "--scenario", "domain", "--quiet", "--lambda", "1e9", "-o", str(target)],
                          capsys)
    assert code == 2 and out == "" and "--lambda or --l2-lambda: gradient descent on the penalty is unstable" in err
    assert list(tmp_path.iterdir()) == []


def test_online_gamma_reaches_the_config(capsys):
    code, out, _ = _run(["demo", *TINY, "--scenario", "task", "--json", "--quiet", "--ewc", "online",
                         "--gamma", "0.5"], capsys)
    assert code == 0 and json.loads(out)["config"]["gamma"] == 0.5
    code, out, _ = _run(["demo", *TINY, "--scenario", "task", "--json", "--quiet"], capsys)
    assert json.loads(out)["config"]["gamma"] == 1.0
