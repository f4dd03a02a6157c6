"""The report's figures, regenerated from computed numbers (``ewc-ref figures``).

Every figure is two steps: a ``*_data`` function that computes plain arrays (no matplotlib
needed, so tests can check the numbers), and a ``plot_*`` function that draws them. `make_figure`
writes both, each atomically: ``NAME.npz`` with the arrays and ``NAME.png`` with the picture.

=============  ====================================================================================
name           what it shows
=============  ====================================================================================
laplace        the report's Fig. 3: true posterior (grid), its Laplace Gaussian and EWC's
               diagonal-Fisher Gaussian for 2-weight logistic regression, 1-D marginal and 2-D
               contours, KL(posterior || Gaussian) in the legend (data:
               ``ewc_ref.bayes.examples.figure_data``); and a small-N, separable 1-D
               posterior whose skew the Laplace Gaussian misses (``skewed_figure_data``)
               (derivations/03).
trajectories   the report's Fig. 4, computed: a linear-Gaussian model with two weights, task A's
               loss flat along theta_1, task B's along theta_0. Gradient descent on task B from
               theta*_A without a penalty (SGD), with lambda/2 ||theta - theta*_A||^2 (L2) and
               with lambda/2 sum_i F_i (theta_i - theta*_A,i)^2 (EWC, exact diagonal Fisher of A),
               over the two tasks' loss contours (derivations/05).
accuracy       accuracy matrices R[i, j] of SGD, L2 and EWC in the three scenarios, as heatmaps
               (small configuration of ``ewc-ref demo``, derivations/06).
estimators     Fisher diagonals of a digits MLP: empirical vs exact, and Hessian diagonal vs exact
               (derivations/04), one point per parameter.
regions        the report's Figs. 1-2: solution regions of two tasks, their overlap D, the sign
               symmetry of f(x) = b tanh(a x) and one Laplace Gaussian at theta*_A against the
               two-mode posterior (ewc_ref.figures_regions, derivations/03).
ellipses       EWC penalty level sets at theta*_A for the exact and empirical Fisher, the diagonal
               and the Hessian, on Fig. 4's landscape and on the regions network; conditional vs
               marginal half-widths (ewc_ref.figures_regions, derivations/03).
=============  ====================================================================================

matplotlib is optional (the ``plot`` extra). `require_matplotlib` raises ImportError with the
install command when it is missing; the ``*_data`` functions never import it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figures_regions
from .atomic import atomic_output, atomic_savez
from .continual.experiments import METHODS, SCENARIOS
from .figures_regions import plot_ellipses, plot_regions, regions_data

FIGURES = ("laplace", "trajectories", "accuracy", "estimators", "regions", "ellipses")
#: (number of tasks, EWC lambda or None for the demo's tuned default) per scenario. Small enough
#: to run in seconds; class-incremental needs lambda <= ~40 at this size for stable SGD
#: (lr * lambda * max F < 2), see derivations/06.
ACCURACY_CONFIG = {"task": (5, None), "domain": (3, None), "class": (5, 40.0)}

# ----------------------------------------------------------------------------- matplotlib
def require_matplotlib():
    """matplotlib.pyplot with the non-interactive Agg backend, or ImportError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("matplotlib is not installed; install the plot extra: pip install 'ewc_ref[plot]'") from None
    return plt


def _save_png(fig, path: Path) -> None:
    """fig.savefig to a temporary file next to `path`, then rename it into place."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# ----------------------------------------------------------------------------- Fig. 3: laplace
def laplace_data(n_points: int = 121) -> dict[str, np.ndarray]:
    """Arrays of Fig. 3: ``ewc_ref.bayes.examples.figure_data`` (its docstring lists them) and,
    prefixed ``skewed_``, the small-N panel of ``ewc_ref.bayes.examples.skewed_figure_data``."""
    from .bayes.examples import figure_data, skewed_figure_data

    data = figure_data(n_points=n_points)
    data.update({f"skewed_{key}": value for key, value in skewed_figure_data().items()})
    return {key: np.asarray(value, dtype=np.float64) for key, value in data.items()}


def plot_laplace(data, plt):
    fig, (left, right, skewed) = plt.subplots(1, 3, figsize=(14, 4))
    left.plot(data["w0"], data["marginal_posterior"], "k", label="posterior (grid)")
    left.plot(data["w0"], data["marginal_laplace"], "C0--", label=f"Laplace (2-D KL {float(data['kl_laplace']):.3f})")
    left.plot(data["w0"], data["marginal_diag_fisher"], "C3:",
              label=f"diag Fisher, EWC (2-D KL {float(data['kl_diag_fisher']):.3f})")
    left.set_xlabel("$w_0$")
    left.set_ylabel("marginal density of $w_0$")
    left.legend(fontsize=8)
    left.set_title("N = 30, inputs correlated 0.9: marginal of $w_0$\n(legend: KL(posterior || Gaussian) in 2-D)", fontsize=9)
    W0, W1 = np.meshgrid(data["w0"], data["w1"], indexing="ij")
    for key, color, style in (("posterior", "k", "solid"), ("laplace", "C0", "dashed"), ("diag_fisher", "C3", "dotted")):
        density = data[key]
        levels = density.max() * np.exp(-0.5 * np.array([9.0, 4.0, 1.0]))   # 3, 2, 1 "sigma" contours
        right.contour(W0, W1, density, levels=levels, colors=color, linestyles=style)
    right.plot(*data["map"], "k+")
    # Zoom to the region where the posterior is above its 4-sigma contour.
    inside = data["posterior"] >= data["posterior"].max() * np.exp(-8.0)
    for axis, setter, coordinates in ((0, right.set_xlim, data["w0"]), (1, right.set_ylim, data["w1"])):
        kept = coordinates[np.any(inside, axis=1 - axis)]
        pad = 0.1 * (kept[-1] - kept[0])
        setter(kept[0] - pad, kept[-1] + pad)
        if axis == 0:
            left.set_xlim(kept[0] - pad, kept[-1] + pad)
    right.set_xlabel("$w_0$")
    right.set_ylabel("$w_1$")
    right.set_title("2-D: black posterior, blue Laplace, red diag Fisher\ncontours at max x exp(-1/2, -2, -9/2): "
                    "1, 2, 3 sigma for a Gaussian", fontsize=9)
    if "skewed_w" in data:
        _plot_laplace_skewed(data, skewed)
    fig.suptitle("Fig. 3: Laplace approximation of the true posterior (logistic regression)")
    fig.tight_layout()
    return fig


def _plot_laplace_skewed(data, ax):
    """The small-N panel: 1-D posterior of separable data against its Laplace Gaussian."""
    w = data["skewed_w"]
    ax.plot(w, data["skewed_posterior"], "k", label="posterior (grid)")
    ax.plot(w, data["skewed_laplace"], "C0--", label=f"Laplace, KL = {float(data['skewed_kl_laplace']):.3f}")
    ax.axvline(float(data["skewed_map"]), color="C0", lw=0.8, ls=":", label=f"mode {float(data['skewed_map']):.2f}")
    ax.axvline(float(data["skewed_mean"]), color="k", lw=0.8, ls=":", label=f"mean {float(data['skewed_mean']):.2f}")
    shown = w[data["skewed_posterior"] >= 1e-3 * data["skewed_posterior"].max()]
    pad = 0.1 * (shown[-1] - shown[0])
    ax.set_xlim(shown[0] - pad, shown[-1] + pad)
    ax.set_xlabel("$w$")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("N = 6, separable, prior N(0, 25): skewed", fontsize=10)


# ----------------------------------------------------------------------------- Fig. 4: trajectories
def _gradient_descent(model, lik, x, y, theta0, penalty, lr: float, steps: int) -> np.ndarray:
    """Full-batch gradient descent on mean loss + penalty; returns the path (steps + 1, P)."""
    from .model.loss import loss_and_grad

    theta = np.array(theta0, dtype=np.float64)
    path = [theta.copy()]
    for _ in range(steps):
        grad = loss_and_grad(model.with_theta(theta), lik, x, y)[1]
        if penalty is not None:
            grad = grad + penalty.value_and_grad(theta)[1]
        theta = theta - lr * grad
        path.append(theta.copy())
    return np.array(path)


def trajectories_data(lam: float = 10.0, n: int = 200, steps: int = 1000, lr: float = 0.15,
                      n_contour: int = 121, seed: int = 0) -> dict[str, np.ndarray]:
    """Fig. 4 computed: SGD, L2 and EWC on task B after task A, two parameters.

    Model f(x) = w^T x (a bias-free Linear layer, gaussian likelihood with sigma = 1, mean loss
    L = 1/N sum_n 1/2 (y_n - f_n)^2 + 1/2 log 2 pi). Task A: x ~ N(0, diag(1, 0.05^2)),
    y = x_0 + noise, so L_A is sharply curved along theta_0 and almost flat along theta_1 (its
    exact Fisher is ~diag(1, 0.0025)). Task B: x ~ N(0, diag(0.3^2, 1)), y = -x_0 + x_1 + noise:
    curved along theta_1, shallow along theta_0, optimum (-1, 1). The two low-loss valleys cross
    near (1, 1).

    theta*_A is gradient descent on L_A from (-0.5, -0.8) (lr 0.5, 400 steps: converged along
    theta_0, barely moved along the flat theta_1). From theta*_A, `steps` steps of gradient descent
    with step `lr` on L_B + Omega with Omega = 0 (sgd), lambda/2 ||theta - theta*_A||^2 (l2),
    lambda/2 sum_i F_i (theta_i - theta*_A,i)^2 (ewc, ewc_ref.continual.penalty.Penalty, F = exact diagonal
    Fisher of task A at theta*_A from ewc_ref.fisher).

    Returns
    -------
    dict with the data x_a, x_b (n, 2), y_a, y_b (n, 1); theta_a_star (2,), fisher_a (2,), path_a (400 + 1, 2), path_sgd / path_l2 / path_ewc
    (steps + 1, 2), final_loss_a / final_loss_b (3,) in METHODS order, lam (scalar), grid axes
    theta0 / theta1 (n_contour,), loss_a / loss_b (n_contour, n_contour) with [i, j] at
    (theta0[i], theta1[j]).
    """
    from .bayes.posterior import GaussianPrior, LogPosterior, Subspace
    from .continual.penalty import Penalty
    from .curvature.estimate import fisher
    from .model.likelihoods import Gaussian
    from .model.loss import mean_loss
    from .model.mlp import MLP

    rng = np.random.default_rng(seed)
    lik = Gaussian(sigma=1.0)
    x_a = rng.standard_normal((n, 2)) * [1.0, 0.05]
    y_a = (x_a @ np.array([1.0, 0.0]) + 0.1 * rng.standard_normal(n))[:, None]
    x_b = rng.standard_normal((n, 2)) * [0.3, 1.0]
    y_b = (x_b @ np.array([-1.0, 1.0]) + 0.1 * rng.standard_normal(n))[:, None]
    model = MLP([np.zeros((1, 2))], [None], "identity")

    path_a = _gradient_descent(model, lik, x_a, y_a, [-0.5, -0.8], None, 0.5, 400)
    theta_a = path_a[-1]
    fisher_a = fisher(model.with_theta(theta_a), lik, x_a, y_a, estimator="exact", structure="diag").diagonal
    out = {"theta_a_star": theta_a, "fisher_a": fisher_a, "path_a": path_a, "lam": np.array(float(lam)),
           "x_a": x_a, "y_a": y_a, "x_b": x_b, "y_b": y_b}
    final_a, final_b = [], []
    for method in METHODS:
        penalty = None
        if method == "l2":
            penalty = Penalty(lam, "l2")
            penalty.consolidate(theta_a)
        elif method == "ewc":
            penalty = Penalty(lam, "separate")
            penalty.consolidate(theta_a, fisher_a)
        path = _gradient_descent(model, lik, x_b, y_b, theta_a, penalty, lr, steps)
        out[f"path_{method}"] = path
        final_a.append(mean_loss(model.with_theta(path[-1]), lik, x_a, y_a))
        final_b.append(mean_loss(model.with_theta(path[-1]), lik, x_b, y_b))
    out["final_loss_a"], out["final_loss_b"] = np.array(final_a), np.array(final_b)

    # Loss surfaces on a grid: mean loss = -log p(D | theta) / N, batched over grid points.
    paths = np.vstack([out[f"path_{m}"] for m in METHODS] + [path_a])
    lo, hi = paths.min(0) - 0.5, paths.max(0) + 0.5
    theta0, theta1 = np.linspace(lo[0], hi[0], n_contour), np.linspace(lo[1], hi[1], n_contour)
    points = np.stack(np.meshgrid(theta0, theta1, indexing="ij"), -1).reshape(-1, 2)
    prior = GaussianPrior.isotropic(2)                       # unused by log_likelihood
    space = Subspace(model, [0, 1])
    for key, (x, y) in (("loss_a", (x_a, y_a)), ("loss_b", (x_b, y_b))):
        log_lik = LogPosterior(space, lik, x, y, prior).log_likelihood(points)
        out[key] = (-log_lik / n).reshape(n_contour, n_contour)
    out["theta0"], out["theta1"] = theta0, theta1
    return out


def plot_trajectories(data, plt):
    """Fig. 4: left the whole picture, right a zoom on theta*_A where L2's short path is visible."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 5.8), gridspec_kw={"width_ratios": [1.4, 1]})
    T0, T1 = np.meshgrid(data["theta0"], data["theta1"], indexing="ij")
    floor_a, floor_b = data["loss_a"].min(), data["loss_b"].min()
    levels = floor_a + np.array([0.01, 0.05, 0.2, 0.5, 1.0, 2.0])
    labels = {"sgd": "SGD (forgets A)", "l2": "L2 (keeps A, fails to learn B)", "ewc": "EWC (stays in A's valley)"}
    styles = {"sgd": ("C3", 2.0, "-"), "l2": ("C2", 3.5, "-"), "ewc": ("C0", 2.0, "--")}
    for axis in (ax, zoom):
        axis.contour(T0, T1, data["loss_a"], levels=levels, colors="C7", linestyles="solid")
        axis.contour(T0, T1, data["loss_b"], levels=floor_b + levels - floor_a, colors="C9", linestyles="dashed")
        axis.plot(*data["path_a"].T, color="C7", lw=1, alpha=0.7,
                  label="training on A (to $\\theta^\\star_A$)" if axis is ax else None)
        for method in METHODS:
            color, width, style = styles[method]
            path = data[f"path_{method}"]
            index = METHODS.index(method)
            label = (f"{labels[method]}: $L_A$ {data['final_loss_a'][index]:.3f}, $L_B$ {data['final_loss_b'][index]:.3f}"
                     if axis is ax else None)
            axis.plot(*path.T, color=color, lw=width, ls=style, label=label)
            axis.plot(*path[-1], "o", color=color, ms=7, mec="k")
        axis.plot(*data["theta_a_star"], "k*", ms=14, label="$\\theta^\\star_A$" if axis is ax else None)
    star = data["theta_a_star"]
    l2_end = data["path_l2"][-1]
    half = max(0.15, 1.5 * float(np.max(np.abs(l2_end - star))))
    zoom.set_xlim(star[0] - half, star[0] + half)
    zoom.set_ylim(star[1] - half, star[1] + half)
    zoom.set_title("zoom on $\\theta^\\star_A$: L2 (green) barely moves", fontsize=9)
    ax.indicate_inset_zoom(zoom, edgecolor="k")
    ax.set_xlabel(rf"$\theta_0$ (high Fisher for A: $F_0$ = {data['fisher_a'][0]:.3g})")
    ax.set_ylabel(rf"$\theta_1$ (low Fisher for A: $F_1$ = {data['fisher_a'][1]:.2g})")
    zoom.set_xlabel(r"$\theta_0$")
    lam = float(data["lam"])
    ax.set_title(f"Fig. 4: training on B after A (grey: $L_A$, blue dashed: $L_B$; lambda = {lam:g})", fontsize=9)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# ----------------------------------------------------------------------------- accuracy matrices
def accuracy_data(scenarios=SCENARIOS, epochs: int = 5, hidden: int = 50, seed: int = 0,
                  config=None, progress: bool = False) -> dict[str, np.ndarray]:
    """Accuracy matrices R[i, j] of SGD, L2 and EWC per scenario, as ``ewc-ref demo`` computes them.

    ``ewc_ref.continual.experiments.run_scenario``, the demo's experiment (same data, scenarios,
    training and default lambdas), in a small configuration: `epochs` per task, one hidden layer
    of `hidden` ReLU units, tasks and EWC lambda per scenario from `config` (default
    ACCURACY_CONFIG); `progress` reports each run on stderr.

    Returns
    -------
    dict with R_<scenario>_<method> : (T, T), lambda_<scenario>_<method> : scalar,
    average_accuracy_<scenario>_<method>, forgetting_<scenario>_<method> : scalars
    """
    from .continual.datasets import load_digits
    from .continual.experiments import run_scenario

    config = dict(ACCURACY_CONFIG if config is None else config)
    data = load_digits()
    out = {}
    for name in scenarios:
        if name not in config:
            raise ValueError(f"scenarios: expected names among {list(config)}, got {name!r}")
        n_tasks, ewc_lambda = config[name]
        result = run_scenario(name, data, n_tasks, ewc_lambda=ewc_lambda, hidden=(hidden,), epochs=epochs,
                              seed=seed, progress=progress)
        for method in METHODS:
            entry = result["methods"][method]
            out[f"R_{name}_{method}"] = np.array(entry["accuracy_matrix"])
            out[f"lambda_{name}_{method}"] = np.array(entry["lambda"])
            out[f"average_accuracy_{name}_{method}"] = np.array(entry["average_accuracy"])
            out[f"forgetting_{name}_{method}"] = np.array(entry["forgetting"])
    return out


def plot_accuracy(data, plt):
    scenarios = [s for s in SCENARIOS if f"R_{s}_sgd" in data]
    fig, axes = plt.subplots(len(scenarios), len(METHODS), figsize=(3.2 * len(METHODS), 3.0 * len(scenarios)),
                             squeeze=False)
    image = None
    for row, name in enumerate(scenarios):
        for col, method in enumerate(METHODS):
            ax = axes[row, col]
            R = data[f"R_{name}_{method}"]
            image = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
            T = R.shape[0]
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if R[i, j] < 0.5 else "black")
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            lam = float(data[f"lambda_{name}_{method}"])
            title = f"{name}: {method}" + ("" if method == "sgd" else f" (lambda {lam:g})")
            ax.set_title(f"{title}\navg {float(data[f'average_accuracy_{name}_{method}']):.3f}, "
                         f"forget {float(data[f'forgetting_{name}_{method}']):.3f}", fontsize=8)
            if col == 0:
                ax.set_ylabel("after training task i")
            if row == len(scenarios) - 1:
                ax.set_xlabel("accuracy on task j")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy")
    fig.suptitle("Accuracy matrices R[i, j], digits (ewc-ref demo, small configuration)")
    return fig


# ----------------------------------------------------------------------------- Fisher estimators
def estimators_data(n: int = 500, hidden: int = 16, epochs: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Diagonals of the empirical Fisher, the exact Fisher and the Hessian of a trained digits MLP.

    A 64-`hidden`-10 tanh MLP (tanh, not ReLU: for a ReLU network every second derivative
    d^2 f / d theta_i^2 vanishes, so diag(H) = diag(GGN) = diag(F) exactly and the comparison
    would show nothing; the off-diagonal residual of ReLU networks is not zero) trained for `epochs` epochs of SGD (ewc_ref.continual.training.train_task, all ten
    classes) on the shipped digits; the three diagonals (ewc_ref.fisher, structure 'diag') on the
    first `n` training images.

    Returns
    -------
    dict with empirical, exact, hessian : (P,) diagonals (means over the n examples);
    rel_error_empirical, rel_error_hessian : ||d - exact|| / ||exact||; correlation_empirical,
    correlation_hessian : Pearson correlation of log10 entries with log10 exact (positive entries);
    n_negative_hessian : number of negative Hessian diagonal entries
    """
    from .continual.datasets import load_digits
    from .continual.training import train_task
    from .curvature.estimate import fisher
    from .model.likelihoods import Categorical
    from .model.mlp import MLP

    x_train, y_train = load_digits()[:2]
    model = MLP.random([x_train.shape[1], hidden, 10], "tanh", rng=np.random.default_rng([seed, 0]))
    train_task(model, x_train, y_train, np.arange(10), epochs=epochs, rng=np.random.default_rng([seed, 1]))
    x, y = x_train[:n], y_train[:n]
    lik = Categorical()
    out = {kind: fisher(model, lik, x, y, estimator=kind, structure="diag").diagonal.copy()
           for kind in ("empirical", "exact", "hessian")}
    exact = out["exact"]
    for kind in ("empirical", "hessian"):
        out[f"rel_error_{kind}"] = np.array(np.linalg.norm(out[kind] - exact) / np.linalg.norm(exact))
        both = (out[kind] > 0) & (exact > 0)
        out[f"correlation_{kind}"] = np.array(np.corrcoef(np.log10(out[kind][both]), np.log10(exact[both]))[0, 1])
    out["n_negative_hessian"] = np.array(int(np.sum(out["hessian"] < 0)))
    return out


def plot_estimators(data, plt):
    exact = data["exact"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    positive = exact > 0
    low, high = exact[positive].min(), exact.max()
    for ax, kind, color in ((left, "empirical", "C1"), (right, "hessian", "C2")):
        ax.scatter(exact[positive], data[kind][positive], s=4, alpha=0.5, color=color)
        ax.plot([low, high], [low, high], "k--", lw=1, label="y = x")
        ax.set_xscale("log")
        ax.set_xlabel("exact Fisher diagonal $F_{ii}$")
        ax.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("empirical Fisher diagonal")
    left.set_title(f"empirical vs exact: rel. error {float(data['rel_error_empirical']):.2g}", fontsize=9)
    negative = data["hessian"][positive] < 0
    if np.any(negative):
        right.scatter(exact[positive][negative], -data["hessian"][positive][negative], s=8, marker="x", color="C3",
                      label="$-H_{ii}$ where $H_{ii} < 0$")
        right.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("Hessian diagonal $H_{ii}$")
    right.set_title(f"Hessian vs exact: rel. error {float(data['rel_error_hessian']):.2g}, "
                    f"{int(data['n_negative_hessian'])} negative entries", fontsize=9)
    fig.suptitle("Fisher estimators, digits MLP (tanh): one point per parameter (derivations/04)")
    fig.tight_layout()
    return fig


def ellipses_data() -> dict[str, np.ndarray]:
    """Arrays of the penalty-ellipse figure: ``ewc_ref.figures_regions.ellipses_data`` on Fig. 4's data."""
    return figures_regions.ellipses_data(trajectories_data(n_contour=61))


# ----------------------------------------------------------------------------- driver
DATA = {"laplace": laplace_data, "trajectories": trajectories_data, "accuracy": accuracy_data,
        "estimators": estimators_data, "regions": regions_data, "ellipses": ellipses_data}
PLOTS = {"laplace": plot_laplace, "trajectories": plot_trajectories, "accuracy": plot_accuracy,
         "estimators": plot_estimators, "regions": plot_regions, "ellipses": plot_ellipses}


def check_name(name: str) -> str:
    if name not in FIGURES:
        raise ValueError(f"figure name: expected one of {list(FIGURES)}, got {name!r}")
    return name


def make_figure(name: str, out_dir, png: bool = True, plt=None, data: dict | None = None) -> list[Path]:
    """Compute figure `name`, write ``out_dir/name.npz`` and (if `png`) ``out_dir/name.png``.

    Both are written atomically (temporary file + rename): a failure leaves no partial file.
    Returns the paths written. With png=True, `plt` is matplotlib.pyplot (default: imported
    by `require_matplotlib`, which raises ImportError when it is missing; the check happens
    before any computation). `data`: the figure's arrays if already computed.
    """
    check_name(name)
    out_dir = Path(out_dir)
    if png and plt is None:
        plt = require_matplotlib()
    if data is None:
        data = DATA[name]()
    npz = out_dir / f"{name}.npz"
    atomic_savez(npz, data)
    written = [npz]
    if png:
        fig = PLOTS[name](data, plt)
        try:
            _save_png(fig, out_dir / f"{name}.png")
        finally:
            plt.close(fig)
        written.append(out_dir / f"{name}.png")
    return written
