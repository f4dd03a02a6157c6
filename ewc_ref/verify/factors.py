"""Scale factors by search: the fitted c of THEIRS ~= c F explained as the simplest product

    c ~= 2^a N^b C^c B^d K^e S^f (sigma^2)^g                                                 (F1)

with small integer exponents (|a| <= 4, the others <= 2, S and sigma^2 only where they exist), the
simplest first: complexity = |a| + |b| + ... (x 1 is 0, x N and x 2 are 1, 4/C is 3, 4/(N C^2) is 5).
A variable equal to 1 (C = 1, no batches) is left out, so it never names a factor. Beside the
products, three ratios that off-by-one code produces: N/(N-1), (N-1)/N and K/(K-1) (complexity 3).

The words are generated from the exponents (a factor 2 missing, a sum over the N examples, a mean
over the C outputs, ...) and, where one matches, name the torch / BackPACK / curvlinops /
laplace-torch convention that produces exactly that product (``CONVENTIONS``; derivations in
tests/fixtures/libraries/README.md and docs/bayes-and-laplace.md):

    MSELoss(mean)  GGN = Hessian = 2/C, EF 4/C, SumGradSquared 4/(N C^2), per-example 4/C^2
    MSELoss(sum)   per example 4 (the gradient 2 r squared), GGN / Hessian summed 2N (BackPACK)
    BCEWithLogitsLoss(mean) 1/C, SumGradSquared 1/(N C^2), per batch or example 1/C^2
    CrossEntropyLoss(mean) 1, sum (laplace-torch) N, SumGradSquared 1/N
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleFactor:
    """A factor THEIRS / F that a known convention or bug produces: value, expression, words."""

    value: float
    expression: str  # arithmetic in N, C, K, B, S (JSON "scale_factor")
    words: str  # the convention or bug it comes from
    complexity: int = 0  # sum of |exponents| of (F1); 3 for the off-by-one ratios
    named: bool = False  # a convention of CONVENTIONS produces exactly this product


#: Exponent ranges of (F1) by symbol.
RANGES = {"2": range(-4, 5), "N": range(-2, 3), "C": range(-2, 3), "B": range(-2, 3), "K": range(-2, 3),
          "S": range(-1, 2), "sigma^2": range(-2, 3)}
#: Products above this complexity are not searched (6: e.g. 4 K/(N C^2) is still found).
MAX_COMPLEXITY = 6

#: (likelihood or '*', expression) -> the convention that produces exactly that factor.
CONVENTIONS = {
    ("*", "1"): "a mean over the N examples (ewc_ref's convention; torch CrossEntropyLoss(reduction='mean'))",
    ("*", "N"): "the 1/N average is missing: a sum over the N examples (a loss with reduction='sum'; "
                "laplace-torch's curvature)",
    ("*", "1/N"): "each per-example gradient of the MEAN loss squared, (g_n/N)^2, and summed (BackPACK "
                  "SumGradSquared), or divided by N twice",
    ("*", "K"): "squared minibatch gradients summed over the K minibatches, not averaged",
    ("*", "K/N"): "squared minibatch gradients summed and divided by N (len(dataset)) instead of K (len(loader))",
    ("*", "B^2"): "the gradient of the minibatch SUM (not mean) was squared",
    ("*", "B^2*K"): "the gradients of the minibatch SUMS squared and summed over the K minibatches",
    ("*", "S"): "the S sampled squared gradients summed, not averaged",
    ("gaussian", "2/C"): "torch MSELoss(reduction='mean') over C outputs: its GGN or Hessian (BackPACK "
                         "DiagGGNExact / DiagHessian)",
    ("gaussian", "4/C"): "the empirical Fisher of torch MSELoss(reduction='mean') over C outputs (curvlinops "
                         "EFLinearOperator)",
    ("gaussian", "4/(N*C^2)"): "per-example gradients of torch MSELoss(mean) squared, (2 r_n/(N C))^2 summed "
                               "(BackPACK SumGradSquared)",
    ("gaussian", "4/C^2"): "squared per-example gradients of torch MSELoss(reduction='mean') over the C outputs",
    ("gaussian", "4"): "squared per-example gradients of torch MSELoss(reduction='sum') (the gradient 2 r has no 1/2)",
    ("gaussian", "2*N"): "the GGN or Hessian of torch MSELoss(reduction='sum') summed over the N examples (BackPACK "
                         "DiagGGNExact / DiagHessian of a summed loss); laplace-torch's empirical Fisher for regression",
    ("gaussian", "2"): "the GGN or Hessian of torch MSELoss(reduction='sum') per example (no 1/2)",
    ("bernoulli", "1/C"): "torch BCEWithLogitsLoss(reduction='mean') over C outputs (its GGN or empirical Fisher, "
                          "curvlinops)",
    ("bernoulli", "1/(N*C^2)"): "per-example gradients of torch BCEWithLogitsLoss(mean) squared, (g_n/(N C))^2 summed "
                                "(BackPACK SumGradSquared)",
    ("bernoulli", "1/C^2"): "gradients of torch BCEWithLogitsLoss(reduction='mean') squared per example or per batch "
                            "(a mean over the C outputs inside the square)",
}

_PHRASES = {
    "2": {1: "a factor 1/2 missing (a squared error without its 1/2, or the lambda/2 of the penalty)",
          -1: "a factor 1/2 folded in (e.g. the lambda/2 of the penalty)",
          2: "a gradient carrying a factor 2 squared (a squared error without its 1/2)"},
    "N": {1: "a sum over the N examples, not a mean", -1: "divided by N once more", 2: "N^2: a summed gradient "
          "squared and summed", -2: "divided by N twice more"},
    "C": {-1: "a mean over the C outputs (torch reduction='mean' over outputs)",
          -2: "a mean over the C outputs inside a squared gradient"},
    "B": {2: "the gradient of the minibatch SUM (not mean) squared", 1: "multiplied by the batch size",
          -1: "divided by the batch size once more"},
    "K": {1: "summed over the K minibatches, not averaged", -1: "divided by the number of minibatches twice"},
    "S": {1: "the S sampled squared gradients summed, not averaged", -1: "divided by S once more"},
    "sigma^2": {},
}


def _expression(exponents: dict) -> str:
    """'4/(N*C^2)', '2*N', 'K/N', '1': numerator (the power of 2 as a number first), then the denominator."""
    def term(symbol, power):
        if symbol == "2":
            return str(2 ** power)
        return symbol if power == 1 else f"{symbol}^{power}"

    num = [term(s, p) for s, p in exponents.items() if p > 0]
    den = [term(s, -p) for s, p in exponents.items() if p < 0]
    top = "*".join(num) if num else "1"
    if not den:
        return top
    return f"{top}/{den[0]}" if len(den) == 1 else f"{top}/({'*'.join(den)})"


def _words(exponents: dict, values: dict, expression: str, value: float, likelihood: str | None) -> str:
    named = CONVENTIONS.get((likelihood, expression)) or CONVENTIONS.get(("*", expression))
    shown = ", ".join(f"{s} = {values[s]:g}" if abs(p) == 1 else f"{s}^{abs(p)} = {values[s]:g}^{abs(p)}"
                      for s, p in exponents.items() if s != "2" and p != 0)
    single = len(exponents) == 1 and next(iter(exponents.values())) == 1  # x N = 480: the value says it
    head = f"x {expression}" + (f" = {value:.6g}" if expression not in ("1", "2") else "") + (
        f" ({shown})" if shown and not single else "")
    if named:
        return f"{head}: {named}"
    parts = [_PHRASES.get(s, {}).get(p, f"a factor {s}^{p} (no known convention)") for s, p in exponents.items() if p != 0]
    return f"{head}: " + "; ".join(parts)


def search_factors(n: int, batch_size: int | None = None, n_outputs: int | None = None, likelihood: str | None = None,
                   sigma: float = 1.0, n_batches: int | None = None, samples: int | None = None) -> list[ScaleFactor]:
    """Every product (F1) of complexity <= MAX_COMPLEXITY, plus the off-by-one ratios, SIMPLEST FIRST.

    Ties in complexity: a named convention first (K/N before the equal B/N when K = B), then fewer
    symbols, then the order 2, N, C, B, K, S, sigma^2.
    """
    values = {"2": 2.0, "N": float(n)}
    if n_outputs and n_outputs > 1:
        values["C"] = float(n_outputs)
    if batch_size and batch_size > 1:
        values["B"] = float(batch_size)
        k = n_batches or -(-n // batch_size)
        if k > 1:
            values["K"] = float(k)
    if samples and samples > 1:
        values["S"] = float(samples)
    if likelihood == "gaussian" and sigma != 1.0:
        values["sigma^2"] = float(sigma) ** 2
    if n <= 1:
        values.pop("N")
    symbols = list(values)
    out, seen = [], set()
    for powers in itertools.product(*(RANGES[s] for s in symbols)):
        complexity = sum(abs(p) for p in powers)
        if complexity > MAX_COMPLEXITY:
            continue
        exponents = {s: p for s, p in zip(symbols, powers, strict=True) if p != 0}
        expression = _expression(exponents)
        if expression in seen:
            continue
        seen.add(expression)
        value = math.prod(values[s] ** p for s, p in exponents.items())
        words = _words(exponents, values, expression, value, likelihood)
        named = (likelihood, expression) in CONVENTIONS or ("*", expression) in CONVENTIONS
        out.append((complexity, not named, len(exponents), [symbols.index(s) for s in exponents],
                    ScaleFactor(value, expression, words, complexity, named)))
    out.sort(key=lambda item: item[:4])
    factors = [item[4] for item in out]
    if n > 1:
        factors += [ScaleFactor(n / (n - 1), "N/(N-1)", f"x N/(N-1) = {n}/{n - 1}: divided by N - 1 instead of N", 3),
                    ScaleFactor((n - 1) / n, "(N-1)/N", f"x (N-1)/N = {n - 1}/{n}: divided by N + ... (N/(N-1) too many)", 3)]
    if "K" in values:
        k = int(values["K"])
        factors.append(ScaleFactor(k / (k - 1), "K/(K-1)", f"x K/(K-1) = {k}/{k - 1}: divided by K - 1 instead of K", 3))
    factors.sort(key=lambda f: f.complexity)  # stable: the ratios after the products of their complexity
    return factors


#: The factors a statistical candidate reaches without a bug (its natural readings), preferred inside
#: the noise band before the simplest others: mc averaged or summed over S; a shuffled loader averaged
#: or summed over K, with per-batch mean or sum (B^2).
NATURAL = {"mc": ("1", "S"), "shuffled": ("1", "K", "B^2", "B^2*K")}
#: A statistical band (~10-50%) holds many products; beyond these the match would be a coincidence.
STATISTICAL_MAX_COMPLEXITY = 2
