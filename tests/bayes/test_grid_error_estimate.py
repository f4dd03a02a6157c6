"""The grid posterior's Richardson error estimate (ewc_ref.bayes.grid) as an upper bound on the actual error.

The actual errors are measured on densities with closed-form normalisers and moments
(tests/support/grid_cases.py): a table of cases, a Hypothesis property, a skewed density
against scipy quad, a ridge narrower than the spacing and a kink. Tolerances: the bound itself
is the property under test; the independent adaptive quadrature (scipy quad) is asked for 1e-11
and compared within 1e-9 relative plus its reported error.
"""

import numpy as np
import pytest
import support.grid_cases as gc
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from scipy import stats

import ewc_ref as er


# ----------------------------------------------------------------------------- the error estimate bounds
def _l3(a, b, c):
    return np.array([[1.0, 0.0, 0.0], [a, 1.0, 0.0], [b, c, 1.0]])


# (id, case, n, resolved): `resolved` rows are grids of the default size on densities they
# resolve; there the estimate must also be SMALL (test_error_estimate_is_small_when_resolved).
ESTIMATE_CASES = [
    ("gamma a=22 n=401 (issue 12)", lambda: gc.gamma_log(22.0), 401, True),
    ("gamma a=22 n=801", lambda: gc.gamma_log(22.0), 801, True),
    ("gamma a=0.3 n=21", lambda: gc.gamma_log(0.3), 21, False),
    ("gamma a=0.5 n=11", lambda: gc.gamma_log(0.5), 11, False),
    ("gamma a=2 n=11", lambda: gc.gamma_log(2.0), 11, False),
    ("gamma a=2 n=41", lambda: gc.gamma_log(2.0), 41, False),
    ("gamma a=1000 n=801", lambda: gc.gamma_log(1000.0), 801, True),
    ("gamma a=22 at +100, log q - 500, n=801", lambda: gc.shifted(gc.gamma_log(22.0), 100.0, -500.0), 801, True),
    ("student-t nu=3 n=801", lambda: gc.student_t(3.0), 801, False),
    ("student-t nu=4 n=101", lambda: gc.student_t(4.0), 101, False),
    ("student-t nu=5 at 0.37 n=2001", lambda: gc.shifted(gc.student_t(5.0), 0.37), 2001, False),
    ("student-t nu=30 n=801", lambda: gc.student_t(30.0), 801, True),
    ("flat top p=8 n=801", lambda: gc.flat_top(8), 801, True),
    ("flat top p=16 n=21", lambda: gc.flat_top(16), 21, False),
    ("gaussian sd=1e-3 n=801", lambda: gc.gaussian(1e-3), 801, True),
    ("gaussian at 1000 n=801", lambda: gc.shifted(gc.gaussian(1.0), 1e3), 801, True),
    ("gaussian log q + 700 n=31", lambda: gc.shifted(gc.gaussian(1.0), 0.37, 700.0), 31, False),
    ("2-d gamma a=22 x student-t nu=5 n=41", lambda: gc.product(gc.gamma_log(22.0), gc.student_t(5.0)), 41, False),
    ("2-d sheared gamma a=2 x gaussian n=161",
     lambda: gc.affine(gc.product(gc.gamma_log(2.0), gc.gaussian(1.0)), [[1.0, 0.0], [0.8, 0.5]]), 161, True),
    ("2-d sheared gamma a=22 x gamma a=5 n=21",
     lambda: gc.affine(gc.product(gc.gamma_log(22.0), gc.gamma_log(5.0)), [[1.0, 0.0], [-0.6, 1.0]]), 21, False),
    ("2-d correlated gaussian log q - 300 n=161",
     lambda: gc.affine(gc.product(gc.gaussian(1.0), gc.gaussian(1.0)), [[1.0, 0.0], [0.95, 0.3]], [1.0, -2.0], -300.0),
     161, True),
    ("2-d flat top p=8 x gamma a=0.5 n=11", lambda: gc.product(gc.flat_top(8), gc.gamma_log(0.5)), 11, False),
    ("3-d sheared gamma x student-t x gaussian n=21",
     lambda: gc.affine(gc.product(gc.gamma_log(5.0), gc.student_t(5.0), gc.gaussian(1.0)), _l3(0.5, -0.3, 0.7)), 21, False),
    ("3-d gamma a=22 cubed n=49", lambda: gc.product(*[gc.gamma_log(22.0)] * 3), 49, True),
    ("3-d gamma a=22 cubed n=13", lambda: gc.product(*[gc.gamma_log(22.0)] * 3), 13, False),
    ("3-d flat top x gamma x student-t n=11",
     lambda: gc.product(gc.flat_top(4), gc.gamma_log(1.0), gc.student_t(10.0)), 11, False),
]


def _grid_of(case, n):
    return er.grid_posterior(case.log_q, case.center, case.scale, n_points=n, quad_check=False)


@pytest.mark.parametrize("make_case, n", [row[1:3] for row in ESTIMATE_CASES], ids=[row[0] for row in ESTIMATE_CASES])
def test_error_estimate_bounds_the_actual_error(make_case, n):
    """Contract: |actual error| <= estimate for log p(D), every mean entry and every covariance
    entry, on skewed, heavy-tailed, flat-topped, Gaussian, 2-d and 3-d densities, from the coarsest
    grid allowed (n = 11) to n = 2001, and with large offsets of z and log q (round-off).
    The exact values are closed forms (tests/support/grid_cases.py), accurate to ~1e-16 relative."""
    case = make_case()
    grid = _grid_of(case, n)
    err_z, err_mean, err_cov = gc.actual_errors(grid, case)
    assert err_z <= grid.log_evidence_error, (err_z, grid.log_evidence_error)
    assert np.all(err_mean <= grid.mean_error), (err_mean, grid.mean_error)
    assert np.all(err_cov <= grid.cov_error), (err_cov, grid.cov_error)


RESOLVED = [row for row in ESTIMATE_CASES if row[3]]


@pytest.mark.parametrize("make_case, n", [row[1:3] for row in RESOLVED], ids=[row[0] for row in RESOLVED])
def test_error_estimate_is_small_when_resolved(make_case, n):
    """Contract: the estimate is not inflated to be safe. On grids that resolve the density, every
    estimate is <= 1e-9 of its scale (1 + |log Z|, sd_i, sd_i sd_j): the truncated tail
    (n x the outermost layer's mass, at most ~1e-13 of the peak per point, times the squared box
    width) dominates and reaches 6e-10 (benchmarks/grid_error_scan.py). An estimate multiplied
    by 1e6 (mutant G4) fails here."""
    gc.assert_estimates_small(_grid_of(make_case(), n), 1e-9)


def test_error_estimate_is_within_a_stated_factor_of_the_actual_error_when_resolved():
    """Contract: on resolved grids the median over entries of estimate / max(actual, eps scale) is
    below 1e4 for each of log Z, mean and cov (measured: 24, 6e3, 260). The actual error there is
    round-off, or 0 by symmetry (half the mean entries: hence the eps floor and the mean's 6e3);
    the estimate is dominated by the truncated-tail bound, ~1e-11 of scale. Each entry is also
    bounded (ratio >= 1), as the table test asserts."""
    eps = np.finfo(np.float64).eps
    ratios = [[], [], []]
    for _, make_case, n, _ in RESOLVED:
        case = make_case()
        grid = _grid_of(case, n)
        scales = gc.estimate_scales(grid)
        estimates = (grid.log_evidence_error, grid.mean_error, grid.cov_error)
        for q, (actual, estimate, scale) in enumerate(zip(gc.actual_errors(grid, case), estimates, scales, strict=True)):
            ratios[q].extend(np.ravel(estimate / np.maximum(actual, eps * scale)))
    medians = [float(np.median(r)) for r in ratios]
    print("median estimate / max(actual, eps scale) for log Z, mean, cov:", medians)
    assert max(medians) <= 1e4, medians
    assert min(min(r) for r in ratios) >= 1, medians


@st.composite
def closed_form_cases(draw):
    """A density of tests/support/grid_cases.py in d = 1, 2 or 3: products of skewed, heavy-tailed,
    flat-topped and Gaussian coordinates, sheared, shifted and offset in log q."""
    d = draw(st.integers(1, 3))
    parts = []
    for _ in range(d):
        family = draw(st.sampled_from(["gamma", "student", "flat", "gaussian"]))
        if family == "gamma":
            parts.append(gc.gamma_log(draw(st.floats(0.3, 100.0))))
        elif family == "student":
            parts.append(gc.student_t(draw(st.floats(3.0, 30.0))))
        elif family == "flat":
            parts.append(gc.flat_top(draw(st.sampled_from([4, 8, 16])), draw(st.floats(0.1, 10.0))))
        else:
            parts.append(gc.gaussian(draw(st.floats(1e-3, 1e3))))
    shear = np.eye(d) + np.tril(np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=d * d, max_size=d * d)))
                                .reshape(d, d), -1)
    loc = np.array(draw(st.lists(st.floats(-100.0, 100.0), min_size=d, max_size=d)))
    const = draw(st.floats(-500.0, 500.0))
    n = draw(st.sampled_from({1: [21, 41, 101, 401, 801], 2: [21, 41, 81], 3: [21, 33]}[d]))
    return gc.affine(gc.product(*parts), shear, loc, const), n


@given(closed_form_cases())
@settings(max_examples=30)
def test_error_estimate_bounds_the_actual_error_property(case_and_n):
    """Contract: on drawn densities and grid sizes, every entry whose estimate is below 1e-2 of
    its scale bounds the actual error; an estimate above that says "not resolved" and is an order
    of magnitude only. Measured on 1500 random draws: 18 of 10783 entries exceeded their
    estimate, 13 of them with estimates >= 1e-2 of scale (2-d/3-d grids of 21-41 points, actual
    errors ~50%); 5, on 3-d grids of 21-33 points, had smaller estimates (up to 1.1e3 x below the
    error): narrow sheared ridges, now caught by the resolution guard (0 in 1515 fresh draws,
    docs/bayes-and-laplace.md).
    A grid that refuses (mass at the faces) is a correct answer, not a counterexample."""
    case, n = case_and_n
    try:
        grid = _grid_of(case, n)
    except ValueError as error:
        assert "outermost cells" in str(error) or "could not find bounds" in str(error)
        reject()
    estimates = (grid.log_evidence_error, grid.mean_error, grid.cov_error)
    for actual, estimate, scale in zip(gc.actual_errors(grid, case), estimates, gc.estimate_scales(grid), strict=True):
        resolved = np.asarray(estimate <= 1e-2 * scale)
        assert np.all((actual <= estimate)[resolved]), (actual, estimate, scale)


@pytest.mark.parametrize("a", [0.3, 2.0, 22.0])
def test_quad_cross_check_of_a_skewed_density(a):
    """Contract: for d = 1 the independent adaptive quadrature (quad_log_evidence) equals the
    closed form log Gamma(a) within 1e-9 relative (quad is asked for 1e-11) plus its own error."""
    case = gc.gamma_log(a)
    grid = er.grid_posterior(case.log_q, case.center, case.scale, n_points=401)
    assert abs(grid.quad_log_evidence - case.log_z) <= 1e-9 * (1 + abs(case.log_z)) + grid.quad_error


def test_a_ridge_narrower_than_the_spacing_is_marked_not_resolved():
    """Contract: when the spacing exceeds twice a conditional sd where the mass lies (a narrow
    sheared ridge, correlation 0.9999 on 21 points: spacing ~ 54 conditional sds), Richardson's
    h-vs-2h comparison is blind (both alias the ridge), so the grid says `resolved` False and its
    estimates are raised to the quantities' scales; the same density on the default grid is
    resolved. Removing the resolution part makes the first assertion fail."""
    rho = 0.9999
    cov = np.array([[1.0, rho], [rho, 1.0]])
    dist = stats.multivariate_normal(np.zeros(2), cov)

    def log_q(z):
        return np.atleast_1d(dist.logpdf(z))

    coarse = er.grid_posterior(log_q, np.zeros(2), np.ones(2), n_points=21)
    assert not coarse.resolved
    assert coarse.log_evidence_error >= 1 and np.all(coarse.mean_error >= 1) and np.all(coarse.cov_error >= 1)
    assert "NOT RESOLVED" in coarse.summary()
    # rho = 0.9 on the default 161 points: spacing ~ 0.24 conditional sds.
    moderate = stats.multivariate_normal(np.zeros(2), [[1.0, 0.9], [0.9, 1.0]])
    fine = er.grid_posterior(lambda z: np.atleast_1d(moderate.logpdf(z)), np.zeros(2), np.ones(2))
    assert fine.resolved and fine.cov_error.max() <= 1e-8


def _kink(loc: float):
    """log q = -|z - loc| (a Laplace density): log Z = log 2, mean loc, variance 2. The kink is where
    the trapezoid rule is only O(h^2) accurate, so the actual error is large enough to measure."""
    return gc.Case(f"kink at {loc}", lambda z: -np.abs(z[:, 0] - loc), np.array([0.0]), np.array([1.0]),
                   float(np.log(2.0)), np.array([loc]), np.array([[2.0]]))


@pytest.mark.parametrize(("loc", "n"), [(0.37, 201), (0.37, 101), (0.37, 401), (0.0, 201)])
def test_log_evidence_estimate_is_a_bound_within_100x_on_a_kink(loc, n):
    """Contract: on a density with a kink (-|z - 0.37| between grid points; -|z| on one) the
    log-evidence estimate bounds the actual error AND is within 100x of it (measured ratios 58, 4.5,
    9.9 and 12). Without the second half an estimate made 100x smaller (or 100x larger) would keep
    every other test green: on smooth densities the actual error is round-off."""
    case = _kink(loc)
    grid = _grid_of(case, n)
    err_z, _, _ = gc.actual_errors(grid, case)
    assert err_z > 1e-5  # a measurable error, not round-off
    assert err_z <= grid.log_evidence_error <= 100 * err_z, (err_z, grid.log_evidence_error)
