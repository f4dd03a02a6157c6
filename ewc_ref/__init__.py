"""ewc_ref: a NumPy reference implementation of Elastic Weight Consolidation.

The public API (docs/file-format.md, "Python API")::

    import ewc_ref as er
    model, lik = er.load_model("model.npz")
    x, y = er.load_data("data.npz")
    F = er.fisher(model, lik, x, y, estimator="empirical", structure="diag")
    F.save("F.npz")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Every name is imported on first use (PEP 562), the eager API too: `import ewc_ref` loads no
# numpy or scipy, so the command line (ewc_ref.cli) is running, and catches Ctrl-C, while the
# heavy modules load; and each part (curvature, Bayes, continual learning) loads only when used.
_LAZY = {
    "load_data": "ewc_ref.io",
    "load_model": "ewc_ref.io",
    "save_data": "ewc_ref.io",
    "load_loader": "ewc_ref.io",
    "LoaderOrder": "ewc_ref.io",
    "save_model": "ewc_ref.io",
    "ACTIVATIONS": "ewc_ref.model.activations",
    "get_activation": "ewc_ref.model.activations",
    "LIKELIHOODS": "ewc_ref.model.likelihoods",
    "Bernoulli": "ewc_ref.model.likelihoods",
    "Categorical": "ewc_ref.model.likelihoods",
    "Gaussian": "ewc_ref.model.likelihoods",
    "Likelihood": "ewc_ref.model.likelihoods",
    "get_likelihood": "ewc_ref.model.likelihoods",
    "loss_and_grad": "ewc_ref.model.loss",
    "mean_loss": "ewc_ref.model.loss",
    "per_example_losses": "ewc_ref.model.loss",
    "per_sample_gradients": "ewc_ref.model.loss",
    "MLP": "ewc_ref.model.mlp",
    "check_gradients": "ewc_ref.verify.gradcheck",
    "check_jacobian": "ewc_ref.verify.gradcheck",
    "check_per_sample_gradients": "ewc_ref.verify.gradcheck",
    "fisher": "ewc_ref.curvature.estimate",
    "Curvature": "ewc_ref.curvature.result",
    "save_curvature": "ewc_ref.curvature.result",
    "laplace_evidence": "ewc_ref.bayes.evidence",
    "LaplaceEvidence": "ewc_ref.bayes.evidence",
    "hessian_vector_product": "ewc_ref.curvature.second_order",
    "ggn_vector_product": "ewc_ref.curvature.second_order",
    "hessian": "ewc_ref.curvature.dense_hessian",
    "hessian_full": "ewc_ref.curvature.dense_hessian",
    "hessian_diag": "ewc_ref.curvature.diag_hessian",
    "hessian_blocks": "ewc_ref.curvature.dense_hessian",
    "hessian_residual": "ewc_ref.curvature.dense_hessian",
    "FisherAccumulator": "ewc_ref.curvature.accumulator",
    "Penalty": "ewc_ref.continual.penalty",
    "penalty_and_grad": "ewc_ref.continual.penalty",
    "merge_quadratics": "ewc_ref.continual.penalty",
    "train_task": "ewc_ref.continual.training",
    "run_sequence": "ewc_ref.continual.experiments",
    "head_view": "ewc_ref.continual.training",
    "head_fisher": "ewc_ref.continual.training",
    "load_digits": "ewc_ref.continual.datasets",
    "load_mnist": "ewc_ref.continual.datasets",
    "make_scenario": "ewc_ref.continual.datasets",
    "average_accuracy": "ewc_ref.continual.metrics",
    "forgetting": "ewc_ref.continual.metrics",
    "backward_transfer": "ewc_ref.continual.metrics",
    "fisher_weighted_drift": "ewc_ref.continual.metrics",
    "diagnose": "ewc_ref.verify.diagnosis",
    "Diagnosis": "ewc_ref.verify.diagnosis",
    "assert_curvature_close": "ewc_ref.testing",
    "assert_is_estimator": "ewc_ref.testing",
    "GaussianPrior": "ewc_ref.bayes.posterior",
    "LogPosterior": "ewc_ref.bayes.posterior",
    "PosteriorPrior": "ewc_ref.bayes.posterior",
    "Subspace": "ewc_ref.bayes.posterior",
    "linear_gaussian_posterior": "ewc_ref.bayes.posterior",
    "log_likelihood": "ewc_ref.bayes.posterior",
    "sequential_log_posterior": "ewc_ref.bayes.posterior",
    "GridPosterior": "ewc_ref.bayes.grid",
    "grid_posterior": "ewc_ref.bayes.grid",
    "Comparison": "ewc_ref.bayes.laplace",
    "LaplaceGaussian": "ewc_ref.bayes.laplace",
    "MAPNotFound": "ewc_ref.bayes.laplace",
    "MAPResult": "ewc_ref.bayes.laplace",
    "compare_to_grid": "ewc_ref.bayes.laplace",
    "find_map": "ewc_ref.bayes.laplace",
    "kl_gaussians": "ewc_ref.bayes.laplace",
    "laplace_approximation": "ewc_ref.bayes.laplace",
    "posterior_precision": "ewc_ref.bayes.laplace",
}


def __dir__():
    """The eager names and every lazily loaded one, so dir(ewc_ref) and tab completion show the API."""
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:  # a subpackage or module (er.curvature): eager imports used to bind them as a side effect
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'ewc_ref' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS", "LIKELIHOODS", "MLP", "Bernoulli", "Categorical", "Gaussian", "Likelihood",
    "check_gradients", "check_jacobian", "check_per_sample_gradients", "get_activation",
    "get_likelihood", "load_data", "load_model", "loss_and_grad", "mean_loss",
    "per_example_losses", "per_sample_gradients", "save_data", "save_model", *_LAZY,
]
