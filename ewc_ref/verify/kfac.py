"""KFAC THEIRS: which KFAC did they compute, at which scale (``diagnose``), and do two KFACs agree.

THEIRS is a kfac Curvature in either bias convention (docs/file-format.md section 7). Libraries
split the scale between the two factors differently (nngeometry's PMatKFAC: A = 3 A_ewc,
G = G_ewc / 3), so only the products G (x) A are compared, never the factors. Each layer is one
Kronecker block (separate bias: two, the weight block G (x) A and the bias block bias_G (x) [1]).
With the least-squares projections of THEIRS' factors on ours, a = <A_t, A_o> / |A_o|^2,
dA = A_t - a A_o, and g, dG likewise,

    G_t (x) A_t = a g (G_o (x) A_o) + g G_o (x) dA + a dG (x) A_o + dG (x) dA                  (K1)

where the four terms are mutually orthogonal in the Frobenius inner product, because
<X (x) Y, U (x) V> = <X, U> <Y, V> and <A_o, dA> = <G_o, dG> = 0. For THEIRS T = sum_b T_b and
our F = sum_b F_b over the blocks b, with s_b = a_b g_b, the fit (D1) of diagnosis.py becomes

    c = sum_b s_b |F_b|^2 / sum_b |F_b|^2
    |T - c F|^2 = sum_b (s_b - c)^2 |F_b|^2 + g_b^2 |G_o|^2 |dA|^2 + a_b^2 |dG|^2 |A_o|^2 + |dG|^2 |dA|^2     (K2)

(|F_b| = |G_o| |A_o|): every term is a product of norms of directly computed differences, so the
relative residual is accurate to round-off (no cancellation of |T|^2 - c^2 |F|^2), and no Kronecker
product is formed (784-256-256-10 would need a 200960^2 block). ``kfac_fit`` is (K2); its naive
twin is ``fit_scale`` on the dense ``to_dense()`` matrices (tests/verify/test_diagnose_kfac.py).

The candidates are our KFAC of every estimator kfac is defined for (exact = ggn, empirical, pred),
in THEIRS' convention, and mc, judged statistically on the G factors: A does not depend on the
labels, so an mc KFAC has A_t = a A_o exactly and a G_t whose entries a G_t[i, j] are a one-sample
(or S-sample) estimate of c G_o[i, j]. G_o[i, j] = 1/N sum_n E_y[delta_i delta_j] with
delta = J_z^T e (J_z = d f / d z_l, e = d l / d f), so the exact moments of statistics.py apply with
the columns of J_z in place of those of J (``g_entry_moments``), and ``statistics.judge_mc`` decides.
"""

from __future__ import annotations

import math

import numpy as np

from ..curvature.estimate import fisher_unchecked
from ..curvature.estimators import ESTIMATOR_TABLE
from ..curvature.result import Curvature
from ..curvature.structures import kfac_bias_from_keys
from ..model.likelihoods import Likelihood
from ..model.mlp import MLP
from .results import Candidate, Diagnosis, MCTest
from .scale import match_scale, scale_factors
from .statistics import MC_BOOTSTRAP, MC_ENTRIES, judge_mc, moments_per_example

#: The kfac candidates of diagnose (rows of the estimator table that kfac is defined for; ggn = exact).
KFAC_CANDIDATES = tuple(name for name, row in ESTIMATOR_TABLE.items() if row.diagnose == "fit" and "kfac" in row.structures)


def kronecker_blocks(curvature: Curvature) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(A_b, G_b)] float64, one per Kronecker block: per layer (A, G), plus ([[1]], bias_G) for a separate bias."""
    blocks = []
    for factors in curvature.data:
        A, G = np.asarray(factors[0], dtype=np.float64), np.asarray(factors[1], dtype=np.float64)
        blocks.append((A, G))
        if len(factors) == 3 and factors[2] is not None:
            blocks.append((np.ones((1, 1)), np.asarray(factors[2], dtype=np.float64)))
    return blocks


def _project(t: np.ndarray, o: np.ndarray) -> tuple[float, float]:
    """(a, |t - a o|) with a = <t, o> / |o|^2 the least-squares coefficient (a = 0 for o = 0)."""
    oo = float(np.vdot(o, o))
    a = float(np.vdot(t, o)) / oo if oo > 0 else 0.0
    return a, float(np.linalg.norm(t - a * o))


def kfac_fit(theirs: list, ours: list) -> tuple[float, float, list[float]]:
    """Least-squares c with sum_b G_t (x) A_t ~= c sum_b G_o (x) A_o, the relative residual, (K2).

    Parameters
    ----------
    theirs, ours : ``kronecker_blocks`` of two curvatures of the same model and convention

    Returns
    -------
    c, rel_error = |T - c F| / |T|, and a_b per block (the scale of THEIRS' A relative to ours)
    """
    weights, products, residual2, a_scales = [], [], 0.0, []
    for (A_t, G_t), (A_o, G_o) in zip(theirs, ours, strict=True):
        a, dA = _project(A_t, A_o)
        g, dG = _project(G_t, G_o)
        norm_A, norm_G = float(np.linalg.norm(A_o)), float(np.linalg.norm(G_o))
        weights.append((norm_A * norm_G) ** 2)
        products.append(a * g)
        residual2 += (g * norm_G * dA) ** 2 + (a * dG * norm_A) ** 2 + (dG * dA) ** 2
        a_scales.append(a)
    total = sum(weights)
    theirs2 = sum(float(np.linalg.norm(A)) ** 2 * float(np.linalg.norm(G)) ** 2 for A, G in theirs)
    if total == 0.0 or theirs2 == 0.0:
        return 0.0, 1.0, a_scales
    c = sum(w * s for w, s in zip(weights, products, strict=True)) / total
    residual2 += sum(w * (s - c) ** 2 for w, s in zip(weights, products, strict=True))
    return c, math.sqrt(residual2 / theirs2), a_scales


# --------------------------------------------------------------------------- mc on the G factors
def sample_g_entries(model: MLP, rng: np.random.Generator, limit: int = MC_ENTRIES):
    """Index pairs (i, j), i <= j, into the concatenated pre-activation units, within one layer:
    every diagonal entry of every G up to limit / 2, then random off-diagonal pairs of the same layer."""
    widths = [out for out, _ in model.shapes]
    starts = np.cumsum([0, *widths[:-1]])
    total = sum(widths)
    n_diag = min(total, limit // 2)
    d = np.arange(total) if n_diag == total else np.sort(rng.choice(total, n_diag, replace=False))
    pairs = [(s + i, s + j) for s, w in zip(starts, widths, strict=True) for i in range(w) for j in range(i + 1, w)]
    n_off = min(limit - n_diag, len(pairs))
    chosen = [pairs[k] for k in np.sort(rng.choice(len(pairs), n_off, replace=False))] if n_off else []
    i = np.concatenate([d, np.array([p[0] for p in chosen], dtype=int)])
    j = np.concatenate([d, np.array([p[1] for p in chosen], dtype=int)])
    return i, j


def g_entry_moments(model: MLP, lik: Likelihood, x, i_index, j_index, bootstrap: int = 0, rng=None, chunk: int = 256):
    """Exact mean and one-sample covariance of the G entries (i_e, j_e), as statistics.entry_moments
    with the output Jacobian of the pre-activations, J_z : (C, sum out_l), in place of J.

    Returns mean : (M,) = G_exact entries, cov : (M, M), draws : (bootstrap, M) one-sample estimates.
    """
    rng = np.random.default_rng(rng)
    i_index, j_index = np.asarray(i_index), np.asarray(j_index)
    cols, inverse = np.unique(np.concatenate([i_index, j_index]), return_inverse=True)
    ii, jj = inverse[: len(i_index)], inverse[len(i_index):]
    n, c, m = x.shape[0], model.n_outputs, len(i_index)
    mean, cov, draws = np.zeros(m), np.zeros((m, m)), np.zeros((bootstrap, m))
    model64 = model.with_theta(model.theta.astype(np.float64))
    unit = np.eye(c)
    for start in range(0, n, chunk):
        xc = x[start:start + chunk].astype(np.float64)
        f, cache = model64.forward(xc)
        deltas = model64.backward_deltas(cache, np.broadcast_to(unit[:, None, :], (c, xc.shape[0], c)))
        Jz = np.moveaxis(np.concatenate(deltas, axis=-1)[:, :, cols], 0, 1)  # (n, C, |cols|)
        e, v = moments_per_example(lik, f, Jz, ii, jj)
        mean += e.sum(axis=0)
        cov += v
        if bootstrap:
            labels = lik.sample(f, rng, bootstrap)
            for k in range(bootstrap):
                d = np.einsum("nca,nc->na", Jz, lik.grad(f, labels[:, k]))
                draws[k] += np.einsum("ne,ne->e", d[:, ii], d[:, jj])
    return mean / n, cov / n**2, draws / n


def _judge_kfac_mc(model, lik, x, theirs: Curvature, exact: Candidate, a_scales, tol, rng) -> MCTest:
    """mc for a KFAC THEIRS: A must be ours up to scale; the G entries a_l G_t are judged by judge_mc."""
    i_idx, j_idx = sample_g_entries(model, rng)
    widths = [out for out, _ in model.shapes]
    layer_of = np.repeat(np.arange(len(widths)), widths)
    starts = np.cumsum([0, *widths[:-1]])
    # per layer, the block index of its weight block in kronecker_blocks (a separate bias adds one block)
    block_of_layer, b = [], 0
    for factors in theirs.data:
        block_of_layer.append(b)
        b += 2 if len(factors) == 3 and factors[2] is not None else 1
    theirs_entries = np.array([
        a_scales[block_of_layer[l]] * float(theirs.data[l][1][i - starts[l], j - starts[l]])
        for i, j, l in zip(i_idx, j_idx, layer_of[i_idx], strict=True)])
    exact_entries, cov, draws = g_entry_moments(model, lik, x, i_idx, j_idx, bootstrap=MC_BOOTSTRAP, rng=rng)
    roundoff = tol * float(np.linalg.norm(theirs_entries)) / math.sqrt(len(theirs_entries))
    return judge_mc(theirs_entries, exact.scale, exact_entries, cov, roundoff, draws)


# --------------------------------------------------------------------------- diagnose
def diagnose_kfac(model: MLP, lik: Likelihood, x, y, theirs: Curvature, precision: str, tol: float,
                  rng: np.random.Generator, log) -> Diagnosis:
    """``diagnose`` for a kfac THEIRS (module docstring); x, y, theirs and tol already validated."""
    n, p, bias = x.shape[0], model.n_params, theirs.kfac_bias
    theirs_blocks = kronecker_blocks(theirs)
    ours, candidates = {}, []
    for name in KFAC_CANDIDATES:
        log.stage(f"computing {name} (kfac, {bias} bias)")
        ours[name] = kronecker_blocks(fisher_unchecked(model, lik, x, y, estimator=name, structure="kfac", kfac_bias=bias))
        c, rel, a_scales = kfac_fit(theirs_blocks, ours[name])
        candidates.append(Candidate(name, c, rel, fits=rel <= tol, note=ESTIMATOR_TABLE[name].diagnose_note))
    exact = next(c for c in candidates if c.estimator == "exact")
    a_scales = kfac_fit(theirs_blocks, ours["exact"])[2]
    mc_test = None
    if exact.fits:
        candidates.append(Candidate("mc", exact.scale, exact.rel_error, fits=False,
                                    note="not judged: exact fits within round-off (mc with S -> infinity)"))
    else:
        a_fit = max(_project(A_t, A_o)[1] / max(float(np.linalg.norm(A_t)), 1e-300)
                    for (A_t, _), (A_o, _) in zip(theirs_blocks, ours["exact"], strict=True))
        if a_fit > tol:
            mc_test = MCTest(False, f"the input factors A differ from ours (relative {a_fit:.3g}); mc samples only labels, "
                                    "which A does not depend on")
        else:
            log.stage("judging mc on the G factors against the exact per-example label distributions")
            mc_test = _judge_kfac_mc(model, lik, x, theirs, exact, a_scales, tol, rng)
        candidates.append(Candidate("mc", exact.scale, exact.rel_error, samples=mc_test.samples,
                                    fits=mc_test.accepted, note=mc_test.reason))
    candidates.sort(key=lambda c: (c.rel_error, ESTIMATOR_TABLE[c.estimator].diagnose_rank))
    deterministic = [c for c in candidates if c.fits and c.estimator != "mc"]
    common = dict(n=n, n_params=p, structure="kfac", precision=precision, tol=tol, mc=mc_test, kfac_bias=bias)
    factors = scale_factors(n, None, model.n_outputs, lik.name, float(getattr(lik, "sigma", 1.0)))
    if deterministic:
        winner = deterministic[0]
    elif mc_test is not None and mc_test.accepted:
        winner = next(c for c in candidates if c.estimator == "mc")
    else:
        best = candidates[0]
        _, words = match_scale(best.scale, factors, rtol=10 * best.rel_error)
        return Diagnosis("none", best.scale, best.rel_error, None, None, candidates, closest=best,
                         scale_words=words, **common)
    reference = ours["exact" if winner.estimator == "mc" else winner.estimator]
    equivalent, others = [], []
    for c in candidates:
        if c is winner or (c.estimator == "mc" and mc_test is None):
            continue
        if winner.estimator == "mc" and c.estimator == "exact":
            continue  # the same residual as mc: the runner-up is the best other estimator
        same = c.estimator != "mc" and c.fits and kfac_fit(reference, ours[c.estimator])[1] <= tol
        (equivalent if same else others).append(c)
    runner_up = others[0] if others else None
    margin = runner_up.rel_error / max(winner.rel_error, np.finfo(float).eps) if runner_up is not None else math.inf
    if winner.estimator == "mc":
        # A statistical verdict: the simplest factor inside its 2-standard-error band (x 1 first).
        factor, words = match_scale(winner.scale, factors, rtol=2 * mc_test.scale_se / max(abs(winner.scale), 1e-300),
                                    simplest_first=True)
        words += f" (+/- {mc_test.scale_se:.2g}, the Monte Carlo standard error)"
    else:
        factor, words = match_scale(winner.scale, factors, rtol=max(10 * winner.rel_error, 1e-9))
    return Diagnosis(winner.estimator, winner.scale, winner.rel_error, None,
                     winner.samples if winner.estimator == "mc" else None, candidates, scale_words=words,
                     scale_factor=None if factor is None else factor.expression,
                     runner_up=runner_up, margin=margin, equivalent=equivalent, **common)


# --------------------------------------------------------------------------- compare
def kfac_file_blocks(body: dict, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{block name: (A, G)} of a kfac npz body without a model: 'kfac.<m>' per module and
    'kfac.<m>.bias' (A = [[1]], G = bias_G) for each separate bias block; ValueError names the key."""
    blocks = {}
    for key in sorted(body):
        if not key.startswith("kfac.") or key.count(".") < 2:
            raise ValueError(f"{source}: key {key!r} is not a kfac key ('kfac.<module>.A', '.G' or '.bias_G')")
        module, part = key[len("kfac."):].rsplit(".", 1)
        if part not in ("A", "G", "bias_G"):
            raise ValueError(f"{source}: key {key!r} is not a kfac key ('kfac.<module>.A', '.G' or '.bias_G')")
    for module in sorted({key[len("kfac."):].rsplit(".", 1)[0] for key in body}):
        A, G = body.get(f"kfac.{module}.A"), body.get(f"kfac.{module}.G")
        if A is None or G is None or A.ndim != 2 or G.ndim != 2:
            raise ValueError(f"{source}: module {module!r} needs square keys 'kfac.{module}.A' and 'kfac.{module}.G'")
        blocks[f"kfac.{module}"] = (A.astype(np.float64), G.astype(np.float64))
        if f"kfac.{module}.bias_G" in body:
            blocks[f"kfac.{module}.bias"] = (np.ones((1, 1)), body[f"kfac.{module}.bias_G"].astype(np.float64))
    return blocks


def compare_kfac(meta_a: dict, a: dict, meta_b: dict, b: dict, rtol: float, atol: float | None,
                 name_a: str = "A", name_b: str = "B") -> dict:
    """Two kfac files block by block on their PRODUCTS: block b matches when
    |G_a (x) A_a - G_b (x) A_b|_F <= atol + rtol |G_b (x) A_b|_F (B the reference), by (K1) with c = 1:

        |T - F|^2 = (a g - 1)^2 |F|^2 + g^2 |G_b|^2 |dA|^2 + a^2 |dG|^2 |A_b|^2 + |dG|^2 |dA|^2

    The JSON object of ``compare --json`` with "products": true, one key per Kronecker block
    (max_abs_error = the Frobenius norm of the difference, max_rel_error = that over |F|_F).
    """
    bias_a, bias_b = (str(m.get("__kfac_bias__", kfac_bias_from_keys(body))) for m, body in ((meta_a, a), (meta_b, b)))
    if bias_a != bias_b:
        raise ValueError(f"__kfac_bias__: {name_a} is {bias_a!r} but {name_b} is {bias_b!r}; the conventions differ in "
                         "the weight-bias cross terms, so their products cannot be compared")
    blocks_a, blocks_b = kfac_file_blocks(a, name_a), kfac_file_blocks(b, name_b)
    if set(blocks_a) != set(blocks_b):
        raise ValueError(f"kfac blocks differ: only in {name_a}: {sorted(set(blocks_a) - set(blocks_b))}, "
                         f"only in {name_b}: {sorted(set(blocks_b) - set(blocks_a))}")
    norms = {k: float(np.linalg.norm(A)) * float(np.linalg.norm(G)) for k, (A, G) in blocks_b.items()}
    atol = 1e-12 * max(norms.values(), default=0.0) if atol is None else atol
    keys = {}
    for key, (A_o, G_o) in blocks_b.items():
        A_t, G_t = blocks_a[key]
        if A_t.shape != A_o.shape or G_t.shape != G_o.shape:
            raise ValueError(f"{key}: factor shapes {A_t.shape}, {G_t.shape} in {name_a} but {A_o.shape}, {G_o.shape} in {name_b}")
        a_coef, dA = _project(A_t, A_o)
        g_coef, dG = _project(G_t, G_o)
        norm_A, norm_G = float(np.linalg.norm(A_o)), float(np.linalg.norm(G_o))
        diff = math.sqrt(((a_coef * g_coef - 1) * norms[key]) ** 2 + (g_coef * norm_G * dA) ** 2
                         + (a_coef * dG * norm_A) ** 2 + (dG * dA) ** 2)
        keys[key] = {"match": bool(diff <= atol + rtol * norms[key]), "max_abs_error": diff,
                     "max_rel_error": diff / norms[key] if norms[key] > 0 else (0.0 if diff == 0 else math.inf),
                     "worst_index": None, "a": None, "b": None}
    return {"match": all(e["match"] for e in keys.values()), "rtol": rtol, "atol": atol, "keys": keys, "products": True}


def is_kfac(theirs) -> bool:
    """Whether THEIRS (a Curvature or a dict of npz arrays) is a kfac curvature."""
    if isinstance(theirs, Curvature):
        return theirs.structure == "kfac"
    if isinstance(theirs, dict):
        structure = theirs.get("__structure__")
        return (structure is not None and str(structure) == "kfac") or any(str(k).startswith("kfac.") for k in theirs)
    return False

