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

from .activations import ACTIVATIONS, get_activation
from .gradcheck import check_gradients, check_jacobian, check_per_sample_gradients
from .io import load_data, load_model, save_data, save_model
from .likelihoods import LIKELIHOODS, Bernoulli, Categorical, Gaussian, Likelihood, get_likelihood
from .loss import loss_and_grad, mean_loss, per_example_losses, per_sample_gradients
from .mlp import MLP

# Names provided by modules that are imported on first use (keeps `import ewc_ref` fast
# and lets the curvature, Bayes and continual-learning layers load only when needed).
_LAZY = {
    "fisher": "ewc_ref.curvature",
    "Curvature": "ewc_ref.curvature",
    "hessian_vector_product": "ewc_ref.hessian",
    "ggn_vector_product": "ewc_ref.hessian",
    "hessian_full": "ewc_ref.hessian",
    "hessian_diag": "ewc_ref.hessian",
    "hessian_blocks": "ewc_ref.hessian",
    "hessian_residual": "ewc_ref.hessian",
    "FisherAccumulator": "ewc_ref.curvature",
    "Penalty": "ewc_ref.ewc",
    "penalty_and_grad": "ewc_ref.ewc",
    "merge_quadratics": "ewc_ref.ewc",
    "train_task": "ewc_ref.train",
    "run_sequence": "ewc_ref.continual.experiments",
    "head_view": "ewc_ref.train",
    "head_fisher": "ewc_ref.train",
    "load_digits": "ewc_ref.datasets",
    "load_mnist": "ewc_ref.datasets",
    "make_scenario": "ewc_ref.datasets",
    "average_accuracy": "ewc_ref.metrics",
    "forgetting": "ewc_ref.metrics",
    "backward_transfer": "ewc_ref.metrics",
    "fisher_weighted_drift": "ewc_ref.metrics",
    "diagnose": "ewc_ref.diagnose",
    "Diagnosis": "ewc_ref.diagnose",
    "assert_curvature_close": "ewc_ref.testing",
    "assert_is_estimator": "ewc_ref.testing",
    "GaussianPrior": "ewc_ref.bayes",
    "LogPosterior": "ewc_ref.bayes",
    "PosteriorPrior": "ewc_ref.bayes",
    "Subspace": "ewc_ref.bayes",
    "linear_gaussian_posterior": "ewc_ref.bayes",
    "log_likelihood": "ewc_ref.bayes",
    "sequential_log_posterior": "ewc_ref.bayes",
    "GridPosterior": "ewc_ref.grid",
    "grid_posterior": "ewc_ref.grid",
    "Comparison": "ewc_ref.laplace",
    "LaplaceGaussian": "ewc_ref.laplace",
    "MAPNotFound": "ewc_ref.laplace",
    "MAPResult": "ewc_ref.laplace",
    "compare_to_grid": "ewc_ref.laplace",
    "find_map": "ewc_ref.laplace",
    "kl_gaussians": "ewc_ref.laplace",
    "laplace_approximation": "ewc_ref.laplace",
    "posterior_precision": "ewc_ref.laplace",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ewc_ref' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS", "LIKELIHOODS", "MLP", "Bernoulli", "Categorical", "Gaussian", "Likelihood",
    "check_gradients", "check_jacobian", "check_per_sample_gradients", "get_activation",
    "get_likelihood", "load_data", "load_model", "loss_and_grad", "mean_loss",
    "per_example_losses", "per_sample_gradients", "save_data", "save_model", *_LAZY,
]
