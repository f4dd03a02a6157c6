"""What ``diagnose`` answers: one fitted candidate, the mc test, and the verdict with its report.

Each result carries the rule that produced it and its uncertainty (relative error, round-off
threshold, runner-up margin, the Monte Carlo test's p-values), like scipy.stats results.
The JSON object (``to_dict``; ``to_json`` is its text) is the schema of ``ewc-ref diagnose --json`` (docs/file-format.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..jsonio import JsonResult


@dataclass
class Candidate(JsonResult):
    """One estimator fitted to THEIRS by (D1) of diagnosis."""

    estimator: str
    scale: float
    rel_error: float
    batch_size: int | None = None
    samples: int | None = None
    fits: bool = False
    note: str = ""
    entries: int | None = None  # rel_error measured on this many screened diagonal entries (None: all)
    variant: str = ""  # batched: '' | 'dropped' | 'kept, sum' | 'recorded' | 'recorded, sum' (verify/loader.py)
    at_labels: str | None = None  # shuffled: 'predicted' when its reading is at the model's most probable labels (the
    # observed-label reading failing); None otherwise (an observed-label reading does not rule out predicted labels)

    @property
    def key(self) -> tuple:
        """(estimator, batch size, variant): the identity of the candidate's matrix."""
        return (self.estimator, self.batch_size, self.variant)

    @property
    def drop_last(self) -> bool | None:
        if self.estimator not in ("batched", "shuffled") or "recorded" in self.variant \
                or self.variant == "kept or dropped":
            return None
        return self.variant.endswith("dropped")

    @property
    def labels(self) -> str | None:
        """batched: 'predicted' (the model's most probable labels) or 'observed' (DATA's y); shuffled: its reading's."""
        if self.estimator == "shuffled":
            return self.at_labels
        return None if self.estimator != "batched" else ("predicted" if self.variant.startswith("pred") else "observed")

    @property
    def batch_reduction(self) -> str | None:
        return None if self.estimator != "batched" else ("sum" if self.variant.endswith("sum") else "mean")

    @property
    def label(self) -> str:
        if self.estimator == "batched":
            what = {"pred": ", at the predicted labels", "dropped": ", drop_last", "kept": "", "sum": ", per-batch sum",
                    "recorded": ", the recorded batches"}
            words = "".join(what.get(part, f", {part}") for part in self.variant.split(", ") if part)
            return f"batched, B = {self.batch_size}{words}" + (
                f" (on {self.entries} screened entries)" if self.entries else "")
        if self.estimator == "mc" and self.samples is not None:
            return f"mc, S = {self.samples}"
        if self.estimator == "shuffled" and self.batch_size is not None:
            return f"shuffled, B ~ {self.batch_size}" + {"dropped": ", drop_last", "kept or dropped": ", drop_last or not"}.get(
                self.variant, "") + (", at the predicted labels" if self.at_labels == "predicted" else "")
        return self.estimator

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "scale": self.scale, "rel_error": self.rel_error,
                "batch_size": self.batch_size, "samples": self.samples, "fits": self.fits, "note": self.note,
                "entries": self.entries, "drop_last": self.drop_last, "batch_reduction": self.batch_reduction,
                "labels": self.labels}


@dataclass
class MCTest(JsonResult):
    """The statistical judgement of ``mc`` (statistics module docstring, (S2)-(S4))."""

    accepted: bool
    reason: str
    implied_samples: float = math.nan  # S_hat: exp(mean log Q1 of genuine one-sample draws) / Q1, else M / Q1
    samples: int | None = None  # max(1, round(S_hat)), reported with samples_interval
    entries: int = 0  # M, whitened directions tested
    chi2: float = math.nan  # Q = samples * Q1, ~ chi2_M under mc with that S
    p_noise: float = math.nan  # P(chi2_M >= Q1): THEIRS noisier than one sample per example?
    shape_ratio: float = math.nan  # mean w^2 of the low-variance half / of the high-variance half
    p_shape: float = math.nan  # two-sided F-test p-value of shape_ratio
    scale_se: float = math.nan  # standard error of the fitted scale under mc with `samples`
    samples_interval: tuple = (math.nan, math.nan)  # 95% band of the implied S
    implied_samples_chi2: float = math.nan  # M' / Q1, the CLT estimate (biased up on confident nets)

    def to_dict(self) -> dict:
        def finite(value):
            return value if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)) else None

        return {"accepted": self.accepted, "reason": self.reason, "implied_samples": finite(self.implied_samples),
                "samples": self.samples, "entries": self.entries, "chi2": finite(self.chi2),
                "p_noise": finite(self.p_noise), "shape_ratio": finite(self.shape_ratio), "p_shape": finite(self.p_shape),
                "implied_samples_interval": [finite(v) for v in self.samples_interval],
                "implied_samples_chi2": finite(self.implied_samples_chi2), "scale_se": finite(self.scale_se)}


@dataclass
class Diagnosis(JsonResult):
    """The answer of ``diagnose``: THEIRS ~= scale * F_estimator, or estimator = 'none'."""

    estimator: str
    scale: float
    rel_error: float
    batch_size: int | None
    samples: int | None
    candidates: list
    n: int
    n_params: int
    structure: str
    precision: str
    tol: float
    scale_words: str = ""
    runner_up: Candidate | None = None
    margin: float = math.nan  # runner-up error / winner error
    equivalent: list = field(default_factory=list)  # candidates whose matrix equals the winner's here
    mc: MCTest | None = None
    closest: Candidate | None = None
    kfac_bias: str | None = None  # structure 'kfac': THEIRS' bias convention ('joined' | 'separate')
    scale_factor: str | None = None  # the recognised factor as an expression in N, C, K, B, S
    shuffled: object = None  # shuffled.ShuffledTest
    not_tried: list = field(default_factory=list)  # [{"estimator", "why", "flag"}]
    batch_sizes_screened: tuple | None = None  # (2, N) when every B was screened
    causes: list = field(default_factory=list)  # likely causes of a 'none', most likely first
    also_consistent: list = field(default_factory=list)  # other accepted statistical candidates
    variant: str = ""  # the winner's Candidate.variant (batched: drop_last, per-batch sum, recorded batches)
    statistical_scores: dict = field(default_factory=dict)  # {mc | shuffled: ranking (R2)} when both passed
    score_margin: float | None = None  # best score - second (ranking.MARGIN decides)
    roundoff: dict | None = None  # float32 THEIRS of a categorical net: roundoff_verdict.judge_float32
    screen: dict | None = None  # {"entries", "wanted", "bound_by", "memory_grows"}: diagnosis.screen_size
    centred: dict = field(default_factory=dict)  # {'sampled' | 'subset': sampled.CentredTest}: causes of a "none"

    def to_dict(self) -> dict:
        """The object of docs/file-format.md (`diagnose --json`), plus explanatory extras."""
        return {
            "estimator": self.estimator, "scale": self.scale, "batch_size": self.batch_size,
            "samples": self.samples, "rel_error": self.rel_error,
            "candidates": [c.to_dict() for c in self.candidates],
            "scale_words": self.scale_words, "n": self.n, "n_params": self.n_params,
            "structure": self.structure, "precision": self.precision, "tol": self.tol,
            "runner_up": None if self.runner_up is None else self.runner_up.to_dict(),
            "margin": self.margin if math.isfinite(self.margin) else None,
            "equivalent": [c.label for c in self.equivalent],
            "mc_test": None if self.mc is None else self.mc.to_dict(),
            "kfac_bias": self.kfac_bias,
            "scale_factor": self.scale_factor,
            "shuffled_test": None if self.shuffled is None else self.shuffled.to_dict(),
            "not_tried": list(self.not_tried),
            "batch_sizes_screened": None if self.batch_sizes_screened is None else list(self.batch_sizes_screened),
            "causes": list(self.causes),
            "also_consistent": list(self.also_consistent),
            "statistical_scores": {k: (v if math.isfinite(v) else None) for k, v in self.statistical_scores.items()},
            "score_margin": self.score_margin,
            "sampled_test": self.centred["sampled"].to_dict() if "sampled" in self.centred else None,
            "subset_test": self.centred["subset"].to_dict() if "subset" in self.centred else None,
            "drop_last": None if self.winner is None else self.winner.drop_last,
            "batch_reduction": None if self.winner is None else self.winner.batch_reduction,
            "labels": None if self.winner is None else self.winner.labels,
            "roundoff": None if self.roundoff is None else {
                k: ([v if math.isfinite(v) else None for v in value] if k == "scale_interval" and value else value)
                for k, value in self.roundoff.items() if k != "advice"},
            "screen": None if self.screen is None else dict(self.screen),
        }

    def report(self, theirs_name: str = "THEIRS", top: int = 12) -> str:
        """Human-readable verdict: winner, scale in words, runner-up and margin, the correct Fisher."""
        structure = self.structure + (f" ({self.kfac_bias} bias; products G (x) A compared, not the factors)"
                                      if self.kfac_bias else "")
        lines = [f"{theirs_name}: {structure}, P = {self.n_params}; N = {self.n} examples; "
                 f"precision {self.precision} (round-off threshold {self.tol:g})", ""]
        if self.estimator == "cannot tell":
            scores = ", ".join(f"{name} {value:.4g}" for name, value in self.statistical_scores.items())
            rival = next((name for name in ("sampled", "subset") if name in self.statistical_scores), None)
            if rival is None:
                lines.append(f"verdict     cannot tell apart: {' and '.join(self.also_consistent)} both pass their own "
                             f"tests, and their log-likelihood scores ({scores}) differ by {self.score_margin:.3g} < the margin 3")
            else:  # verdict.statistical_winner: sampled.py's tests are rivals, never named alone
                lead = max(self.statistical_scores, key=self.statistical_scores.get)
                lines.append(f"verdict     cannot tell apart: {', '.join(self.also_consistent)} each pass their own tests; "
                             f"log-likelihood scores {scores}: {lead} leads by {self.score_margin:.3g}"
                             f"{' < the margin 3' if self.score_margin < 3 else ''}, and a loader at sampled labels or a "
                             "random subset of rows is never named alone (docs/shuffled-loader-fisher.md)")
            lines.append("            more rows, more samples or the loader's recorded order would tell them apart")
        elif self.estimator == "none":
            best = self.closest
            lines.append("verdict     none: no estimator matches THEIRS within round-off, and no statistical one (mc, shuffled) settles it")
            lines.append(f"closest     {best.label}: THEIRS ~= {best.scale:.12g} x F, relative error {best.rel_error:.3g} "
                         f"({best.rel_error / self.tol:.3g} x the threshold)")
            for i, cause in enumerate(self.causes):
                lines.append(f"{'causes' if i == 0 else '':<11} {i + 1}. {cause}")
        else:
            winner = self.winner
            lines.append(f"verdict     {winner.label}: THEIRS = {self.scale:.12g} x F_{self.estimator}, "
                         f"relative error {self.rel_error:.3g}")
            lines.append(f"scale       {self.scale_words}")
            if self.estimator == "mc" and self.mc is not None:
                m = self.mc
                lines.append(f"mc test     implied S = {m.implied_samples:.3g} (reported S = {m.samples}); "
                             f"chi2 = {m.chi2:.4g} over M = {m.entries} whitened directions (expect ~M); "
                             f"shape F-test ratio {m.shape_ratio:.3g}, p = {m.p_shape:.2g}")
                low, high = m.samples_interval
                lines.append(f"            95% interval of S: {low:.3g}..{high:.3g}; mc's expectation is the exact Fisher: "
                             "a larger S makes it indistinguishable from exact")
            if self.estimator == "shuffled" and self.shuffled is not None:
                sh = self.shuffled
                low, high = sh.batch_size_interval
                how = {"averaged": "averaged over the K minibatches", "summed": "summed over the K minibatches (x K)",
                       "over N": "summed and divided by N (x K/N)"}
                loss = f", each batch's loss a {sh.batch_loss}" if sh.batch_loss else ""
                lines.append(f"shuffled    implied B = {sh.implied_batch_size:.3g} (99% {low:.3g}..{high:.3g}), batches "
                             f"{how.get(sh.reduction, 'neither averaged nor summed (scale above)')}{loss}; chi2 = {sh.chi2:.4g} "
                             f"over {sh.entries - 2} directions, p = {sh.p_noise:.2g}")
                lines.append("            rows in unknown order: pass DATA in the order the loader yielded them and "
                             "batched identifies B exactly")
            if self.estimator in ("mc", "shuffled") and self.not_tried:
                names = ", ".join(f"{item['estimator']} ({item['flag']})" for item in self.not_tried)
                lines.append(f"caution     a statistical verdict; a candidate not tried may fit THEIRS exactly: {names} "
                             "(a tanh/MSE Hessian diagonal passes the mc test)")
            if self.statistical_scores:
                scores = ", ".join(f"{name} {value:.4g}" for name, value in self.statistical_scores.items())
                lines.append(f"scores      log-likelihood of THEIRS's tested entries under each noise model ({scores}); "
                             f"margin {self.score_margin:.3g} >= 3")
            if self.also_consistent:
                lines.append(f"also        {', '.join(self.also_consistent)} is consistent with THEIRS too (its own test passes; "
                             "the reported one scores better by the margin above)")
            if self.roundoff is not None and self.roundoff["matched"]:
                r = self.roundoff
                lines.append(f"round-off   float32: {r['lost_rows']:.0%} of rows lose 1 - p_y (below 2^-24, r_y computed as 0), "
                             f"{r['dominated_entries']:.0%} of entries are dominated by it; relative error vs the exact F "
                             f"{r['exact_rel_error']:.3g} <= bound {r['bound_rel']:.3g}; vs float32's computation "
                             f"{r['modelled_rel_error']:.3g}")
                lines.append(f"            to remove it: {r['advice']}")
            if self.equivalent:
                lines.append(f"same here   {', '.join(c.label for c in self.equivalent)} (equal matrices on these weights and data)")
            if self.runner_up is not None:
                lines.append(f"runner-up   {self.runner_up.label}: relative error {self.runner_up.rel_error:.3g} "
                             f"(margin {self.margin:.3g} = runner-up error / winner error)")
        if self.batch_sizes_screened is not None:
            lines.append(f"screened    batched for every B = {self.batch_sizes_screened[0]}..{self.batch_sizes_screened[1]} "
                         "(consecutive rows, the last partial batch its own)")
        for item in self.not_tried:
            lines.append(f"not tried   {item['estimator']}: {item['why']}; include it with {item['flag']}")
        if self.screen is not None and self.screen["bound_by"]:
            grows = " (its floor: memory grows with N)" if self.screen["memory_grows"] else ""
            lines.append(f"screen      {self.screen['entries']} of {self.screen['wanted']} diagonal entries for N = {self.n} "
                         f"rows, bound by the memory budget{grows}; the statistical tests' intervals widen with fewer: "
                         f"raise {self.screen['bound_by']} for more")
        lines.append("")
        lines.append(f"correct EWC Fisher: the exact Fisher F = 1/N sum_n J_n^T Lambda_n J_n, a mean over the N = {self.n} examples")
        lines.append("  (ewc-ref fisher MODEL DATA --estimator exact); the Laplace posterior precision is "
                     f"N F + prior precision = {self.n} F + prior precision,")
        lines.append("  and the EWC penalty for the next task is lambda/2 sum_i F_i (theta_i - theta*_i)^2 added to its mean loss.")
        lines.append("")
        shown = self.candidates[:top]
        lines.append(f"candidates ({len(shown)} best of {len(self.candidates)}; scale c and relative error of THEIRS ~= c F):")
        width = max([22] + [len(c.label) for c in shown])
        lines.append(f"  {'estimator':<{width}} {'scale c':>22} {'rel_error':>11}  fits")
        for c in shown:
            mark = "yes" if c.fits else "no"
            note = c.note if len(c.note) <= 200 else c.note[:197] + "..."
            lines.append(f"  {c.label:<{width}} {c.scale:>22.15g} {c.rel_error:>11.3g}  {mark}{('  ' + note) if note else ''}")
        return "\n".join(lines)

    def __str__(self) -> str:
        """The text report ``ewc-ref diagnose`` prints (``print(d)``)."""
        return self.report()

    @property
    def winner(self) -> Candidate | None:
        for c in self.candidates:
            if (c.estimator, c.batch_size) == (self.estimator, self.batch_size) and c.fits and c.variant == self.variant:
                return c
        return None
