"""Issue 28 item 7: ewc_ref's Gaussian empirical Fisher in the Laplace precision, and laplace-torch's factor.

docs/bayes-and-laplace.md, "The empirical Fisher of a Gaussian likelihood": N C = EF_mse / (4 sigma^4)
with EF_mse the empirical Fisher of torch MSELoss(reduction='sum'), laplace-torch's EF_mse / (2 sigma^2).
EF_mse is built here from the network Jacobian (model.jacobian) and the residuals, not from ewc_ref.curvature.
"""

import numpy as np
import pytest
from support.problems import make_problem

import ewc_ref as er
from ewc_ref.cli import main


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_ewc_ref_empirical_precision_is_a_quarter_sigma4_of_the_summed_mse_ef(sigma):
    model, _, x, y = make_problem("gaussian", sizes=(4, 6, 2), n=60)
    lik = er.Gaussian(sigma)
    J = model.jacobian(x)  # (N, C, P)
    r = model.predict(x) - y
    per_example = 2 * np.einsum("ncp,nc->np", J, r)  # gradients of torch MSELoss(reduction='sum')
    ef_mse = (per_example**2).sum(axis=0)  # its empirical Fisher's diagonal
    alpha = 0.7
    ours = er.laplace_evidence(model, lik, x, y, prior_precision=alpha, estimator="empirical", structure="diag")
    assert ours.log_det_precision == pytest.approx(np.log(ef_mse / (4 * sigma**4) + alpha).sum(), rel=1e-12)
    laplace_torch = np.log(ef_mse / (2 * sigma**2) + alpha).sum()  # the docs' factor 2 sigma^2
    ratio = (ef_mse / (2 * sigma**2)) / (ef_mse / (4 * sigma**4))
    np.testing.assert_allclose(ratio, 2 * sigma**2, rtol=1e-14)
    assert laplace_torch != pytest.approx(ours.log_det_precision, rel=1e-3)
    # the GGN agrees: 1/2 x sum_n 2 J^T J / sigma^2 = ewc_ref's N x exact
    exact = er.laplace_evidence(model, lik, x, y, prior_precision=alpha, estimator="exact", structure="diag")
    ggn = np.einsum("ncp,ncp->p", J, J) / sigma**2
    assert exact.log_det_precision == pytest.approx(np.log(0.5 * 2 * ggn + alpha).sum(), rel=1e-12)


def test_laplace_help_states_the_factor(capsys):
    assert main(["laplace", "--help"]) == 0
    out = capsys.readouterr().out
    assert "2 sigma^2 x ewc_ref's" in out and "MSELoss(reduction='sum')" in out
