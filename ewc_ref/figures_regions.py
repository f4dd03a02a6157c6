"""The report's Figs. 1-2 (solution regions and their overlap) and the penalty ellipses, computed.

Two figures of ``ewc-ref figures`` (the table in ewc_ref/figures.py lists every figure), each a
``*_data`` function returning plain arrays (no matplotlib) and a ``plot_*`` function:

=============  ====================================================================================
name           what it shows
=============  ====================================================================================
regions        Figs. 1-2: the low-loss regions of two tasks A and B of the two-parameter network
               f(x) = b tanh(a x), their overlap D, the sign symmetry (a, b) -> (-a, -b) that
               doubles every region and every posterior mode, and task A's posterior against its
               Laplace Gaussian at theta*_A, which sees one mode only (derivations/03).
ellipses       the EWC penalty's level set 1/2 d^T M d = c at theta*_A for M = exact Fisher,
               empirical Fisher, diagonal of the exact Fisher and Hessian, on Fig. 4's landscape
               and on the network of ``regions``; with each parameter's conditional half-width
               sqrt(2c / M_ii) and marginal half-width sqrt(2c [M^-1]_ii) (derivations/03).
=============  ====================================================================================
"""

from __future__ import annotations

import numpy as np

#: Teacher of the regions figure, f(x) = B0 tanh(A0 x); noise standard deviation and the model's sigma.
TEACHER, NOISE = (0.5, 2.0), 0.2
#: "Acceptable error" of Figs. 1-2: mean loss within this many nats of its minimum over the grid.
TOLERANCE = 0.2
#: Half-width of the grid: the posterior of A (prior N(0, I)) has < 1e-6 of its mass outside it.
BOX = 5.0
#: Half-width of the drawn window.
WINDOW = 3.0


def _network():
    from .model.mlp import MLP

    return MLP([np.array([[1.0]]), np.array([[1.0]])], [None, None], "tanh")   # theta = (a, b)


def regions_data(n_grid: int = 241, seed: int = 0) -> dict[str, np.ndarray]:
    """Figs. 1-2 on f(x) = b tanh(a x), theta = (a, b), gaussian likelihood sigma = NOISE.

    Task A: 20 inputs uniform on [-0.5, 0.5] (f ~ a b x there: A fixes the product a b); task B: 20
    inputs with |x| uniform on [2.5, 3] (f ~ b sign(x) once a x is large: B mostly fixes b); labels
    from the teacher 2 tanh(0.5 x) plus N(0, NOISE^2) noise. Prior N(0, I). A region is
    {theta : L(theta) <= min_grid L + TOLERANCE} with L the mean loss; D is the intersection.

    Returns
    -------
    dict with a, b (n,) the grid axes inside [-WINDOW, WINDOW]; loss_a, loss_b (n, n), [i, j] at (a[i], b[j]);
    tolerance; theta_a_star (2,) the MAP of A and theta_ab_star (2,) the MAP of A and B together
    (both with a, b > 0); posterior_a, laplace_a (n_grid, n_grid) the normalised posterior of A on the
    grid and its Laplace Gaussian at theta_a_star (n, n); mass_mirror_posterior, mass_mirror_laplace:
    the mass of each at a < 0 (where the mirror mode -theta_a_star lives), on the whole
    n_grid x n_grid grid over [-BOX, BOX]; mass_window_posterior; log_evidence_error (grid);
    x_a, y_a, x_b, y_b (20, 1).
    """
    from .bayes.grid import grid_posterior
    from .bayes.laplace import find_map, laplace_approximation
    from .bayes.posterior import GaussianPrior, LogPosterior, Subspace
    from .model.likelihoods import Gaussian

    rng = np.random.default_rng(seed)
    a0, b0 = TEACHER
    x_a = rng.uniform(-0.5, 0.5, (20, 1))
    x_b = np.concatenate([rng.uniform(2.5, 3.0, (10, 1)), -rng.uniform(2.5, 3.0, (10, 1))])
    y_a = b0 * np.tanh(a0 * x_a) + NOISE * rng.standard_normal((20, 1))
    y_b = b0 * np.tanh(a0 * x_b) + NOISE * rng.standard_normal((20, 1))
    space, lik, prior = Subspace(_network(), [0, 1]), Gaussian(sigma=NOISE), GaussianPrior.isotropic(2, 1.0)
    post_a = LogPosterior(space, lik, x_a, y_a, prior)
    post_ab = LogPosterior(space, lik, np.vstack([x_a, x_b]), np.vstack([y_a, y_b]), prior)
    theta_a = find_map(post_a, np.array([1.0, 1.0])).z
    theta_ab = find_map(post_ab, np.array([a0, b0])).z

    # The posterior of A on a fixed box that holds both modes (grid_posterior checks the mass
    # at its edges); everything is drawn on the central window |a|, |b| <= WINDOW of the same grid.
    grid = grid_posterior(post_a, np.zeros(2), 1.0, n_points=n_grid, bounds=[(-BOX, BOX), (-BOX, BOX)])
    axis = grid.axes[0]
    window = np.abs(axis) <= WINDOW + 1e-12
    points = grid.points()
    out = {"a": axis[window], "b": axis[window], "tolerance": np.array(TOLERANCE), "theta_a_star": theta_a,
           "theta_ab_star": theta_ab, "x_a": x_a, "y_a": y_a, "x_b": x_b, "y_b": y_b}
    crop = np.ix_(window, window)
    for key, (x, y) in (("loss_a", (x_a, y_a)), ("loss_b", (x_b, y_b))):
        log_lik = LogPosterior(space, lik, x, y, prior).log_likelihood(points)
        out[key] = (-log_lik / len(x)).reshape(grid.shape)[crop]
    laplace = laplace_approximation(post_a, theta_a, "hessian")
    laplace_log = laplace.logpdf(points).reshape(grid.shape)
    out["posterior_a"], out["laplace_a"] = grid.density[crop], np.exp(laplace_log)[crop]
    mirror = axis < 0                                                   # the half-plane a < 0: rows of the grid
    out["mass_mirror_posterior"] = np.array(grid.masses[mirror].sum())
    out["mass_mirror_laplace"] = np.array(np.exp(laplace_log + grid.log_weights)[mirror].sum())
    out["mass_window_posterior"] = np.array(grid.masses[crop].sum())
    out["log_evidence_error"] = np.array(grid.log_evidence_error)
    # EWC's answer: task B's posterior with A's posterior replaced by a Gaussian at theta*_A (the
    # Laplace one, precision N_A H + Lambda_0, and EWC's diagonal-Fisher one), maximised from theta*_A.
    for key, kind in (("theta_ewc_laplace", "hessian"), ("theta_ewc_diag", "fisher_diag")):
        gaussian_prior = laplace_approximation(post_a, theta_a, kind).as_prior()
        out[key] = find_map(LogPosterior(space, lik, x_b, y_b, gaussian_prior), theta_a).z
    return out


# ----------------------------------------------------------------------------- plots
def _levels(density):
    """Contours of a density at its maximum times exp(-9/2, -2, -1/2): 3, 2, 1 'sigma' for a Gaussian."""
    return density.max() * np.exp(-0.5 * np.array([9.0, 4.0, 1.0]))


def plot_regions(data, plt):
    """Figs. 1-2 and the posterior of A from the arrays of `regions_data`; returns the matplotlib figure."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    A, B = np.meshgrid(data["a"], data["b"], indexing="ij")
    tol = float(data["tolerance"])
    region_a = (data["loss_a"] <= data["loss_a"].min() + tol).astype(float)
    region_b = (data["loss_b"] <= data["loss_b"].min() + tol).astype(float)
    star, both = data["theta_a_star"], data["theta_ab_star"]
    for ax in axes:
        ax.set_xlabel("$a$ (hidden weight)")
        ax.set_ylabel("$b$ (output weight)")
        ax.set_aspect("equal")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
    left, middle, right = axes
    left.contourf(A, B, region_a, levels=[0.5, 1.5], colors=["0.75"])
    left.plot(*star, "k*", ms=12, label=r"$\theta^\star_A$")
    left.plot(*-star, "k*", ms=12, mfc="w", label=r"$-\theta^\star_A$ (same function)")
    left.set_title(f"Fig. 1: task A's solution region\n(mean loss within {tol:g} nats of its minimum)", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    middle.contourf(A, B, region_a, levels=[0.5, 1.5], colors=["0.8"])
    middle.contourf(A, B, region_b, levels=[0.5, 1.5], colors=["C9"], alpha=0.6)
    middle.contourf(A, B, region_a * region_b, levels=[0.5, 1.5], colors=["C3"])
    middle.plot(*both, "kD", ms=6, label=r"MAP of A and B, and its mirror")
    middle.plot(*-both, "kD", ms=6, mfc="w")
    middle.plot(*star, "k*", ms=12)
    middle.plot(*data["theta_ewc_laplace"], "o", color="C0", mec="k", label="EWC, Laplace precision")
    middle.plot(*data["theta_ewc_diag"], "X", color="C1", mec="k", label="EWC, diagonal Fisher")
    middle.set_title("Fig. 2: A (grey), B (blue), overlap D (red)", fontsize=9)
    middle.legend(fontsize=7, loc="lower right")
    right.contour(A, B, data["posterior_a"], levels=_levels(data["posterior_a"]), colors="k")
    right.contour(A, B, data["laplace_a"], levels=_levels(data["laplace_a"]), colors="C0", linestyles="dashed")
    right.plot(*star, "k*", ms=12)
    right.set_title(f"p(theta | A) (black) vs Laplace at theta*_A (blue)\nmass at a < 0: "
                    f"{float(data['mass_mirror_posterior']):.3f} vs {float(data['mass_mirror_laplace']):.3f}; "
                    "contours at 1, 2, 3 sigma", fontsize=9)
    fig.suptitle("The report's Figs. 1-2 computed for f(x) = b tanh(a x): regions, symmetric modes, one local Gaussian")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- penalty ellipses
#: The matrices drawn, in order: (key, label, matplotlib colour, line style).
ELLIPSE_KINDS = (("exact", "exact Fisher", "C0", "solid"), ("empirical", "empirical Fisher", "C1", "dashed"),
                 ("diag", "diagonal of the exact Fisher (EWC)", "C3", "dotted"), ("hessian", "Hessian", "k", "dashdot"))


def _penalty_matrices(model, lik, x, y) -> dict[str, np.ndarray]:
    """Task A's exact and empirical Fisher, the exact Fisher's diagonal and the Hessian, all (P, P) means."""
    from .curvature.dense_hessian import hessian_full
    from .curvature.estimate import fisher

    exact = fisher(model, lik, x, y, estimator="exact", structure="full").to_dense()
    return {"exact": exact, "empirical": fisher(model, lik, x, y, estimator="empirical", structure="full").to_dense(),
            "diag": np.diag(np.diag(exact)), "hessian": hessian_full(model, lik, x, y)}


def ellipses_data(fig4: dict, level: float = 0.02) -> dict[str, np.ndarray]:
    """The level set 1/2 d^T M d = `level` at theta*_A, on two landscapes, for the four ELLIPSE_KINDS.

    ``fig4_*``: Fig. 4's linear-Gaussian model, `fig4` the arrays of
    ``ewc_ref.figures.trajectories_data`` (theta*_A early-stopped there; ewc_ref.figures passes a
    61-point loss grid). ``net_*``: the network of `regions_data` (121-point grid) at its
    MAP of task A. For each matrix M (2, 2) of task A's mean loss, the conditional half-width of
    parameter i, sqrt(2 level / M_ii) (how far theta_i may move alone), and the marginal one,
    sqrt(2 level [M^-1]_ii) (how far it may move when the other parameter follows: the ellipse's
    bounding box). An infinite marginal half-width means M is singular.

    Returns
    -------
    dict with level; for prefix in (fig4, net): {prefix}_theta_a_star (2,), {prefix}_axis0,
    {prefix}_axis1 (n,), {prefix}_loss_a (n, n) with [i, j] at (axis0[i], axis1[j]); and per kind
    {prefix}_{kind} (2, 2), {prefix}_{kind}_conditional (2,), {prefix}_{kind}_marginal (2,).
    """
    from .model.likelihoods import Gaussian
    from .model.mlp import MLP

    net = regions_data(n_grid=121)
    linear = MLP([fig4["theta_a_star"][None]], [None], "identity")
    network = _network().with_theta(net["theta_a_star"])
    out = {"level": np.array(float(level))}
    for prefix, model, lik, x, y, axes, loss in (
            ("fig4", linear, Gaussian(sigma=1.0), fig4["x_a"], fig4["y_a"], (fig4["theta0"], fig4["theta1"]), fig4["loss_a"]),
            ("net", network, Gaussian(sigma=NOISE), net["x_a"], net["y_a"], (net["a"], net["b"]), net["loss_a"])):
        out[f"{prefix}_theta_a_star"] = model.theta.copy()
        out[f"{prefix}_axis0"], out[f"{prefix}_axis1"], out[f"{prefix}_loss_a"] = axes[0], axes[1], loss
        for kind, matrix in _penalty_matrices(model, lik, x, y).items():
            out[f"{prefix}_{kind}"] = matrix
            out[f"{prefix}_{kind}_conditional"] = np.sqrt(2 * level / np.diag(matrix))
            with np.errstate(divide="ignore"):
                determinant = np.linalg.det(matrix)
                inverse_diagonal = np.diag(matrix)[::-1] / determinant if determinant > 0 else np.full(2, np.inf)
            out[f"{prefix}_{kind}_marginal"] = np.sqrt(2 * level * inverse_diagonal)
    return out


def _ellipse(matrix, level, n=400):
    """Points d with 1/2 d^T M d = level, M (2, 2) positive definite: d = sqrt(2 level) L^-T u, |u| = 1."""
    t = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)])
    return np.linalg.solve(np.linalg.cholesky(matrix).T, circle) * np.sqrt(2 * level)


def plot_ellipses(data, plt):
    """The penalty level sets of `ellipses_data` over task A's loss, one panel per landscape."""
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.9))
    level = float(data["level"])
    titles = {"fig4": "Fig. 4's landscape (linear model: Hessian = exact Fisher)",
              "net": "the network of Figs. 1-2 at theta*_A (a and b trade off)"}
    for ax, prefix in zip(axes, ("fig4", "net"), strict=True):
        star = data[f"{prefix}_theta_a_star"]
        X, Y = np.meshgrid(data[f"{prefix}_axis0"], data[f"{prefix}_axis1"], indexing="ij")
        loss = data[f"{prefix}_loss_a"]
        ax.contour(X, Y, loss, levels=loss.min() + np.array([0.02, 0.1, 0.5, 2.0]), colors="0.75", linestyles="solid")
        for kind, label, colour, style in ELLIPSE_KINDS:
            points = _ellipse(data[f"{prefix}_{kind}"], level) + star[:, None]
            conditional, marginal = data[f"{prefix}_{kind}_conditional"], data[f"{prefix}_{kind}_marginal"]
            ax.plot(*points, color=colour, ls=style, lw=1.6,
                    label=f"{label}: conditional / marginal half-width of $\\theta_0$ "
                          f"{conditional[0]:.2g} / {marginal[0]:.2g}")
        exact_conditional, exact_marginal = data[f"{prefix}_exact_conditional"], data[f"{prefix}_exact_marginal"]
        ax.plot([star[0] - exact_conditional[0], star[0] + exact_conditional[0]], [star[1]] * 2, color="C0", lw=3,
                solid_capstyle="butt")
        for sign in (-1, 1):
            ax.axvline(star[0] + sign * exact_marginal[0], color="C0", lw=0.8, ls=":")
        ax.plot(*star, "k*", ms=12)
        half = 1.5 if prefix == "net" else None                    # zoom on theta*_A in the network
        ax.set_xlim(*((star[0] - half, star[0] + half) if half else (X.min(), X.max())))
        ax.set_ylim(*((star[1] - half, star[1] + half) if half else (Y.min(), Y.max())))
        ax.set_xlabel(r"$\theta_0$" if prefix == "fig4" else r"$\theta_0 = a$")
        ax.set_ylabel(r"$\theta_1$" if prefix == "fig4" else r"$\theta_1 = b$")
        ax.set_title(titles[prefix] + "\nthick blue: exact Fisher's conditional width of $\\theta_0$; "
                     "dotted verticals: its marginal width", fontsize=8)
        ax.legend(fontsize=6.5, loc="lower left")
    fig.suptitle(f"EWC penalty level sets 1/2 d^T M d = {level:g} at theta*_A (grey: task A's loss)")
    fig.tight_layout()
    return fig
