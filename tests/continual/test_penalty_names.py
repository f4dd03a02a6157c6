"""Naming a penalty (ewc_ref/continual/penalty_names.py): combination, anchor, estimator, gamma, lambda.

The penalties here are built with numpy from their formulas (the variants of continual/penalty.py);
the catalogue of published codes written in torch is tests/continual/test_penalty_catalogue.py. Each test
fails if one part of the name is wrong: the combination, the anchor, the estimator or B, gamma, or
the lambda factor (a factor 2 or P).
"""

from __future__ import annotations

import numpy as np
import pytest

import ewc_ref as er
from ewc_ref.continual.penalty_names import diagnose_penalty
from ewc_ref.verify.penalty_fit import probe_points, sample_penalty

LIK = er.Categorical()
LAM, GAMMA, N = 3.0, 0.7, 24


@pytest.fixture(scope="module")
def tasks():
    rng = np.random.default_rng(0)
    models = [er.MLP.random([4, 5, 3], "tanh", rng=t) for t in range(3)]
    data = [(rng.standard_normal((N, 4)), rng.integers(0, 3, N)) for _ in range(3)]
    return models, data


def _fishers(tasks, estimator, batch_size=None):
    models, data = tasks
    return [er.fisher(m, LIK, x, y, estimator=estimator, batch_size=batch_size).diagonal
            for m, (x, y) in zip(models, data, strict=True)]


def _quadratic(weights, anchor):
    return lambda t: (0.5 * float(np.sum(weights * (t - anchor) ** 2)), weights * (t - anchor))


def _samples(fn, models):
    return sample_penalty(fn, probe_points(models[-1].theta, 0.1))


CASES = [  # (kind, estimator, B, combination)
    ("separate", "exact", None, "separate"),
    ("accumulated", "empirical", None, "accumulated"),
    ("online", "batched", 5, "online"),
    ("online", "pred", None, "online"),
    ("l2", "exact", None, "l2"),
]


@pytest.mark.parametrize("kind, estimator, batch_size, combination", CASES)
def test_every_variant_of_penalty_py_is_named(tasks, kind, estimator, batch_size, combination):
    models, data = tasks
    omega = er.Penalty(lam=LAM, kind=kind, gamma=GAMMA)
    for m, f in zip(models, _fishers(tasks, estimator, batch_size), strict=True):
        omega.consolidate(m.theta, f)
    d = diagnose_penalty(models, LIK, data, _samples(omega.value_and_grad, models), lam=LAM, gamma=GAMMA)
    assert d.combination == combination, d.report()
    if kind != "l2":
        assert (d.curvature.estimator, d.curvature.batch_size) == (estimator, batch_size)
        assert [t.label for t in d.per_task] == [d.curvature.label.split(" / ")[0]] * 3  # diagnose per task agrees
    assert d.factor == pytest.approx(1.0, rel=1e-10) and d.factor_expression == "1"
    if kind == "online":
        assert d.curvature.gamma == pytest.approx(GAMMA, rel=1e-10) and "= your gamma" in d.gamma_words


def test_no_half_and_mean_over_parameters_are_named_by_their_factor(tasks):
    models, data = tasks
    fs = _fishers(tasks, "exact")
    p = models[0].n_params
    for scale, expression in ((2.0, "2"), (2.0 / p, "2/P")):
        weights = scale * LAM * fs[-1]  # lambda sum F d^2 (x 2) or lambda mean_i F_i d_i^2 (x 2/P)
        d = diagnose_penalty(models[-1:], LIK, data[-1:], _samples(_quadratic(weights, models[-1].theta), models),
                             lam=LAM)
        assert d.combination == "single task"
        assert d.factor == pytest.approx(scale, rel=1e-10) and d.factor_expression == expression, d.factor_words


def test_double_decay_and_wrong_anchor(tasks):
    models, data = tasks
    fs = _fishers(tasks, "empirical")
    weights = LAM * (fs[2] + GAMMA**2 * fs[1] + GAMMA**4 * fs[0])
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM, gamma=GAMMA)
    assert d.combination == "online, double decay" and d.curvature.gamma == pytest.approx(GAMMA**2, rel=1e-10)
    weights = LAM * (fs[0] + fs[1] + fs[2])
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[0].theta), models), lam=LAM)
    assert d.combination == "wrong anchor: task 1's optimum with sum curvature", d.report()
    assert d.anchor.task == 1


def test_a_fisher_at_other_weights_is_none_with_causes(tasks):
    models, data = tasks
    x, y = data[-1]
    elsewhere = models[-1].with_theta(models[-1].theta + 0.05)
    weights = LAM * er.fisher(elsewhere, LIK, x, y, estimator="exact").diagonal
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.combination == "none" and d.curvature is None
    # causes are computed: the closest fit and its rows with their errors, and diagnose's own verdict on W
    assert d.causes[0].startswith("no estimator and combination fit W within round-off: closest exact / ")
    assert "its rows: " in d.causes[0] and "latest only 0.04" in d.causes[0]
    assert any(c.startswith("diagnose of W against task 3's model: none") for c in d.causes)
    assert d.anchor is not None and d.anchor.task == 3  # the anchor is still named


def test_a_non_quadratic_penalty_is_none(tasks):
    models, data = tasks
    w = LAM * _fishers(tasks, "exact")[-1]
    a = models[-1].theta
    d = diagnose_penalty(models, LIK, data, lambda t: (float(np.sum(w * np.abs(t - a))), w * np.sign(t - a)))
    assert d.combination == "none" and d.fit.quadratic == "not quadratic" and "absolute value" in d.causes[0]


def test_two_points_name_the_penalty_but_not_its_quadraticity(tasks):
    models, data = tasks
    w = LAM * _fishers(tasks, "exact")[-1]
    points = probe_points(models[-1].theta, 0.1, directions=1)[1:]  # M = 2
    d = diagnose_penalty(models[-1:], LIK, data[-1:], sample_penalty(_quadratic(w, models[-1].theta), points), lam=LAM)
    assert d.fit.quadratic == "cannot tell" and d.combination == "single task"
    assert "cannot tell" in d.report()


def test_without_lambda_the_paper_lambda_is_reported(tasks):
    models, data = tasks
    w = LAM * _fishers(tasks, "exact")[-1]
    d = diagnose_penalty(models[-1:], LIK, data[-1:], _samples(_quadratic(w, models[-1].theta), models))
    assert d.lambda_paper == pytest.approx(LAM, rel=1e-10) and d.factor is None
    assert d.to_dict()["lambda_paper"] == pytest.approx(LAM, rel=1e-10)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lam=-1.0), "lam"), (dict(gamma=1.5), "gamma"), (dict(batch_sizes=[1]), "batch_sizes"),
])
def test_bad_arguments_are_named(tasks, kwargs, name):
    models, data = tasks
    w = _fishers(tasks, "exact")[-1]
    with pytest.raises(ValueError, match=f"^{name}:"):
        diagnose_penalty(models, LIK, data, _samples(_quadratic(w, models[-1].theta), models), **kwargs)


def test_models_and_data_must_match(tasks):
    models, data = tasks
    w = _fishers(tasks, "exact")[-1]
    theirs = _samples(_quadratic(w, models[-1].theta), models)
    with pytest.raises(ValueError, match="^data:"):
        diagnose_penalty(models, LIK, data[:2], theirs)
    with pytest.raises(ValueError, match=r"^models\[1\]:"):
        diagnose_penalty([models[0], er.MLP.random([4, 6, 3], "tanh", rng=0)], LIK, data[:2], theirs)
    with pytest.raises(ValueError, match="^theirs:"):
        diagnose_penalty(models, LIK, data, (theirs[0][:, :5], theirs[1], theirs[2][:, :5]))


def test_a_fisher_recomputed_at_theta_is_named_as_such(tasks):
    models, data = tasks
    x, y = data[-1]
    anchor = models[-1].theta

    def recomputed(t):
        f = er.fisher(models[-1].with_theta(t), LIK, x, y, estimator="empirical").diagonal
        return 0.5 * LAM * float(np.sum(f * (t - anchor) ** 2)), LAM * f * (t - anchor)

    d = diagnose_penalty(models, LIK, data, recomputed, lam=LAM)
    assert d.fit.quadratic == "not quadratic"
    assert d.combination == "not quadratic: the Fisher recomputed at the current weights"
    assert (d.curvature.estimator, d.curvature.row) == ("empirical", "at theta") and d.factor_expression == "1"


def test_sign_flipped_penalty_is_named_with_a_negative_factor(tasks):
    models, data = tasks
    weights = -LAM * _fishers(tasks, "exact")[-1]  # ERRATA E9: the penalty subtracted
    d = diagnose_penalty(models[-1:], LIK, data[-1:], _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.combination == "sign flipped (ERRATA E9): single task"
    assert d.factor == pytest.approx(-1.0, rel=1e-10) and "negative" in d.factor_words
    assert d.fit.negative == models[-1].n_params - int(np.sum(weights == 0))


def test_l2_around_the_latest_optimum_is_one_quadratic(tasks):
    models, data = tasks
    weights = LAM * np.ones(models[0].n_params)  # lambda/2 ||theta - theta*_3||^2: W = lambda, not T lambda
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.combination.startswith("l2 around theta*_3")
    assert d.curvature.row == "latest only" and d.factor == pytest.approx(1.0, rel=1e-10)


def test_two_tasks_online_says_gamma_is_only_a_ratio(tasks):
    models, data = tasks
    fs = _fishers(tasks, "exact")[:2]
    weights = LAM * (fs[1] + GAMMA * fs[0])
    d = diagnose_penalty(models[:2], LIK, data[:2], _samples(_quadratic(weights, models[1].theta), models[:2]), lam=LAM)
    assert d.combination == "online" and d.curvature.gamma == pytest.approx(GAMMA, rel=1e-10)
    assert "T = 2" in d.gamma_words


def test_a_sampled_fisher_of_one_task_is_a_statistical_verdict_with_its_band():
    rng = np.random.default_rng(0)
    model = er.MLP.random([4, 5, 3], "tanh", rng=0)
    x, y = rng.standard_normal((200, 4)), rng.integers(0, 3, 200)
    weights = 2 * LAM * er.fisher(model, LIK, x, y, estimator="mc", samples=1, rng=5).diagonal  # lambda sum F d^2
    d = diagnose_penalty([model], LIK, [(x, y)], _samples(_quadratic(weights, model.theta), [model]), lam=LAM)
    assert d.combination == "single task" and d.curvature.estimator == "mc" and d.curvature.scale_se > 0
    # fitted 2.04 +/- 0.077: "2" is the simplest factor inside the band, "1" is far outside it
    assert d.factor_expression == "2" and abs(d.factor - 2) <= 2 * d.curvature.scale_se / LAM
    assert "statistical" in d.report()


def _per_tensor(model, factors):
    """(P,): factors[k] on the coordinates of the model's k-th parameter tensor."""
    out = np.empty(model.n_params)
    for cut, factor in zip(model.param_slices, factors, strict=True):
        out[cut] = factor
    return out


def test_a_mean_per_parameter_tensor_is_named_with_its_factor_per_tensor(tasks):
    """lambda sum_tensors mean_{i in t} (sum_t F_t,i) d_i^2: W_i = 2 lambda F_i / P_t(i), no single factor
    (W / F varies by tensor: 20, 5, 15, 3 here), so the rows fail; W_i x P_t is accumulated with factor 2."""
    models, data = tasks
    sizes = _per_tensor(models[0], [c.stop - c.start for c in models[0].param_slices])
    weights = 2 * LAM * np.sum(_fishers(tasks, "empirical"), axis=0) / sizes
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert (d.combination, d.curvature.estimator, d.factor_expression) == ("accumulated", "empirical", "2/P_t"), d.report()
    assert d.factor == pytest.approx(2.0, rel=1e-10)
    assert d.per_tensor_mean == {"0.weight": 20, "0.bias": 5, "2.weight": 15, "2.bias": 3}
    assert "a mean per parameter tensor (factor 1/P_t per tensor" in d.factor_words
    assert "reduction   a mean per parameter tensor" in d.report() and d.to_dict()["per_tensor_mean"] == d.per_tensor_mean
    # diagnose per task on W x P_t agrees
    assert [t.label for t in d.per_task] == ["empirical"] * 3


def test_other_factors_per_tensor_are_not_taken_for_a_mean_per_tensor(tasks):
    """The same W with the tensors' factors 1/P_t shuffled: neither the rows nor W x P_t fit: 'none', said."""
    models, data = tasks
    shuffled = _per_tensor(models[0], [3, 20, 5, 15])
    weights = 2 * LAM * np.sum(_fishers(tasks, "empirical"), axis=0) / shuffled
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.combination == "none" and d.per_tensor_mean is None
    assert any(c.startswith("not a mean per parameter tensor either") for c in d.causes), d.causes


def test_conventions_that_coincide_are_named_as_indistinguishable():
    from ewc_ref.continual.penalty_report import name_factor

    expression, words = name_factor(1.0, n=32, p=51, gamma=0.5, rtol=1e-9)  # 2 gamma = 1 at gamma = 1/2
    assert expression == "1" and "equally 2*gamma" in words and "cannot be told apart" in words
    expression, words = name_factor(1.0, n=32, p=51, gamma=0.9, rtol=1e-9)
    assert expression == "1" and "equally" not in words
    assert name_factor(3.0, n=32, p=51, gamma=None, rtol=1e-9)[0] is None


def test_a_factor_off_by_a_float32_rounded_lambda_is_named_with_the_rounding_and_nothing_wider():
    """2 float32(0.4) / 0.4 = 2.0000000298 is 2 with lambda rounded to float32 (the exact ratio, within the
    same 1e-9); without lam, or 2 (1 + 1e-5), or 2 x the ratio x (1 + 1e-7), no convention is named."""
    from ewc_ref.continual.penalty_report import lambda_roundings, name_factor

    ratio = float(np.float32(0.4)) / 0.4
    assert ratio == pytest.approx(1 + 1.49e-8, abs=1e-10)
    expression, words = name_factor(2 * ratio, n=32, p=51, gamma=None, rtol=1e-9, lam=0.4)
    assert expression == "2" and words.startswith("2 (x 1.0000000149: lambda rounded to float32")
    assert name_factor(2 * ratio, n=32, p=51, gamma=None, rtol=1e-9)[0] is None  # the band itself is unchanged
    for factor in (2 * (1 + 1e-5), 2.00002, 2 * ratio * (1 + 1e-7)):
        assert name_factor(factor, n=32, p=51, gamma=None, rtol=1e-9, lam=0.4)[0] is None
    # your lambda read as float32(0.4) while their code multiplied by 0.4
    lam32 = float(np.float32(0.4))
    expression, words = name_factor(2 * 0.4 / lam32, n=32, p=51, gamma=None, rtol=1e-9, lam=lam32)
    assert expression == "2" and "is float32(0.4)" in words
    assert lambda_roundings(0.5) == [] and lambda_roundings(None) == []  # 0.5 is exact in float32: no hypothesis
    assert lambda_roundings(1e40) == []  # beyond float32: no rounding hypothesis (and no overflow warning)
    assert name_factor(2.0, n=32, p=51, gamma=None, rtol=1e-9, lam=0.4) == name_factor(2.0, n=32, p=51, gamma=None,
                                                                                           rtol=1e-9)


def test_equal_optima_make_separate_and_accumulated_the_same_and_say_so(tasks):
    models, data = tasks
    same = [models[-1]] * 3  # every task ended at the same weights
    fs = [er.fisher(models[-1], LIK, x, y, estimator="exact").diagonal for x, y in data]
    weights = LAM * np.sum(fs, axis=0)
    d = diagnose_penalty(same, LIK, data, _samples(_quadratic(weights, models[-1].theta), same), lam=LAM)
    assert d.combination == "accumulated"
    assert any("precision-weighted mean" in name for name in d.anchor_equivalent) and "same here" in d.report()


@pytest.mark.parametrize("kind", ["separate", "online"])
def test_the_entry_screen_finds_the_batch_size_the_full_fit_finds(tasks, monkeypatch, kind):
    import ewc_ref.continual.penalty_names as names

    models, data = tasks
    omega = er.Penalty(lam=LAM, kind=kind, gamma=GAMMA)
    for m, f in zip(models, _fishers(tasks, "batched", 5), strict=True):
        omega.consolidate(m.theta, f)
    theirs = _samples(omega.value_and_grad, models)
    monkeypatch.setattr(names, "BATCHED_LIMIT", 0.0)  # every B on all entries "too costly": screen on entries
    d = diagnose_penalty(models, LIK, data, theirs, lam=LAM, gamma=GAMMA)
    assert d.batch_screen is not None and d.batch_screen["confirmed"][0] == 5 and d.batch_screen["rel_error"] < 1e-12
    assert d.combination == kind and (d.curvature.estimator, d.curvature.batch_size) == ("batched", 5)
    # a penalty whose Fisher is no batched one: nothing confirmed, the closest B named as a cause with its error
    weights = LAM * _fishers(tasks, "exact")[-1] * (1 + 0.1 * np.arange(models[0].n_params) / models[0].n_params)
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.combination == "none" and d.batch_screen["confirmed"] == []
    assert any(c.startswith("batched: no B fits on the") for c in d.causes)


def test_a_head_left_out_of_the_penalty_is_named_and_the_rest_fitted(tasks):
    models, data = tasks
    fs = _fishers(tasks, "empirical")
    head = models[0].param_slices[2:]  # the last Linear layer's weight and bias: a new head, not penalised
    weights = LAM * np.sum(fs, axis=0)
    for cut in head:
        weights[cut] = 0.0
    d = diagnose_penalty(models, LIK, data, _samples(_quadratic(weights, models[-1].theta), models), lam=LAM)
    assert d.unpenalised == models[0].param_names[2:]
    assert d.combination == "accumulated" and d.curvature.estimator == "empirical" and d.factor_expression == "1"
    assert d.per_task == [] and "unpenalised" in d.report()
