"""The verification part: tell which curvature another implementation computed, and check gradients.

Owns ``diagnose`` (which estimator, structure and scale a foreign curvature matches, with Monte-Carlo
statistics for sampled estimators and shuffled loaders) and the finite-difference gradient and Jacobian checks
(``gradcheck``). Imports model and curvature.
"""
