"""How often ``diagnose`` names a DataLoader-loop Fisher correctly, per loader combination (issue 28).

The issue's user: a 64-32-10 ReLU net trained on the 1,797 shipped digits; THEIRS is the loop

    for xb, yb in DataLoader(data, batch_size=64, shuffle=SHUFFLE, drop_last=DROP):
        F += grad(CrossEntropyLoss(reduction=RED)(net(xb), yb)) ** 2
    F /= K            (or not: 'sum'; or F /= N: 'over N')

written here from per-example gradients (ewc_ref.per_sample_gradients; the tests check those against a
hand-written backward pass), over N = 1,797 rows (a short last batch of 5) and N = 1,792 (none). An
ordered loader is deterministic (one run); a shuffled one is run over SEEDS permutations.

A verdict is counted as
  right   the loader's estimator ('batched' ordered, 'shuffled' shuffled) with B = 64 (ordered) or 64
          inside the 99% band (shuffled), and, where the verdict states them, drop_last and the
          per-batch reduction as the loop had them (a verdict that leaves them open is not wrong);
  open    'none' or 'cannot tell' (an honest non-answer);
  wrong   anything else: a confident wrong verdict.

Run (about 3-6 minutes on 2 cores):  PYTHONPATH=. python benchmarks/loader_rates.py [--seeds 20]
It prints a markdown table (the one in docs/shuffled-loader-fisher.md's rates section is this output).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ewc_ref as er  # noqa: E402
from ewc_ref.continual.training import train_task  # noqa: E402

B = 64


def digits_net():
    """The tests' digits net: 64-32-10 ReLU, 20 epochs of SGD on all 1,797 rows (96% training accuracy)."""
    data = np.load(Path(er.__file__).parent / "data" / "digits.npz")
    x, y = data["x"] / 16.0, data["y"].astype(np.int64)
    model = er.MLP.random([64, 32, 10], "relu", rng=np.random.default_rng(0))
    train_task(model, x, y, np.arange(10), epochs=20, batch_size=32, lr=0.1, rng=0)
    return model, er.get_likelihood("categorical"), x, y


def loader_fisher(G, order, drop_last, reduction, aggregation):
    """The loop of the module docstring over the per-example gradients G (N, P) taken in `order`."""
    F, k = np.zeros(G.shape[1]), 0
    for start in range(0, len(order), B):
        rows = order[start:start + B]
        if drop_last and len(rows) < B:
            break
        g = G[rows].sum(axis=0) / (len(rows) if reduction == "mean" else 1)
        F += g * g
        k += 1
    return F * {"mean": 1 / k, "sum": 1.0, "over N": 1 / len(order)}[aggregation]


def classify(result, shuffled, drop_last, reduction, short_batch):
    """'right', 'open' or 'wrong' (module docstring), and the verdict in a few words."""
    d = result.to_dict()
    est = d["estimator"]
    words = f"{est}"
    if est in (None, "none", "cannot tell"):
        return "open", est or "none"
    if shuffled:
        sh = result.shuffled
        low, high = sh.batch_size_interval
        words += f" B~{sh.implied_batch_size:.0f} [{low:.0f},{high:.0f}] {sh.reduction or 'x ' + str(d['scale_factor'])}"
        if est != "shuffled" or not (low <= B <= high):
            return "wrong", words
        if short_batch and sh.drop_last is not None and sh.drop_last != drop_last:
            return "wrong", words + f" drop_last={sh.drop_last}"
        return "right", words
    words += f" B={d['batch_size']} {result.variant}".rstrip()
    if est != "batched" or d["batch_size"] != B:
        return "wrong", words
    if short_batch and d.get("drop_last") is not None and d["drop_last"] != drop_last:
        return "wrong", words
    if short_batch and not drop_last and d.get("batch_reduction") not in (None, reduction):
        return "wrong", words
    return "right", words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    model, lik, x_all, y_all = digits_net()
    combos = []
    for n in (1797, 1792):
        for shuffled in (False, True):
            for drop_last in (False, True):
                if n == 1792 and drop_last:
                    continue  # no short batch: drop_last changes nothing
                for reduction in ("mean", "sum"):
                    combos.append((n, shuffled, drop_last, reduction, "mean"))
    combos += [(1797, True, False, "mean", "sum"), (1797, True, False, "mean", "over N"),
               (1797, False, False, "mean", "over N")]
    print("| N | order | drop_last | per-batch loss | over batches | right | open | wrong | verdicts (count) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, shuffled, drop_last, reduction, aggregation in combos:
        x, y = x_all[:n], y_all[:n]
        G = er.per_sample_gradients(model, lik, x, y)
        runs = args.seeds if shuffled else 1
        counts, seen = collections.Counter(), collections.Counter()
        start = time.time()
        for seed in range(runs):
            order = np.random.default_rng(1000 + seed).permutation(n) if shuffled else np.arange(n)
            theirs = loader_fisher(G, order, drop_last, reduction, aggregation)
            result = er.diagnose(model, lik, x, y, theirs, hessian=False)
            kind, words = classify(result, shuffled, drop_last, reduction, n % B != 0)
            counts[kind] += 1
            seen[words] += 1
        top = "; ".join(f"{w} ({c})" for w, c in seen.most_common(3))
        print(f"| {n:,} | {'shuffled' if shuffled else 'ordered'} | {drop_last} | {reduction} | {aggregation} | "
              f"{counts['right']}/{runs} | {counts['open']}/{runs} | {counts['wrong']}/{runs} | {top} |", flush=True)
        print(f"  ({time.time() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
