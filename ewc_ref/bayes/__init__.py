"""The Bayes part: priors and log posteriors, grid integration, the Laplace approximation, worked examples.

Owns the posterior of eqs 1-4 (``posterior``), numerical integration on grids in 1-3 dimensions
(``grid``, with the trapezoid rule and its error bound in ``trapezoid``), the MAP and Laplace Gaussian with exact / GGN / diagonal-Fisher precision (``laplace``)
and the small examples the figures and derivations use (``examples``). Imports model, curvature and
verify (the finite-difference Jacobian).
"""
