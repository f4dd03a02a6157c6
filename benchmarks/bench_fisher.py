"""Benchmark ewc_ref's curvature against torch.func, BackPACK and curvlinops, in one run.

Times, for every configuration and dtype, with the SAME weights and data in every library:

* one full-batch gradient (forward + backward of the mean loss),
* the diagonal empirical Fisher   (ewc_ref fisher empirical/diag | BackPACK SumGradSquared |
  torch.func vmap(grad) squared),
* the diagonal exact Fisher       (ewc_ref fisher exact/diag | BackPACK DiagGGNExact),
* the full empirical Fisher       (ewc_ref fisher empirical/full | torch.func vmap(grad) + G^T G |
  numpy G.T @ G on an already built G), where P <= 5,000,
* one Hessian-vector and one GGN-vector product (ewc_ref.curvature.second_order | curvlinops),
* the numpy matmul peak (GFLOP/s), and the tracemalloc peak of every ewc_ref method.

Configurations (issue 5): 64-128-128-10 on the shipped digits (N = 1797), 784-256-256-10 on
random data (N = 10,000), and 64-64-10 on digits for the full Fisher (P = 4,810); ReLU,
categorical likelihood; float64 and float32; 2 threads. Each timing is the median of
`--repeats` runs, interleaved across libraries so that load from other processes on a shared
machine hits all of them alike. Prints a markdown report (stdout, or --output FILE).

Run (torch, backpack-for-pytorch, curvlinops-for-pytorch are optional: the `bench` extra)::

    OMP_NUM_THREADS=2 python benchmarks/bench_fisher.py --repeats 7 --output report.md
"""

from __future__ import annotations

import argparse
import os
import sys

THREADS = "2"
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, THREADS)  # before numpy/torch are imported

import datetime  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import ewc_ref as er  # noqa: E402
from ewc_ref.curvature import kernels  # noqa: E402
from ewc_ref.curvature.second_order import ggn_vector_product, hessian_vector_product  # noqa: E402
from ewc_ref.model.likelihoods import Categorical  # noqa: E402

DIGITS = Path(er.__file__).parent / "data" / "digits.npz"


# --------------------------------------------------------------------------- environment
def torch_modules():
    """(torch, backpack, curvlinops, torch.func) or Nones for what is not installed."""
    mods = {}
    try:
        import torch

        torch.set_num_threads(int(THREADS))
        mods["torch"] = torch
    except ImportError:
        return mods
    for name in ("backpack", "curvlinops"):
        try:
            mods[name] = __import__(name)
        except ImportError:
            pass
    return mods


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} threads={i.get('num_threads')}"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown"
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def versions() -> str:
    names = ["numpy", "scipy", "numba", "torch", "backpack-for-pytorch", "curvlinops-for-pytorch"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return f"Python {platform.python_version()}, ewc_ref {er.__version__}, " + ", ".join(found)


# --------------------------------------------------------------------------- problems
def problem(config: str, dtype, n_random: int):
    """(model, x, y) for a configuration; random weights from a fixed seed."""
    if config == "784-256-256-10":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n_random, 784)).astype(dtype)
        y = rng.integers(0, 10, n_random)
    else:
        data = np.load(DIGITS)
        x, y = (data["x"] / 16.0).astype(dtype), data["y"].astype(np.intp)
    sizes = [int(s) for s in config.split("-")]
    return er.MLP.random(sizes, "relu", rng=1, dtype=dtype), x, y


def torch_net(mods, model, dtype):
    torch = mods["torch"]
    layers = []
    for l, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).to(torch.float64 if dtype == np.float64 else torch.float32)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(lin)
        if l < model.n_layers - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


# --------------------------------------------------------------------------- methods
def ewc_methods(model, x, y, full: bool):
    lik = Categorical()
    v = np.random.default_rng(2).standard_normal(model.n_params).astype(model.dtype)
    methods = {
        "gradient": lambda: er.loss_and_grad(model, lik, x, y),
        "diag empirical": lambda: er.fisher(model, lik, x, y, "empirical", "diag"),
        "diag exact": lambda: er.fisher(model, lik, x, y, "exact", "diag"),
        "HVP": lambda: hessian_vector_product(model, lik, x, y, v),
        "GGNVP": lambda: ggn_vector_product(model, lik, x, y, v),
    }
    if full:
        methods["full empirical"] = lambda: er.fisher(model, lik, x, y, "empirical", "full")
    return methods


def reference_methods(model, x, y, full: bool, mods):
    """Other libraries and BLAS baselines, all on the same weights and data."""
    refs = {}
    if full:
        from ewc_ref.model.loss import per_sample_gradients

        G = per_sample_gradients(model, Categorical(), x, y)
        refs["numpy G.T @ G (G built)"] = lambda: G.T @ G
        refs["numpy gemm G.T @ G.copy() (G built)"] = lambda: G.T @ G.copy()
        refs["scipy syrk (G built)"] = lambda: kernels.gram_syrk(G)
    if "torch" not in mods:
        return refs
    torch = mods["torch"]
    net = torch_net(mods, model, model.dtype)
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="mean")

    def grad():
        net.zero_grad()
        loss_fn(net(X), Y).backward()

    refs["torch gradient"] = grad
    from torch.func import functional_call, vmap
    from torch.func import grad as fgrad

    params = {k: p.detach() for k, p in net.named_parameters()}

    def one_loss(p, xn, yn):
        return torch.nn.functional.cross_entropy(functional_call(net, p, (xn[None],)), yn[None])

    per_sample = vmap(fgrad(one_loss), in_dims=(None, 0, 0))
    chunk = max(1, int(64e6 // (8 * model.n_params)))  # keep vmap's per-sample gradients near 64 MB

    def torch_func_diag():
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for begin in range(0, X.shape[0], chunk):
            g = per_sample(params, X[begin : begin + chunk], Y[begin : begin + chunk])
            for k in total:
                total[k] += (g[k] ** 2).sum(0)
        return {k: t / X.shape[0] for k, t in total.items()}

    refs["torch.func vmap(grad) diag"] = torch_func_diag
    if full:
        def torch_func_full():
            g = per_sample(params, X, Y)
            Gt = torch.cat([g[k].reshape(X.shape[0], -1) for k in params], dim=1)
            return Gt.T @ Gt / X.shape[0]

        refs["torch.func vmap(grad) + G^T G"] = torch_func_full
    if "backpack" in mods:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact, SumGradSquared

        bnet, bloss = extend(torch_net(mods, model, model.dtype)), extend(torch.nn.CrossEntropyLoss(reduction="mean"))

        def run(extension):
            bnet.zero_grad()
            with backpack(extension()):
                bloss(bnet(X), Y).backward()

        refs["BackPACK SumGradSquared"] = lambda: run(SumGradSquared)
        refs["BackPACK DiagGGNExact"] = lambda: run(DiagGGNExact)
        refs["_backpack_net"] = bnet
    if "curvlinops" in mods:
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        plist = [p for p in net.parameters()]
        data = [(X, Y)]
        ops = {"curvlinops HVP": HessianLinearOperator(net, loss_fn, plist, data, check_deterministic=False),
               "curvlinops GGNVP": GGNLinearOperator(net, loss_fn, plist, data, check_deterministic=False)}
        vt = torch.from_numpy(np.random.default_rng(2).standard_normal(model.n_params).astype(model.dtype))
        for name, op in ops.items():
            refs[name] = lambda op=op: op @ vt
    return refs


def cross_check(model, x, y, refs, mods) -> list[str]:
    """Same weights and data? BackPACK's diagonals against ours (they use the mean loss: a = 1/N)."""
    notes = []
    bnet = refs.get("_backpack_net")
    if bnet is None:
        return notes
    n, lik = x.shape[0], Categorical()
    for name, estimator, attr, scale in (("BackPACK SumGradSquared", "empirical", "sum_grad_squared", n),
                                         ("BackPACK DiagGGNExact", "exact", "diag_ggn_exact", 1.0)):
        refs[name]()
        theirs = np.concatenate([getattr(p, attr).detach().numpy().ravel() for p in bnet.parameters()]) * scale
        ours = er.fisher(model, lik, x, y, estimator, "diag").diagonal
        err = float(np.linalg.norm(ours - theirs) / np.linalg.norm(ours))
        notes.append(f"{name} vs ewc_ref {estimator}/diag: relative error {err:.1e}")
    return notes


# --------------------------------------------------------------------------- measurement
def interleaved_medians(methods: dict, repeats: int, budget: float = 40.0) -> dict:
    """Median seconds per method; every round runs every method once (load hits all alike).

    A method slower than budget / repeats seconds gets max(3, budget // its time) rounds.
    """
    times = {name: [] for name in methods}
    for name, fn in methods.items():  # warm-up (numba load, BLAS buffers, torch dispatch)
        t = time.perf_counter()
        fn()
        times[name] = [time.perf_counter() - t]
    wanted = {name: max(min(repeats, 3), min(repeats, int(budget // max(t[0], 1e-9)))) for name, t in times.items()}
    for name in times:
        times[name] = []
    for round_ in range(max(wanted.values())):
        for name, fn in methods.items():
            if round_ < wanted[name]:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: float(np.median(t)) for name, t in times.items()}


def traced_peak(fn) -> int:
    fn()  # first-call allocations (caches, imports) are not the method's memory
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def matmul_peak(dtype, repeats: int) -> float:
    n = 2000
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    seconds = interleaved_medians({"mm": lambda: a @ a}, repeats)["mm"]
    return 2 * n**3 / seconds / 1e9


# --------------------------------------------------------------------------- report
def fmt_s(t):
    return "n/a" if t is None else (f"{t:.3f}" if t >= 0.01 else f"{t * 1e3:.2f} ms")


def run(args) -> str:
    mods = torch_modules() if not args.no_torch else {}
    lines = [f"### Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
             f"- machine: {machine()}", f"- versions: {versions()}",
             f"- BLAS (threadpoolctl): {blas_info()}",
             "- OPENBLAS_CORETYPE=" + os.environ.get("OPENBLAS_CORETYPE", "(unset)")
             + ", OPENBLAS_L2_SIZE=" + os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
             f"- threads: {os.environ.get('OMP_NUM_THREADS')} (OMP/OpenBLAS/MKL/numba), torch "
             f"{mods['torch'].get_num_threads() if 'torch' in mods else '-'}; numba kernels: {kernels.USE_NUMBA}",
             f"- median of up to {args.repeats} interleaved repeats per method (shared 2-core machine)", ""]
    for dtype in args.dtypes:
        lines.append(f"- numpy matmul peak, {np.dtype(dtype).name}: {matmul_peak(dtype, args.repeats):.1f} GFLOP/s")
    lines.append("")
    memory_rows = []
    for config in args.configs:
        for dtype in args.dtypes:
            model, x, y = problem(config, dtype, args.n)
            full = model.n_params <= 5000
            ours = ewc_methods(model, x, y, full)
            refs = reference_methods(model, x, y, full, mods)
            notes = cross_check(model, x, y, refs, mods)
            refs.pop("_backpack_net", None)
            print(f"[bench] {config} {np.dtype(dtype).name}: {len(ours)} ewc_ref + {len(refs)} reference methods",
                  file=sys.stderr)
            both = {f"ewc_ref {k}": fn for k, fn in ours.items()} | refs
            t = interleaved_medians(both, args.repeats)
            g = t["ewc_ref gradient"]
            lines += [f"#### {config}, N = {x.shape[0]}, P = {model.n_params}, {np.dtype(dtype).name}", ""]
            lines += [f"- {note}" for note in notes]
            lines += ["", "| method | ewc_ref s | x ewc_ref gradient | reference | reference s | ratio ewc_ref / reference | goal |",
                      "|---|---|---|---|---|---|---|"]
            rows = [("gradient", "torch gradient", None)]
            rows += [("diag empirical", "BackPACK SumGradSquared", 0.75), ("diag empirical", "torch.func vmap(grad) diag", None),
                     ("diag exact", "BackPACK DiagGGNExact", 0.33)]
            if full:
                rows += [("full empirical", "numpy G.T @ G (G built)", 1.3),
                         ("full empirical", "numpy gemm G.T @ G.copy() (G built)", None),
                         ("full empirical", "scipy syrk (G built)", None),
                         ("full empirical", "torch.func vmap(grad) + G^T G", 1 / 1.5)]
            rows += [("HVP", "curvlinops HVP", None), ("GGNVP", "curvlinops GGNVP", None)]
            for method, ref, goal in rows:
                ours_t, ref_t = t.get(f"ewc_ref {method}"), t.get(ref)
                ratio = None if ref_t is None else ours_t / ref_t
                goal_text = ""
                if goal is not None and ratio is not None:
                    goal_text = f"<= {goal:.2f}: {'met' if ratio <= goal else 'MISSED'}"
                if method in ("HVP", "GGNVP"):
                    bound = 3.0 if method == "HVP" else 2.5
                    goal_text = f"<= {bound}x gradient: {'met' if ours_t / g <= bound else 'MISSED'}"
                ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
                lines.append(f"| {method} | {fmt_s(ours_t)} | {ours_t / g:.2f} | {ref if ref_t is not None else ref + ' (absent)'} | "
                             f"{fmt_s(ref_t)} | {ratio_text} | {goal_text} |")
            if "torch gradient" in t:
                lines.append("\nRatios to one torch gradient: " + ", ".join(
                    f"{k} {v / t['torch gradient']:.1f}x" for k, v in t.items() if k != "torch gradient" and "numpy" not in k and "scipy" not in k))
            lines.append("")
            if not args.no_memory:
                for name, fn in ours.items():
                    memory_rows.append((config, np.dtype(dtype).name, x.shape[0], name, traced_peak(fn)))
    if not args.no_memory:
        lines += ["#### tracemalloc peak of each ewc_ref method (NumPy allocations; BLAS work buffers are not traced)", "",
                  "| configuration | dtype | N | method | peak MiB |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {d} | {n} | {m} | {p / 2**20:.1f} |" for c, d, n, m, p in memory_rows]
        lines += ["", "#### diag peak memory against N (784-256-256-10, float64, random data)", "",
                  "| N | diag empirical MiB | diag exact MiB | x MiB |", "|---|---|---|---|"]
        peaks = {}
        for n in (1000, 10000, 30000):
            model, x, y = problem("784-256-256-10", np.float64, n)
            lik = Categorical()
            e = traced_peak(lambda: er.fisher(model, lik, x, y, "empirical", "diag"))
            f = traced_peak(lambda: er.fisher(model, lik, x, y, "exact", "diag"))
            peaks[n] = (e, f)
            lines.append(f"| {n} | {e / 2**20:.2f} | {f / 2**20:.2f} | {x.nbytes / 2**20:.1f} |")
        e_ratio, f_ratio = (peaks[10000][i] / peaks[1000][i] for i in range(2))
        lines += ["", f"Peak N = 10,000 / N = 1,000: empirical {e_ratio:.3f}, exact {f_ratio:.3f} "
                  f"(goal <= 1.10: {'met' if max(e_ratio, f_ratio) <= 1.1 else 'MISSED'})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per method (median)")
    parser.add_argument("--configs", nargs="+", default=["64-128-128-10", "784-256-256-10", "64-64-10"])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], type=np.dtype)
    parser.add_argument("--n", type=int, default=10000, help="rows of random data for 784-256-256-10")
    parser.add_argument("--no-torch", action="store_true", help="only ewc_ref and numpy")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc measurements")
    parser.add_argument("--output", type=Path, help="write the markdown report here as well")
    args = parser.parse_args(argv)
    report = run(args)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
