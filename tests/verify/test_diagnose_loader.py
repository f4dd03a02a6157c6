"""Issue 28: the loader as the model of the minibatch candidates, and a recorded order makes them exact.

Every THEIRS here is a plain loop over a loader's batches of per-example gradients
(``support.problems.loader_fisher``, from ewc_ref.per_sample_gradients), written independently of
ewc_ref.verify and ewc_ref.curvature.batched.
"""

import json

import numpy as np
import pytest
from support.problems import loader_fisher, make_problem

import ewc_ref as er
from ewc_ref.cli import main
from ewc_ref.verify.diagnosis import diagnose
from ewc_ref.verify.loader import (
    batch_sizes_of,
    partition_fisher,
    partition_fisher_loop,
    screen_ordered,
)


def as_dict(result):
    """The JSON object of a result: ``to_dict()`` where results have it (format 1.1), else ``to_json()``."""
    return result.to_dict() if hasattr(result, "to_dict") else result.to_json()


PROBLEM = make_problem("categorical", n=300)
GRADS = er.per_sample_gradients(*PROBLEM)


# ------------------------------------------------------------------ the data file's loader keys
def test_save_data_writes_order_and_batches_and_load_loader_reads_them(tmp_path):
    x, y = np.ones((5, 2)), np.arange(5) % 2
    er.save_data(tmp_path / "d.npz", x, y, order=[4, 3, 2, 1], batches=[3, 1])
    loader = er.load_loader(tmp_path / "d.npz")
    np.testing.assert_array_equal(loader.order, [4, 3, 2, 1])
    np.testing.assert_array_equal(loader.batches, [3, 1])
    assert loader.order.dtype == np.int64 and loader.batches.dtype == np.int64
    x2, y2 = er.load_data(tmp_path / "d.npz")  # unchanged: (x, y)
    np.testing.assert_array_equal(x2, x)
    er.save_data(tmp_path / "plain.npz", x, y)
    plain = er.load_loader(tmp_path / "plain.npz")
    assert plain.order is None and plain.batches is None
    np.testing.assert_array_equal(plain.rows(5), np.arange(5))
    np.testing.assert_array_equal(loader.rows(5), [4, 3, 2, 1])
    assert set(np.load(tmp_path / "plain.npz").files) == {"x", "y"}


@pytest.mark.parametrize(("order", "batches", "message"), [
    ([0, 5], None, "order: expected row indices in [0, 5), got values in [0, 5]"),
    ([-1], None, "order: expected row indices"),
    ([0.5, 1.0], None, "order: expected a 1-d integer array, got dtype float64"),
    ([[0, 1]], None, "order: expected a 1-d"),
    (None, [2, 2], "batches: expected sizes summing to 5 (the rows yielded), got 4"),
    ([0, 1, 2], [2, 2], "batches: expected sizes summing to 3 (the rows yielded), got 4"),
    (None, [5, 0], "batches: expected batch sizes >= 1"),
])
def test_save_data_refuses_a_bad_loader_naming_the_key(tmp_path, order, batches, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        er.save_data(tmp_path / "d.npz", np.ones((5, 2)), np.zeros(5, int), order=order, batches=batches)
    assert not (tmp_path / "d.npz").exists()


def test_a_data_file_with_a_bad_loader_is_refused_by_every_reader(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((5, 2)), y=np.zeros(5, int), batches=np.array([2, 2]))
    for read in (er.load_loader, er.load_data):
        with pytest.raises(ValueError, match="key batches: expected sizes summing to 5"):
            read(path)
    np.savez(path, x=np.ones((5, 2)), y=np.zeros(5, int), order=np.array([9]))
    with pytest.raises(ValueError, match="key order: expected row indices in"):
        er.load_loader(path)
    np.savez(path, x=np.ones((5, 2)), y=np.zeros(5, int), other=np.array([9]))
    with pytest.raises(ValueError, match="unknown key"):
        er.load_data(path)


# ------------------------------------------------------------------ the matrices against the plain loop
@pytest.mark.parametrize("sizes", [[32] * 9 + [12], [32] * 9, [7, 7, 3, 50, 50, 1, 100, 82]])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_partition_fisher_equals_the_plain_loop(sizes, reduction):
    model, lik, x, y = PROBLEM
    order = np.random.default_rng(1).permutation(len(x))[:sum(sizes)]
    got = partition_fisher(model, lik, x[order], y[order], np.array(sizes), reduction)
    want, k = loader_fisher_sizes(GRADS[order], sizes, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-15 * np.abs(want).max())
    np.testing.assert_allclose(partition_fisher_loop(GRADS[order], sizes, reduction), want, rtol=1e-12)


def loader_fisher_sizes(G, sizes, reduction):
    F, start = np.zeros(G.shape[1]), 0
    for s in sizes:
        g = G[start:start + s].sum(axis=0) / (s if reduction == "mean" else 1)
        F += g * g
        start += s
    return F / len(sizes), len(sizes)


def test_screen_of_the_ordered_variants_fits_each_variant_exactly():
    """Every (B, variant) of the screen is the plain loop's matrix on the entries: c = 1, error ~ 0 at the true one."""
    for b, drop, red, variant in [(32, False, "mean", ""), (32, True, "mean", "dropped"), (32, False, "sum", "kept, sum"),
                                  (7, True, "mean", "dropped")]:
        theirs, _ = loader_fisher(GRADS, b, drop_last=drop, reduction=red)
        fit = screen_ordered(GRADS, theirs, [b])[(b, variant)]
        assert fit[0] == pytest.approx(1.0, rel=1e-10) and fit[1] <= 1e-10
        assert batch_sizes_of(300, b, variant).sum() == (300 - 300 % b if drop else 300)
    # every (B, variant) of the screen against the plain loop's matrix fitted by least squares
    theirs, _ = loader_fisher(GRADS, 32)
    screen = screen_ordered(GRADS, theirs, range(2, 301))
    for (b, variant), (c, err) in screen.items():
        f = partition_fisher_loop(GRADS, batch_sizes_of(300, b, variant), "sum" if variant == "kept, sum" else "mean")
        c_want = float(theirs @ f / (f @ f))
        assert c == pytest.approx(c_want, rel=1e-9), (b, variant)
        assert err == pytest.approx(np.linalg.norm(theirs - c_want * f) / np.linalg.norm(theirs), rel=1e-7, abs=1e-12)
    assert {v for _, v in screen} == {"", "dropped", "kept, sum"} and (300, "dropped") not in screen


# ------------------------------------------------------------------ verdicts
@pytest.mark.parametrize(("drop_last", "reduction", "variant"), [(True, "mean", "dropped"), (False, "sum", "kept, sum"),
                                                                  (False, "mean", "")])
@pytest.mark.parametrize(("aggregation", "factor"), [("mean", "1"), ("sum", "K")])
def test_an_ordered_loader_is_batched_with_its_variant_never_shuffled(drop_last, reduction, variant, aggregation, factor):
    """The issue's confident wrong verdict: an ORDERED drop_last loader was called 'shuffled'. Every
    ordered loader of N = 300, B = 32 (short last batch of 12) is found exactly, with its variant and K."""
    model, lik, x, y = PROBLEM
    theirs, sizes = loader_fisher(GRADS, 32, drop_last=drop_last, reduction=reduction, aggregation=aggregation)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    assert (result.estimator, result.batch_size, result.variant) == ("batched", 32, variant), result.report()
    assert result.rel_error <= 1e-10
    if reduction == "mean":  # a per-batch sum is B^2 on the full batches: its own matrix, scale c = 1 or K
        assert result.scale_factor == factor, result.scale_words
    assert as_dict(result)["drop_last"] is drop_last
    assert as_dict(result)["batch_reduction"] == reduction and as_dict(result)["labels"] == "observed"
    assert ("drop_last" in result.report()) is drop_last


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_a_recorded_order_makes_a_shuffled_loader_exact(drop_last, aggregation):
    """A shuffled loader (seeded permutation) with its order and batch sizes given: batched over exactly those
    batches, error ~ round-off, scale x 1 or x K; without them the same THEIRS is not batched."""
    model, lik, x, y = PROBLEM
    order = np.random.default_rng(5).permutation(len(x))
    theirs, sizes = loader_fisher(GRADS, 32, order=order, drop_last=drop_last, aggregation=aggregation)
    rows = order[:sizes.sum()]
    result = diagnose(model, lik, x, y, theirs, hessian=False, order=rows, batches=sizes)
    assert (result.estimator, result.batch_size, result.variant) == ("batched", 32, "recorded"), result.report()
    assert result.rel_error <= 1e-10 and result.scale_factor == ("1" if aggregation == "mean" else "K"), result.scale_words
    assert result.batch_sizes_screened is None
    # the order alone (batch sizes unknown): the screen over the rows in that order finds B and drop_last
    result = diagnose(model, lik, x, y, theirs, hessian=False, order=rows)
    # (drop_last leaves 9 x 32 rows in `rows`: no short last batch there, so the variant is '' either way)
    assert (result.estimator, result.batch_size, result.variant) == ("batched", 32, ""), result.report()
    assert result.rel_error <= 1e-10
    assert diagnose(model, lik, x, y, theirs, hessian=False).estimator != "batched"


def test_diagnose_refuses_a_bad_loader_naming_the_argument():
    model, lik, x, y = PROBLEM
    theirs, _ = loader_fisher(GRADS, 32)
    with pytest.raises(ValueError, match="batches: expected sizes summing to 300"):
        diagnose(model, lik, x, y, theirs, batches=[32, 32])
    with pytest.raises(ValueError, match="order: expected row indices in"):
        diagnose(model, lik, x, y, theirs, order=[300])
    with pytest.raises(ValueError, match="batch_sizes: give either"):
        diagnose(model, lik, x, y, theirs, batch_sizes=[32], batches=[300])


def test_cli_reads_the_loader_from_data(tmp_path, capsys):
    model, lik, x, y = PROBLEM
    order = np.random.default_rng(6).permutation(len(x))
    theirs, sizes = loader_fisher(GRADS, 32, order=order)
    er.save_model(tmp_path / "m.npz", model, lik)
    er.save_data(tmp_path / "d.npz", x, y, order=order, batches=sizes)
    np.savez(tmp_path / "t.npz", flat=theirs)
    assert main(["diagnose", str(tmp_path / "m.npz"), str(tmp_path / "d.npz"), str(tmp_path / "t.npz"), "--json",
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["estimator"], out["batch_size"], out["scale_factor"]) == ("batched", 32, "1")
    assert main(["diagnose", str(tmp_path / "m.npz"), str(tmp_path / "d.npz"), str(tmp_path / "t.npz"),
                 "--batch-sizes", "32", "--quiet"]) == 2
    assert "--batch-sizes: " in capsys.readouterr().err


# ------------------------------------------------------------------ the DataLoader on the digits
def shuffled_rates(digits, batch_size, other, drop_last, aggregation):
    """Over 20 seeded permutations: (named 'shuffled', named with batch_size in the 99% band, seeds whose
    verdict does NOT put `other` in a shuffled band -- a 'none' claims no B -- ), the reduction checked."""
    model, lik, x, y, G = digits
    named = covered = excluded = 0
    for seed in range(20):
        theirs, _ = loader_fisher(G, batch_size, order=np.random.default_rng(1000 + seed).permutation(len(x)),
                                  drop_last=drop_last, aggregation=aggregation)
        result = diagnose(model, lik, x, y, theirs, hessian=False)
        excluded += 1
        if result.estimator == "shuffled":
            named += 1
            low, high = result.shuffled.batch_size_interval
            covered += low <= batch_size <= high
            excluded -= low <= other <= high
            assert result.shuffled.reduction == ("averaged" if aggregation == "mean" else "summed")
    return named, covered, excluded


@pytest.mark.parametrize(("drop_last", "aggregation", "named", "covered"), [
    (False, "mean", 19, 19),  # the loader: short last batch of 5 rows, averaged
    (False, "sum", 19, 19),
    (True, "mean", 19, 19),  # 20/20 until a rival family within 3.3 log-units made one seed 'none' (open)
])
def test_shuffled_dataloader_on_the_digits_is_named_with_b_and_its_band(digits, drop_last, aggregation, named, covered):
    """DataLoader(batch_size=64, shuffle=True) over N = 1,797 (K = 29, a short last batch of 5 rows; or
    drop_last), CrossEntropyLoss(mean) per batch, squared and averaged or summed: 20 seeds. Measured:
    named 'shuffled' 19/20, 19/20, 19/20 with B = 64 inside the 99% band in 19/20, 19/20, 19/20 (the
    band of the heavy-row-cleaned b, shuffled._band; before it 18/20, 19/20, 20/20: draws whose 5-row
    batch held a misclassified example moved the plain b by x 2.3-2.6). The band still excludes B = 32
    in 19 of the 20 seeds (18 of the 19 named; the 20th is 'none')."""
    got_named, got_covered, excluded = shuffled_rates(digits, 64, 32, drop_last, aggregation)
    assert got_named >= named and got_covered >= covered, (got_named, got_covered)
    assert excluded >= 19, excluded


def test_the_band_of_a_b32_loader_on_the_digits_excludes_64(digits):
    """The band is not honest by being wide: a DataLoader(batch_size=32, shuffle=True) (K = 57, the same
    5-row short batch) puts 64 outside its band in 19 of 20 seeds (measured: named 17/20, B = 32 in
    the band in 17/20, 64 in it in 1 -- a 32-row band up to 138 through a B with a 3-row short batch).
    Seed 1002 was 'shuffled, B ~ 23 (22..41)' and is 'cannot tell' since sampled.py's tests are rivals: a
    sampled-label reading (B ~ 221, 28..1794) outscores it, -9.7 against -20.2 (an open answer, not a wrong one);
    seed 1017 is 'mc' (a confident wrong verdict before and after, the shuffled test failing there)."""
    named, covered, excluded = shuffled_rates(digits, 32, 64, False, "mean")
    assert named >= 17 and covered >= 17 and excluded >= 19, (named, covered, excluded)


# ------------------------------------------------------------------ progress (issue 28 item 6)
def test_diagnose_and_laplace_count_rows_on_stderr_labelled_by_the_command(tmp_path, capsys):
    """diagnose counts the rows of its one pass ('diagnose: N/N'), laplace the rows of its curvature
    ('laplace: exact diag: N/N'), not 'fisher'; --quiet silences both."""
    model, lik, x, y = PROBLEM
    theirs, _ = loader_fisher(GRADS, 32)
    er.save_model(tmp_path / "m.npz", model, lik)
    er.save_data(tmp_path / "d.npz", x, y)
    np.savez(tmp_path / "t.npz", flat=theirs)
    args = [str(tmp_path / "m.npz"), str(tmp_path / "d.npz")]
    assert main(["diagnose", *args, str(tmp_path / "t.npz")]) == 0
    err = capsys.readouterr().err
    assert "diagnose: 300/300 (100%)" in err and "fisher" not in err
    assert main(["laplace", *args, "--prior-precision", "1"]) == 0
    err = capsys.readouterr().err
    assert "laplace: exact diag: 300/300 (100%)" in err and "fisher" not in err
    assert main(["diagnose", *args, str(tmp_path / "t.npz"), "--quiet"]) == 0
    assert main(["laplace", *args, "--prior-precision", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ every loader combination (issue 28 item 9)
COMBO = make_problem("categorical", n=960)
COMBO_GRADS = er.per_sample_gradients(*COMBO)
# (B, drop_last, per-batch reduction, aggregation) -> (variant, scale_factor) of the ORDERED loader; N = 960:
# B = 32 leaves no short batch (a per-batch sum is then B^2 x the mean), B = 50 a short batch of 10 rows
ORDERED = {
    (32, False, "mean", "mean"): ("", "1"), (32, False, "mean", "sum"): ("", "K"),
    (32, False, "sum", "mean"): ("", "B^2"), (32, False, "sum", "sum"): ("", "B^2*K"),
    (50, False, "mean", "mean"): ("", "1"), (50, False, "mean", "sum"): ("", "K"),
    (50, False, "sum", "mean"): ("kept, sum", "1"), (50, False, "sum", "sum"): ("kept, sum", "K"),
    (50, True, "mean", "mean"): ("dropped", "1"), (50, True, "mean", "sum"): ("dropped", "K"),
    (50, True, "sum", "mean"): ("dropped", "B^2"), (50, True, "sum", "sum"): ("dropped", "B^2*K"),
    (50, False, "mean", "over N"): ("", "K/N"),
}


@pytest.mark.parametrize("combo", list(ORDERED), ids=lambda c: "-".join(map(str, c)))
def test_every_ordered_loader_combination_is_batched_exactly(combo):
    batch_size, drop_last, reduction, aggregation = combo
    model, lik, x, y = COMBO
    theirs, _ = loader_fisher(COMBO_GRADS, batch_size, drop_last=drop_last, reduction=reduction, aggregation=aggregation)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    assert (result.estimator, result.batch_size) == ("batched", batch_size), result.report()
    assert (result.variant, result.scale_factor) == ORDERED[combo], result.scale_words
    assert result.rel_error <= 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("combo", [c for c in ORDERED if c[3] != "over N"], ids=lambda c: "-".join(map(str, c)))
def test_every_shuffled_loader_combination_is_shuffled_with_b_in_its_band(combo, seed):
    """The same loaders shuffled (seeded permutations): 'shuffled' with the true B in its 99% band; the
    aggregation named (x 1 or x K) for per-batch means; drop_last never stated the wrong way round (it may
    be 'cannot tell', None). Measured: every combination and seed. Known limit: with per-batch SUMS the
    factor B^2 is evaluated at the implied B, so at N = 960 it may read as N (960 ~ 32^2)."""
    batch_size, drop_last, reduction, aggregation = combo
    model, lik, x, y = COMBO
    order = np.random.default_rng(seed).permutation(len(x))
    theirs, _ = loader_fisher(COMBO_GRADS, batch_size, order=order, drop_last=drop_last, reduction=reduction,
                              aggregation=aggregation)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    sh = result.shuffled
    assert result.estimator == "shuffled", result.report()
    assert sh.batch_size_interval[0] <= batch_size <= sh.batch_size_interval[1], sh.reason
    if reduction == "mean":
        assert result.scale_factor == ("1" if aggregation == "mean" else "K"), result.scale_words
    if len(x) % sh.batch_size:
        assert sh.drop_last is not (not drop_last), sh.reason


@pytest.mark.parametrize(("drop_last", "variant"), [(False, "pred"), (True, "pred, dropped")])
def test_an_ordered_loader_at_the_predicted_labels_is_batched_at_the_predicted_labels(drop_last, variant):
    """Published codes compute the loader Fisher at the model's predicted labels (argmax): found exactly,
    named so (plain loop over per-example gradients at argmax labels)."""
    model, lik, x, y = PROBLEM
    predicted = model.predict(x).argmax(axis=1)
    G = er.per_sample_gradients(model, lik, x, predicted)
    theirs, _ = loader_fisher(G, 32, drop_last=drop_last)
    result = diagnose(model, lik, x, y, theirs, hessian=False)
    assert (result.estimator, result.batch_size, result.variant) == ("batched", 32, variant), result.report()
    assert result.rel_error <= 1e-10 and result.scale_factor == "1"
    assert "at the predicted labels" in result.report() and as_dict(result)["labels"] == "predicted"
