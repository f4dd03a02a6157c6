"""What ``diagnose_penalty`` answers: the fitted rows, the anchor candidates and the named penalty.

The JSON form (``PenaltyDiagnosis.to_dict``; ``to_json()`` is its text) is the schema of ``ewc-ref diagnose-penalty --json``
(docs/file-format.md, section 11). Factors of lambda are named from ``lambda_factors``, the
conventions of the catalogue (tests/fixtures/penalties, docs/penalty-conventions.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..jsonio import JsonResult

#: The best candidates kept in the JSON (every B x every row would be ~4 N objects).
JSON_CANDIDATES = 50

COMBINATION_WORDS = {
    "single task": "one task: Omega = s/2 sum_i F_i (theta_i - theta*_i)^2",
    "separate": "separate (Kirkpatrick et al. 2017, Avalanche mode='separate'): one penalty per past task, "
                "sum_t s/2 (theta - theta*_t)^T F_t (theta - theta*_t)",
    "accumulated": "accumulated (Huszar 2018): the Fishers summed, the latest anchor",
    "online": "online (Schwarz et al. 2018, Avalanche mode='online'): F* <- gamma F* + F_t, the latest anchor",
    "latest only": "latest only: the last task's Fisher and anchor, the earlier tasks forgotten",
    "l2": "l2: F = I, one penalty per past task around each optimum (Kirkpatrick et al. Fig. 2)",
}


@dataclass
class CurvatureCandidate(JsonResult):
    """W ~= s sum_t c_t F_t for one estimator (and B) and one row of (N1)."""

    estimator: str
    batch_size: int | None
    row: str  # 'latest only' | 'sum' | 'online' | 'weights'
    scale: float  # s
    rel_error: float
    coefficients: list  # c_t, c_T = 1
    gamma: float | None = None
    samples: int | None = None  # statistical (T = 1, from diagnose): mc's S
    scale_se: float | None = None  # statistical: the standard error of s (diagnose's sampling noise)

    @property
    def label(self) -> str:
        name = self.estimator + (f", B = {self.batch_size}" if self.batch_size else "")
        name += f", S = {self.samples}" if self.samples else ""
        row = f"online, gamma = {self.gamma:.12g}" if self.row == "online" else self.row
        return f"{name} / {row}"

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "batch_size": self.batch_size, "samples": self.samples, "row": self.row,
                "scale": self.scale, "rel_error": self.rel_error, "coefficients": list(self.coefficients),
                "gamma": self.gamma, "scale_se": self.scale_se}


@dataclass
class AnchorCandidate(JsonResult):
    """One explanation of THEIR anchor and its W-weighted relative distance."""

    name: str
    rel_error: float
    task: int | None = None  # theta*_task
    kind: str = "task"  # 'task' | 'weighted mean' | 'mean' | 'mixture'
    mixture: list | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "task": self.task, "rel_error": self.rel_error,
                "mixture": self.mixture}


@dataclass
class TaskCurvature(JsonResult):
    """The Fisher diagnosis (verify/diagnosis.py) of one task's term of W: its public fields."""

    task: int
    estimator: str
    batch_size: int | None
    samples: int | None
    scale: float
    rel_error: float
    scale_words: str
    scale_se: float | None = None  # mc / shuffled: the standard error of the scale
    causes: list = field(default_factory=list)  # diagnose's computed causes of a 'none'

    @classmethod
    def from_diagnosis(cls, task: int, d) -> TaskCurvature:
        """The public fields of a verify.diagnosis.Diagnosis (the statistical tests' scale_se where judged)."""
        test = {"mc": getattr(d, "mc", None), "shuffled": getattr(d, "shuffled", None)}.get(d.estimator)
        se = getattr(test, "scale_se", None)
        se = float(se) if se is not None and math.isfinite(se) else None
        return cls(task, d.estimator, d.batch_size, d.samples, float(d.scale), float(d.rel_error), d.scale_words,
                   se, list(getattr(d, "causes", [])))

    @property
    def label(self) -> str:
        return (self.estimator + (f", B = {self.batch_size}" if self.batch_size else "")
                + (f", S = {self.samples}" if self.samples else ""))

    def to_dict(self) -> dict:
        return {"task": self.task, "estimator": self.estimator, "batch_size": self.batch_size, "samples": self.samples,
                "scale": self.scale, "rel_error": self.rel_error, "scale_words": self.scale_words,
                "scale_se": self.scale_se, "causes": list(self.causes)}


def lambda_factors(n: int, p: int, gamma: float | None) -> list[tuple[float, str, str]]:
    """(value, expression, words) of lambda_paper / lambda for the conventions met, simplest first."""
    out = [(1.0, "1", "eq. (11) as written: lambda/2 sum_i F_i (theta_i - theta*_i)^2, F a mean over the examples"),
           (2.0, "2", "no 1/2: lambda sum_i F_i (theta_i - theta*_i)^2 (Avalanche EWCPlugin)"),
           (0.5, "1/2", "a 1/2 applied twice: lambda/4 sum_i F_i d_i^2"),
           (float(n), "N", f"F summed over the N = {n} examples (no 1/N), with the 1/2"),
           (2.0 * n, "2*N", f"no 1/2 and F summed over the N = {n} examples"),
           (1.0 / p, "1/P", f"a mean over the P = {p} parameters instead of a sum, with the 1/2"),
           (2.0 / p, "2/P", f"no 1/2 and a mean over the P = {p} parameters: lambda mean_i F_i d_i^2")]
    if n > 1:
        out += [(n / (n - 1), "N/(N-1)", f"F divided by N - 1 = {n - 1} instead of N, with the 1/2"),
                (2.0 * n / (n - 1), "2*N/(N-1)", f"no 1/2 and F divided by N - 1 = {n - 1} instead of N")]
    if gamma is not None and gamma != 1.0:
        out += [(gamma, "gamma", f"gamma = {gamma:g} applied to the latest task too, with the 1/2 (Schwarz et al. "
                                 "2018: lambda/2 ||theta - theta*||^2 weighted by gamma F*)"),
                (2.0 * gamma, "2*gamma", f"no 1/2 and gamma = {gamma:g} applied to the latest task too")]
        if n > 1:
            out.append((gamma * n / (n - 1), "gamma*N/(N-1)",
                        f"gamma = {gamma:g} applied to the latest task too and F divided by N - 1 = {n - 1} instead of "
                        "N (van de Ven's continual-learning: the loop index), with the 1/2"))
    return out


def lambda_roundings(lam: float | None) -> list[tuple[float, str]]:
    """(lambda used / your lambda, words) for a lambda rounded to float32 on its way, ratios != 1.

    Theirs rounded: a Python float times a float32 tensor is float32(lambda) (Avalanche's float32
    accumulator, even on a float64 model). Yours rounded: your lambda is a float32 number (read from a
    float32 tensor or config) whose shortest float32 decimal d is what their code multiplied by.
    """
    if lam is None or not (0 < abs(lam) <= float(np.finfo(np.float32).max)):
        return []
    out = []
    theirs = float(np.float32(lam))
    if theirs == 0:  # below float32's range: a lambda of 0 names nothing
        return []
    if theirs != lam:
        out.append((theirs / lam, f"lambda rounded to float32: float32({lam:.12g}) = {theirs:.17g}"))
    elif float(str(np.float32(lam))) != lam:
        decimal = float(str(np.float32(lam)))
        out.append((decimal / lam, f"your lambda {lam:.17g} is float32({decimal:.12g}); theirs {decimal:.12g}"))
    return out


def name_factor(factor: float, n: int, p: int, gamma: float | None, rtol: float, lam: float | None = None):
    """(expression or None, words): the simplest convention within relative `rtol` of `factor`.

    Conventions whose values coincide here (2 gamma = 1 at gamma = 1/2, N = 2 at N = 2) are all
    inside the band: the simplest is reported and the others are named as indistinguishable. When
    none is, and `lam` is given, a convention times the exact ratio of a float32-rounded lambda
    (``lambda_roundings``, e.g. float32(0.4) / 0.4 = 1.0000000149) is tried within the SAME `rtol`:
    one more hypothesis with no free parameter, so the band is not widened (2 (1 + 1e-5) stays unnamed).
    """
    factors = lambda_factors(n, p, gamma)
    for ratio, why in [(1.0, ""), *lambda_roundings(lam)]:
        inside = [(expression, words) for value, expression, words in factors if abs(factor / (value * ratio) - 1) <= rtol]
        if inside:
            expression, words = inside[0]
            words = f"{expression} (x {ratio:.12g}: {why}); {words}" if why else words
            break
    else:
        return None, f"no convention of the catalogue gives {factor:.12g} (docs/penalty-conventions.md)"
    if len(inside) > 1:
        words += ("; equally " + "; ".join(f"{e} ({w})" for e, w in inside[1:])
                  + " -- these give the same factor here and cannot be told apart")
    return expression, words


@dataclass
class PenaltyDiagnosis(JsonResult):
    """The named penalty: combination, anchor, curvature, gamma and lambda, or 'none' with its causes."""

    fit: object  # verify.penalty_fit.PenaltyFit
    n_tasks: int
    n_params: int
    tol: float
    lam: float | None = None
    gamma_theirs: float | None = None
    combination: str = "none"
    curvature: CurvatureCandidate | None = None
    anchor: AnchorCandidate | None = None
    candidates: list = field(default_factory=list)
    anchors: list = field(default_factory=list)
    equivalent: list = field(default_factory=list)
    per_task: list = field(default_factory=list)
    proposal_diagnoses: list = field(default_factory=list)
    lambda_paper: float | None = None  # s: the lambda of eq. (11) with F the mean Fisher of the estimator
    factor: float | None = None  # lambda_paper / lambda
    factor_expression: str | None = None
    factor_words: str = ""
    gamma_words: str = ""
    causes: list = field(default_factory=list)
    n_examples: int = 0  # N of the latest task (for the factor N)
    not_tried: list = field(default_factory=list)  # [{"estimator", "why", "flag"}]
    batch_sizes_screened: tuple | None = None  # (2, min N_t) when batched was fitted for every B
    anchor_equivalent: list = field(default_factory=list)  # other anchor candidates within round-off
    batch_screen: dict | None = None  # {"entries", "closest", "rel_error", "confirmed"} when B was screened on entries
    unpenalised: list = field(default_factory=list)  # parameter names whose whole tensor has W = 0
    per_tensor_mean: dict | None = None  # {name: P_t} when W x P_t fits: a .mean() per parameter tensor

    def name(self, lam, gamma) -> None:
        """Fill combination, lambda and gamma from the winning curvature row and anchor (causes already computed)."""
        c, a, t_count = self.curvature, self.anchor, self.n_tasks
        if c is None:
            return
        if c.row == "at theta":
            self.combination = "not quadratic: the Fisher recomputed at the current weights"
            self._lambda(lam, gamma)
            return
        if a is None:
            self.causes.append("the curvature is named but no anchor candidate is within round-off: "
                               + "; ".join(f"{x.name} at {x.rel_error:.3g}" for x in self.anchors))
            self._lambda(lam, gamma)
            return
        if t_count == 1:
            self.combination = "single task"
        elif c.estimator == "identity":
            self.combination = {"mean": "l2", "weighted mean": "l2"}.get(a.kind, f"l2 around {a.name}")
        elif a.kind == "task" and a.task != t_count:
            self.combination = f"wrong anchor: task {a.task}'s optimum with {c.row} curvature"
        elif c.row == "sum":
            self.combination = {"weighted mean": "separate", "task": "accumulated"}.get(a.kind, "sum, other anchor")
        elif c.row == "online" and a.kind == "task":
            self.combination = "online"
        elif c.row == "latest only" and a.kind == "task":
            self.combination = "latest only"
        else:
            self.combination = (f"other: weights c = [{', '.join(f'{v:.6g}' for v in c.coefficients)}], "
                                f"anchor {a.name}")
        if c.scale < 0:  # the penalty is subtracted: minimising pushes theta away from the anchor
            self.combination = f"sign flipped (ERRATA E9): {self.combination}"
        self._lambda(lam, gamma)
        if c.row == "online":
            self._gamma(c, gamma, t_count)

    def _gamma(self, c, gamma, t_count) -> None:
        rtol = math.sqrt(self.tol)  # gamma is a ratio of fitted coefficients: sqrt(tol), 1e-4 in float64
        if gamma is None:
            self.gamma_words = f"gamma = {c.gamma:.12g} fitted (pass your gamma to compare)"
            if t_count == 2:  # two weights, two parameters: the online row fits any c_1 <= c_2
                self.gamma_words += ("; with T = 2 any weights c_1 <= c_2 fit an online row, so gamma is their ratio, "
                                     "confirmed only by a third task or your --gamma")
        elif abs(c.gamma / gamma - 1) <= rtol:
            self.gamma_words = f"gamma = {c.gamma:.12g} = your gamma"
        elif abs(c.gamma / gamma**2 - 1) <= rtol:
            self.gamma_words = (f"gamma = {c.gamma:.12g} = your gamma^2 = {gamma:g}^2: the decay is applied twice per "
                                "task (double decay)")
            self.combination = self.combination.replace("online", "online, double decay", 1)
        else:
            self.gamma_words = f"gamma = {c.gamma:.12g}, not your gamma = {gamma:g} nor its square"

    def _lambda(self, lam, gamma) -> None:
        c = self.curvature
        self.lambda_paper = c.scale
        band = "" if c.scale_se is None else f" +/- {2 * c.scale_se:.2g} (2 standard errors of {c.estimator}'s noise)"
        per_tensor = ""
        if self.per_tensor_mean:
            sizes = ", ".join(f"{name} {size}" for name, size in self.per_tensor_mean.items())
            per_tensor = f"a mean per parameter tensor (factor 1/P_t per tensor, P_t: {sizes}); "
        per = "/P_t" if per_tensor else ""
        if lam is None:
            self.factor_words = (f"{per_tensor}lambda_paper = {c.scale:.12g}{per}{band} for eq. (11) with F = "
                                 f"F_{c.estimator} (a mean over the examples); pass your lambda for the conversion")
            return
        self.factor = c.scale / lam
        # a deterministic fit: within 100 x its residual; a statistical one: the simplest inside 2 standard errors
        rtol = max(100 * c.rel_error, 1e-9) if c.scale_se is None else 2 * c.scale_se / abs(c.scale)
        self.factor_expression, words = name_factor(abs(self.factor), self.n_examples, self.n_params, gamma, rtol, lam)
        band = "" if c.scale_se is None else f" +/- {2 * c.scale_se / lam:.2g}"
        sign = "-" if self.factor < 0 else ""
        if per_tensor and self.factor_expression is not None:
            self.factor_expression += per
            words += "; each tensor's terms averaged (.mean() per tensor), so divided by its P_t"
        self.factor_words = (f"{per_tensor}your lambda corresponds to lambda_paper = {sign}{abs(self.factor):.12g}{per}"
                             f"{band} x yours{' on tensor t' if per else ''}: {words}")
        if sign:
            self.factor_words += " (negative: the penalty is subtracted from the loss, ERRATA E9)"

    def to_dict(self) -> dict:
        return {"combination": self.combination, "n_tasks": self.n_tasks, "n_params": self.n_params, "tol": self.tol,
                "penalty_fit": self.fit.to_dict(),
                "curvature": None if self.curvature is None else self.curvature.to_dict(),
                "anchor": None if self.anchor is None else self.anchor.to_dict(),
                "lambda": self.lam, "gamma": self.gamma_theirs, "lambda_paper": self.lambda_paper,
                "factor": self.factor, "factor_expression": self.factor_expression, "factor_words": self.factor_words,
                "gamma_fitted": None if self.curvature is None else self.curvature.gamma, "gamma_words": self.gamma_words,
                "equivalent": list(self.equivalent), "anchor_equivalent": list(self.anchor_equivalent), "per_task": [d.to_dict() for d in self.per_task],
                "proposals": [d.to_dict() for d in self.proposal_diagnoses],
                "candidates": [c.to_dict() for c in self.candidates[:JSON_CANDIDATES]],
                "candidates_total": len(self.candidates), "anchors": [a.to_dict() for a in self.anchors],
                "not_tried": list(self.not_tried),
                "batch_sizes_screened": None if self.batch_sizes_screened is None else list(self.batch_sizes_screened),
                "batch_screen": self.batch_screen, "unpenalised": list(self.unpenalised),
                "per_tensor_mean": self.per_tensor_mean,
                "causes": list(self.causes)}

    def report(self, theirs_name: str = "THEIRS", top: int = 10) -> str:
        """Human-readable verdict."""
        f = self.fit
        lines = [f"{theirs_name}: M = {f.n_points} points, P = {self.n_params}, T = {self.n_tasks} task(s); precision "
                 f"{f.precision} (round-off threshold {self.tol:g})"
                 + (f"; values float32 numbers (threshold {f.value_tol:.2g})" if f.value_tol > f.tol else ""), "",
                 f"quadratic   {f.quadratic}: {f.reason}"]
        if self.combination == "none":
            lines.append("verdict     none: THEIR penalty is not named")
        else:
            lines.append(f"verdict     {self.combination}: {COMBINATION_WORDS.get(self.combination, '')}".rstrip(": "))
        lines += [f"{'causes' if i == 0 else '':<11} {i + 1}. {cause}" for i, cause in enumerate(self.causes)]
        if self.unpenalised:
            lines.append(f"unpenalised {', '.join(self.unpenalised)}: W = 0 on these whole tensors (excluded from the fit; "
                         "diagnose per task not run, it compares whole Fishers)")
        c, a = self.curvature, self.anchor
        if a is not None:
            lines.append(f"anchor      {a.name} (W-weighted relative distance {a.rel_error:.3g})")
            if self.anchor_equivalent:
                lines.append(f"same here   {', '.join(self.anchor_equivalent)} (equal anchors: the combinations they "
                             "name are the same penalty on these models)")
        if c is not None:
            coefficients = ", ".join(f"{v:.6g}" for v in c.coefficients)
            if c.row == "at theta":
                lines.append(f"curvature   grad = {c.scale:.12g} x F(theta) (theta - theta*_{self.n_tasks}) with F = "
                             f"{c.estimator} of task {self.n_tasks} recomputed at each point (relative error {c.rel_error:.3g})")
            else:
                lines.append(f"curvature   W = {c.scale:.12g} x sum_t c_t F_t with F = {c.label.split(' / ')[0]}, "
                             f"c = [{coefficients}] (relative error {c.rel_error:.3g})")
            if c.scale_se is not None:
                lines.append(f"            a statistical verdict (diagnose): {c.estimator} judged against its sampling noise, "
                             f"s = {c.scale:.6g} +/- {2 * c.scale_se:.2g} (2 standard errors)")
            if self.equivalent:
                lines.append(f"same here   {', '.join(self.equivalent)}")
            for d in self.per_task:
                lines.append(f"task {d.task:<6} diagnose of its term of W: {d.label}, scale {d.scale:.12g} "
                             f"(relative error {d.rel_error:.3g})")
            if self.per_tensor_mean:
                lines.append("reduction   a mean per parameter tensor: W_i x P_t(i) is the curvature fitted above "
                             "(THEIR penalty takes .mean() of each tensor's terms)")
            lines.append(f"lambda      {self.factor_words}")
            if self.gamma_words:
                lines.append(f"gamma       {self.gamma_words}")
        lines += ["", f"candidates ({min(top, len(self.candidates))} best of {len(self.candidates)}; W ~= s sum_t c_t F_t):"]
        for cand in self.candidates[:top]:
            lines.append(f"  {cand.label:<44} s = {cand.scale:>20.12g}  rel_error {cand.rel_error:.3g}")
        lines.append("anchors:")
        for x in self.anchors:
            lines.append(f"  {x.name:<60} rel_error {x.rel_error:.3g}")
        return "\n".join(lines)
