"""ewc_ref.figures and `ewc-ref figures`: the numbers behind each figure, the files, the errors.

matplotlib is optional (the `plot` extra, not in `test`): every data path and error path is
tested without it; only the PNG test needs it and is skipped when it is absent.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref import figures
from ewc_ref.cli import main
from ewc_ref.io import read_npz


@pytest.fixture(scope="module")
def trajectories():
    return figures.trajectories_data()


def test_trajectories_start_at_task_a_optimum(trajectories):
    for method in figures.METHODS:
        assert np.array_equal(trajectories[f"path_{method}"][0], trajectories["theta_a_star"])
    # Task A's loss is sharply curved along theta_0 and flat along theta_1 (x_1 has std 0.05).
    F = trajectories["fisher_a"]
    assert F[0] > 100 * F[1] > 0


def test_ewc_stays_in_task_a_valley_and_learns_task_b(trajectories):
    """The picture of Fig. 4 as inequalities between the computed end points."""
    theta_a, F = trajectories["theta_a_star"], trajectories["fisher_a"]
    important = int(np.argmax(F))
    final = {m: trajectories[f"path_{m}"][-1] for m in figures.METHODS}
    # EWC is closer to theta*_A than SGD along the high-Fisher direction (measured 0.017 vs 1.97) ...
    assert abs(final["ewc"][important] - theta_a[important]) < 0.1 * abs(final["sgd"][important] - theta_a[important])
    loss_a, loss_b = dict(zip(figures.METHODS, trajectories["final_loss_a"], strict=True)), dict(
        zip(figures.METHODS, trajectories["final_loss_b"], strict=True))
    # ... so it keeps task A (SGD forgets it) ...
    assert loss_a["ewc"] < loss_a["sgd"] - 1.0
    # ... while learning task B far better than the isotropic L2 pull with the same lambda.
    assert loss_b["ewc"] < loss_b["l2"] - 0.5
    # And the EWC objective really decreased along its path (gradient descent, stable step).
    assert loss_b["ewc"] < er.mean_loss(
        er.MLP([theta_a[None, :]], [None], "identity"), er.Gaussian(), *_task_b(trajectories)) + 1e-12


def _task_b(trajectories):
    return trajectories["x_b"], trajectories["y_b"]


def test_contours_are_the_mean_losses(trajectories):
    """The batched loss surface equals er.mean_loss at a few grid points (round-off: 1e-12)."""
    x_b, y_b = _task_b(trajectories)
    for i, j in [(0, 0), (17, 93), (120, 60)]:
        theta = np.array([trajectories["theta0"][i], trajectories["theta1"][j]])
        expected = er.mean_loss(er.MLP([theta[None, :]], [None], "identity"), er.Gaussian(), x_b, y_b)
        assert np.isclose(trajectories["loss_b"][i, j], expected, rtol=1e-12, atol=0)


def test_estimators_data_is_consistent():
    """The figure's three diagonals equal independent computations on the same net, rebuilt as the
    docstring says (seeded MLP.random + train_task): the empirical diagonal from per-example
    gradients, the exact one from naive per-example J^T Lambda J, the Hessian's from the dense
    R-operator Hessian (not the backward recursion the figure uses); 1e-10 relative (float64
    identities summed in other orders). The reported errors are recomputed from those."""
    from ewc_ref.continual.datasets import load_digits
    from ewc_ref.continual.training import train_task
    from ewc_ref.curvature.naive import naive_fisher

    n, hidden, epochs, seed = 60, 6, 1, 0
    data = figures.estimators_data(n=n, hidden=hidden, epochs=epochs, seed=seed)
    x_train, y_train = load_digits()[:2]
    model = er.MLP.random([x_train.shape[1], hidden, 10], "tanh", rng=np.random.default_rng([seed, 0]))
    train_task(model, x_train, y_train, np.arange(10), epochs=epochs, rng=np.random.default_rng([seed, 1]))
    x, y, lik = x_train[:n], y_train[:n], er.get_likelihood("categorical")
    reference = {
        "empirical": (er.per_sample_gradients(model, lik, x, y) ** 2).mean(axis=0),
        "exact": np.diagonal(naive_fisher(model, lik, x, y, "exact")),
        "hessian": np.diagonal(er.hessian(model, lik, x, y)),
    }
    for kind, expected in reference.items():
        np.testing.assert_allclose(data[kind], expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    for kind in ("empirical", "hessian"):
        expected = np.linalg.norm(reference[kind] - reference["exact"]) / np.linalg.norm(reference["exact"])
        assert np.isclose(float(data[f"rel_error_{kind}"]), expected, rtol=1e-8)
        # The figure's point: these are different estimators (tanh: the Hessian residual is not zero).
        assert expected > 1e-3
    assert int(data["n_negative_hessian"]) == int(np.sum(reference["hessian"] < 0)) > 0


def test_accuracy_data_matches_the_metrics():
    from ewc_ref.continual.datasets import load_digits

    y_test = load_digits()[3]
    data = figures.accuracy_data(scenarios=("task",), epochs=1, hidden=8, config={"task": (2, None)})
    for method in figures.METHODS:
        R = data[f"R_task_{method}"]
        assert R.shape == (2, 2) and np.all((R >= 0) & (R <= 1))
        assert float(data[f"average_accuracy_task_{method}"]) == pytest.approx(R[-1].mean(), abs=1e-15)
        # R itself: each entry is (correct images) / (test images of task j), task j = classes
        # 5j..5j+4 (2 tasks); a wrong denominator or a metric computed on the wrong rows fails.
        for j in range(2):
            counts = R[:, j] * int(np.isin(y_test, range(5 * j, 5 * j + 5)).sum())
            assert np.allclose(counts, np.round(counts), atol=1e-9), (method, j, R[:, j])
    with pytest.raises(ValueError, match="scenarios"):
        figures.accuracy_data(scenarios=("nope",))


def test_laplace_data_from_the_example():
    data = figures.laplace_data(n_points=41)
    assert data["posterior"].shape == (41, 41)
    # Fig. 3's message: the diagonal-Fisher Gaussian is much further from the posterior.
    assert float(data["kl_diag_fisher"]) > 10 * float(data["kl_laplace"])


def test_make_figure_writes_the_npz_it_computed(tmp_path, monkeypatch):
    expected = {"a": np.arange(3.0), "b": np.array(2.5)}
    monkeypatch.setitem(figures.DATA, "trajectories", lambda: expected)
    written = figures.make_figure("trajectories", tmp_path, png=False)
    assert written == [tmp_path / "trajectories.npz"]
    stored = read_npz(written[0])
    assert set(stored) == {"a", "b"} and np.array_equal(stored["a"], expected["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectories.npz"]


def test_a_failing_png_leaves_no_partial_file(tmp_path):
    class BrokenFigure:
        def savefig(self, path, **kwargs):
            with open(path, "wb") as stream:
                stream.write(b"\x89PNG partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        figures._save_png(BrokenFigure(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_unknown_figure_name_is_refused():
    with pytest.raises(ValueError, match="figure name"):
        figures.make_figure("fig5", ".", png=False)


def test_cli_data_only_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    out = tmp_path / "new" / "folder"
    assert main(["figures", "--only", "trajectories", "--data-only", "--quiet", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["trajectories.npz"]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"trajectories  {out / 'trajectories.npz'} (")


def test_cli_json_lists_the_files_written_and_progress_is_one_reporter(tmp_path, capsys):
    argv = ["figures", "--only", "trajectories", "--only", "laplace", "--data-only", "--output", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["output"] == str(tmp_path) and list(report["figures"]) == ["trajectories", "laplace"]
    assert report["figures"]["laplace"]["files"] == [str(tmp_path / "laplace.npz")]
    assert all(entry["seconds"] >= 0 for entry in report["figures"].values())
    assert "figures: 2/2 (100%)" in captured.err


def test_cli_without_matplotlib_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = main(["figures", "--only", "trajectories", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "pip install 'ewc_ref[plot]'" in err and "--data-only" in err
    assert list(tmp_path.iterdir()) == []                       # failed before any work


@pytest.mark.parametrize("argv", [["--only", "fig5"], ["--only"]])
def test_cli_bad_options_exit_2(argv, capsys):
    assert main(["figures", *argv]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["figures", "--data-only", "--only", "trajectories", "-o", str(target)]) == 2
    assert capsys.readouterr().err == f"ewc-ref figures: error: -o {target}: exists and is not a folder\n"


def test_png_is_written_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["figures", "--only", "trajectories", "--quiet", "-o", str(tmp_path)]) == 0
    png = tmp_path / "trajectories.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectories.npz", "trajectories.png"]
