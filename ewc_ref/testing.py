"""Plain assertions for other projects' test suites: is your curvature the one you think it is?

    from ewc_ref.testing import assert_curvature_close, assert_is_estimator

    def test_my_fisher(my_model_as_ewc_ref, x, y):
        theirs = my_library.fisher_diagonal(...)          # dict name -> array, or (P,) / (P, P)
        assert_is_estimator(theirs, model, lik, x, y, estimator="exact")

Both raise AssertionError with a diff that names the parameter and the worst entries, so a
failing test says where the matrices disagree, not only that they do. ``assert_fisher_is`` takes a
torch module and loader as they are (through ewc_ref.pytorch, imported only then) and fails with
diagnose's verdict: "THEIRS is batched, B = 64 x K, not exact x 1". ``check_gradients`` is
re-exported from ewc_ref.verify.gradcheck (relative error of the analytic gradient against central
differences).
"""

from __future__ import annotations

import numpy as np

from .curvature.estimate import fisher
from .curvature.result import Curvature, as_theirs
from .model.likelihoods import Likelihood
from .model.mlp import MLP
from .verify.gradcheck import check_gradients

__all__ = ["assert_curvature_close", "assert_fisher_is", "assert_is_estimator", "check_gradients"]


def _as_named(value, name: str, names: list | None = None):
    """(array, [(param name, slice, shape)], structure) for a Curvature, dict or array."""
    if isinstance(value, Curvature):
        if value.structure == "full":
            return np.asarray(value.data, np.float64), list(zip(value.param_names, value.param_slices, value.param_shapes, strict=True)), "full"
        flat = value.diagonal
        return np.asarray(flat, np.float64), list(zip(value.param_names, value.param_slices, value.param_shapes, strict=True)), "diag"
    if isinstance(value, dict):
        keys = [k for k in (names or list(value)) if not k.startswith("__")]
        missing = [k for k in keys if k not in value]
        if missing:
            raise AssertionError(f"{name}: missing parameters {missing}")
        if keys == ["full"]:
            return _as_named(np.asarray(value["full"]), name)
        layout, offset = [], 0
        for k in keys:
            size = int(np.size(value[k]))
            layout.append((k, slice(offset, offset + size), np.shape(value[k])))
            offset += size
        flat = np.concatenate([np.ravel(np.asarray(value[k], np.float64)) for k in keys]) if keys else np.zeros(0)
        return flat, layout, "diag"
    array = np.asarray(value, np.float64)
    if array.ndim == 2 and array.shape[0] == array.shape[1]:
        return array, [("theta", slice(0, array.shape[0]), (array.shape[0],))], "full"
    array = np.ravel(array)
    return array, [("theta", slice(0, array.size), array.shape)], "diag"


def _locate(layout, flat_index: int) -> str:
    for pname, s, shape in layout:
        if s.start <= flat_index < s.stop:
            local = np.unravel_index(flat_index - s.start, shape) if len(shape) else ()
            return f"{pname}[{', '.join(map(str, local))}]"
    return f"[{flat_index}]"


def assert_curvature_close(actual, desired, rtol: float = 1e-7, atol: float = 0.0, worst: int = 5) -> None:
    """Assert |actual - desired| <= atol + rtol |desired| entrywise, like np.testing.assert_allclose.

    Parameters
    ----------
    actual, desired : Curvature (diag or full), dict {parameter name: array} or arrays (P,) /
        (P, P); a dict is compared key by key in the other argument's order.
    rtol, atol : relative and absolute tolerance
    worst : how many of the worst entries the message lists

    Raises
    ------
    AssertionError with the number of mismatching entries, the maximum absolute and relative
    differences, the `worst` entries named like ``"0.weight[3, 1]"`` (or a pair of them for a
    full matrix) and the mismatches per parameter.
    """
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol, atol: expected non-negative numbers, got rtol={rtol}, atol={atol}")
    names = None
    for value in (desired, actual):
        if isinstance(value, Curvature):
            names = list(value.param_names)
        elif isinstance(value, dict) and names is None:
            names = [k for k in value if not k.startswith("__")]
    a, layout_a, struct_a = _as_named(actual, "actual", names)
    d, layout_d, struct_d = _as_named(desired, "desired", names)
    layout = layout_d if layout_d[0][0] != "theta" else layout_a
    if a.shape != d.shape:
        raise AssertionError(f"curvatures differ in shape: actual {struct_a} {a.shape}, desired {struct_d} {d.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(d))):
        bad = "actual" if not np.all(np.isfinite(a)) else "desired"
        raise AssertionError(f"{bad} contains non-finite values")
    diff = np.abs(a - d)
    allowed = atol + rtol * np.abs(d)
    bad = diff > allowed
    if not bad.any():
        return
    rel = diff / np.where(d != 0, np.abs(d), np.inf)
    excess = np.where(bad, diff / np.maximum(allowed, np.finfo(float).tiny), 0.0)
    order = np.argsort(excess, axis=None)[::-1][: min(worst, int(bad.sum()))]
    lines = [f"curvatures not close (rtol={rtol:g}, atol={atol:g}): {int(bad.sum())} of {bad.size} entries differ; "
             f"max |diff| = {diff.max():.6g}, max relative diff = {np.max(np.where(np.isfinite(rel), rel, 0)):.6g}",
             "worst entries:"]
    for flat in order:
        if a.ndim == 2:
            i, j = np.unravel_index(flat, a.shape)
            where = f"({_locate(layout, i)}, {_locate(layout, j)})"
        else:
            where = _locate(layout, int(flat))
        lines.append(f"  {where}: actual {a.flat[flat]:.9g}, desired {d.flat[flat]:.9g}, |diff| {diff.flat[flat]:.3g} "
                     f"(rel {rel.flat[flat]:.3g})")
    per_param = []
    for pname, s, _shape in layout:
        block = bad[s] if a.ndim == 1 else bad[s, :]
        if block.any():
            per_param.append(f"{pname}: {int(block.sum())} of {block.size}")
    lines.append("mismatches per parameter" + (" (rows)" if a.ndim == 2 else "") + ": " + "; ".join(per_param))
    ratio = float(a.ravel() @ d.ravel()) / max(float(d.ravel() @ d.ravel()), np.finfo(float).tiny)
    if ratio > 0 and np.allclose(a, ratio * d, rtol=rtol, atol=atol) and abs(ratio - 1) > rtol:
        lines.append(f"hint: actual = {ratio:.12g} x desired within tolerance (a scale factor, see ewc_ref.verify.diagnosis)")
    raise AssertionError("\n".join(lines))


def assert_is_estimator(theirs, model: MLP, lik: Likelihood, x, y, estimator: str = "exact", scale: float = 1.0,
                        rtol: float | None = None, atol: float = 0.0, batch_size: int | None = None,
                        samples: int | None = None) -> None:
    """Assert that THEIRS == scale * F_estimator on (model, x, y).

    Deterministic estimators (empirical, exact, pred, ggn, batched with `batch_size`, hessian)
    are compared entrywise by ``assert_curvature_close`` with `rtol` (default 1e-7: far above
    float64 round-off, below any real difference; pass ~1e-4 for float32 code). ``mc`` cannot
    be compared entrywise: THEIRS is accepted when ewc_ref.verify.diagnosis's statistical test finds it
    consistent with mc sampling noise at some S (and, with `samples`, the implied S is within
    a factor 2 of it), and the fitted scale matches `scale` within 4 Monte Carlo standard errors.

    THEIRS is a Curvature, a dict {parameter name: array} (diag) or {'full': (P, P)}, or an
    array (P,) / (P, P); its structure decides the structure compared.
    """
    from .verify.diagnosis import diagnose

    structure, t = as_theirs(theirs, model)
    if estimator == "mc":
        result = diagnose(model, lik, x, y, t, batch_sizes=[], hessian=False)
        mc = result.mc
        if mc is None:
            raise AssertionError("THEIRS equals the exact Fisher within round-off: an mc estimate with S -> infinity, "
                                 "not distinguishable from exact")
        if not mc.accepted:
            raise AssertionError(f"THEIRS is not an mc estimate of the Fisher: {mc.reason}")
        fitted = next(c for c in result.candidates if c.estimator == "mc").scale
        if abs(fitted - scale) > 4 * mc.scale_se + 1e-12 * abs(scale):
            raise AssertionError(f"THEIRS looks like mc with S ~ {mc.implied_samples:.3g} but at scale {fitted:.6g}, "
                                 f"expected {scale:g} (Monte Carlo standard error {mc.scale_se:.2g})")
        if samples is not None and not samples / 2 <= mc.implied_samples <= 2 * samples:
            raise AssertionError(f"THEIRS looks like mc with S ~ {mc.implied_samples:.3g} samples per example, expected S = {samples}")
        return
    kwargs = {"batch_size": batch_size} if estimator == "batched" else {}
    ours = fisher(model, lik, x, y, estimator=estimator, structure=structure, **kwargs)
    desired = ours.data * scale
    if structure == "diag":
        desired = Curvature("diag", estimator, ours.param_names, ours.param_shapes, desired, ours.layer_has_bias)
        actual = Curvature("diag", "theirs", ours.param_names, ours.param_shapes, t, ours.layer_has_bias)
    else:
        desired = Curvature("full", estimator, ours.param_names, ours.param_shapes, desired, ours.layer_has_bias)
        actual = Curvature("full", "theirs", ours.param_names, ours.param_shapes, t, ours.layer_has_bias)
    try:
        assert_curvature_close(actual, desired, rtol=1e-7 if rtol is None else rtol, atol=atol)
    except AssertionError as error:
        label = estimator + (f" (B = {batch_size})" if batch_size else "")
        raise AssertionError(f"THEIRS != {scale:g} x F_{label}:\n{error}") from None


def _expected(estimator: str, batch_size: int | None, scale: float) -> str:
    return f"{estimator}{f', B = {batch_size}' if batch_size else ''} x {scale:g}"


def _verdict(result) -> str:
    """'batched, B = 64 x K' / 'mc, S = 3 x 1' / 'none (closest: exact, relative error 0.3)': what THEIRS is."""
    if result.estimator == "none":
        closest = result.closest
        return f"none of the estimators (closest: {closest.label}, relative error {closest.rel_error:.3g})"
    factor = result.scale_factor or f"{result.scale:.6g}"
    return f"{result.winner.label if result.winner is not None else result.estimator} x {factor}"


def _verdict_is(result, estimator: str, batch_size: int | None, scale: float, rtol: float | None) -> bool:
    """Diagnose's verdict is `estimator` (with `batch_size`) at `scale` within rtol (default 1e-7)."""
    if result.estimator != estimator or (batch_size is not None and result.batch_size != batch_size):
        return False
    if estimator == "mc":
        return False  # assert_is_estimator already judged mc statistically
    return abs(result.scale - scale) <= (1e-7 if rtol is None else rtol) * abs(scale)


def assert_fisher_is(theirs, module, data, estimator: str = "exact", batch_size: int | None = None,
                     samples: int | None = None, rtol: float | None = None, *, likelihood=None,
                     scale: float = 1.0, seed: int = 0) -> None:
    """Assert THEIRS == scale x F_estimator on `module` and `data`; else fail with diagnose's verdict.

    THEIRS passes when it equals scale x F entrywise within `rtol` (``assert_is_estimator``), or
    when diagnose's verdict is `estimator` (and `batch_size`) with a scale within `rtol` of `scale`:
    a normwise fit within diagnose's round-off threshold (1e-8 float64, 1e-4 float32), which
    tolerates the float32 round-off of entries far below the largest that an entrywise check does not.

    For a pytest suite of someone's EWC code::

        loader = Recorder(DataLoader(dataset, batch_size=64, shuffle=True))
        fisher = their_ewc_fisher(net, loader)
        assert_fisher_is(fisher, net, loader, estimator="batched", likelihood=nn.CrossEntropyLoss())

    Parameters
    ----------
    theirs : their curvature: for a torch module anything ``ewc_ref.pytorch.diagnose`` takes (a dict of
        tensors by name, a list in parameters() order, Avalanche/nngeometry-style objects, a flat
        tensor); for an MLP what ``assert_is_estimator`` takes
    module : a torch.nn.Module (converted by ewc_ref.pytorch, imported only for it) or an ewc_ref MLP
    data : for a torch module (x, y), a Recorder their loop iterated or a loader; for an MLP (x, y)
    estimator, batch_size, samples, rtol, scale : as ``assert_is_estimator``; 'batched' without
        batch_size takes B from a Recorder whose batches are all B rows but the last
    likelihood : a name, an ewc_ref Likelihood or (torch module) the torch loss; required
    seed : seed of diagnose's statistical tests (mc, and the message of a failure)

    Raises
    ------
    AssertionError "THEIRS is <what diagnose finds>, not <expected>" with diagnose's report and the
    entrywise differences; TypeError / ValueError for bad arguments (as the bridge and er.diagnose).
    """
    from .verify.diagnosis import diagnose

    if likelihood is None:
        raise TypeError("likelihood: required (a name, an ewc_ref Likelihood or the torch loss)")
    options = {}
    if isinstance(module, MLP):
        from .model.likelihoods import get_likelihood

        lik = likelihood if isinstance(likelihood, Likelihood) else get_likelihood(likelihood)
        if not (isinstance(data, tuple) and len(data) == 2):
            raise TypeError(f"data: with an ewc_ref MLP, expected (x, y), got {type(data).__name__}")
        model, (x, y), their, batches = module, data, theirs, None
    else:  # a torch module: the bridge is the only importer of torch, loaded only now
        from .pytorch import diagnose_options, reference_inputs, uniform_batch_size

        model, lik, rows, their = reference_inputs(module, theirs, data, likelihood)
        x, y, batches = rows.x, rows.y, rows.batches
        options = diagnose_options(rows, {})
        if estimator == "batched" and batch_size is None and batches is not None:
            batch_size = uniform_batch_size(batches)
    try:
        assert_is_estimator(their, model, lik, x, y, estimator, scale, rtol, batch_size=batch_size, samples=samples)
    except AssertionError as mismatch:
        result = diagnose(model, lik, x, y, their, rng=seed, **options)
        if _verdict_is(result, estimator, batch_size, scale, rtol):
            return  # entrywise too strict (float32 round-off on tiny entries), normwise within round-off
        raise AssertionError(f"THEIRS is {_verdict(result)}, not {_expected(estimator, batch_size, scale)}\n\n"
                             f"{result.report()}\n\nentrywise against {_expected(estimator, batch_size, scale)}:\n"
                             f"{mismatch}") from None
