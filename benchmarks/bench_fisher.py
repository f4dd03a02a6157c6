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
categorical likelihood; float64 and float32; 2 threads.

Two measurements of every figure (issue 18):

* **isolated** (the headline): each library in its own fresh Python process (``--worker``), the
  processes alternating over ``--rounds`` rounds (order reversed every other round) so load
  from other processes hits all alike. A worker reports its first call (what a user's script
  that calls once pays, JIT and page faults included) and the median of its warm calls.
  Group ``ewc_ref+torch`` times ewc_ref in a process that imported torch and ran one torch
  gradient first: the import-state check of the in-process vs fresh-process difference.
* **in-process** (second column): every library in this one process, interleaved per round,
  median of ``--repeats`` (torch's and numpy's thread pools then share the process).

Prints a markdown report (stdout, or --output FILE) that starts with the goals table.

Run (torch, backpack-for-pytorch, curvlinops-for-pytorch are optional: the `bench` extra)::

    python benchmarks/bench_fisher.py --quick                       # ~1 minute: float64 diag rows
    python benchmarks/bench_fisher.py --rounds 3 --output report.md  # the complete run
"""

from __future__ import annotations

import argparse
import os
import sys

THREADS = "2"
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, THREADS)  # before numpy/torch are imported

import datetime  # noqa: E402
import json  # noqa: E402
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
    """Every thread pool threadpoolctl sees in this process, with the package that shipped it.

    The owner is read from the library's path (numpy.libs, scipy.libs, torch/lib): numpy and scipy
    each bring their own OpenBLAS (scipy's is loaded by ``import scipy.special``, which ewc_ref
    imports), torch its OpenMP runtime (its BLAS is linked in and invisible to threadpoolctl).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = []
    for info in threadpool_info():
        path = info.get("filepath") or ""
        owner = next((name for name in ("numpy", "scipy", "torch") if f"/{name}" in path), Path(path).name or "?")
        what = f"{info.get('internal_api')} {info.get('version') or ''}".strip()
        if info.get("architecture"):
            what += f" kernel={info['architecture']}"
        parts.append(f"{owner}'s {what} threads={info.get('num_threads')}")
    return "; ".join(parts) or "no thread pool found by threadpoolctl"


def torch_loaded() -> str:
    """'torch loaded' or 'torch not loaded' in this process (sys.modules)."""
    return "torch loaded" if "torch" in sys.modules else "torch not loaded"


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


def reference_methods(model, x, y, full: bool, mods, skip_torch_func: bool = False):
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
    if skip_torch_func:
        return _extension_methods(model, X, Y, net, loss_fn, full, mods, refs)
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
    return _extension_methods(model, X, Y, net, loss_fn, full, mods, refs)


def _extension_methods(model, X, Y, net, loss_fn, full, mods, refs):
    """BackPACK and curvlinops methods (when installed) added to refs."""
    torch = mods["torch"]
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


def torch_matmul_peak(mods, dtype, repeats: int) -> float:
    """The same 2000 x 2000 product by torch, whose BLAS is linked into torch (not numpy's)."""
    torch = mods["torch"]
    n = 2000
    a = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n)).astype(dtype))
    seconds = interleaved_medians({"mm": lambda: a @ a}, repeats)["mm"]
    return 2 * n**3 / seconds / 1e9


# --------------------------------------------------------------------------- isolated processes
GROUPS = {
    # group: (needs torch, methods it times; names as in the in-process table)
    "ewc_ref": (False, ["ewc_ref gradient", "ewc_ref diag empirical", "ewc_ref diag exact", "ewc_ref HVP", "ewc_ref GGNVP"]),
    "ewc_ref+torch": (True, ["ewc_ref gradient", "ewc_ref diag empirical", "ewc_ref diag exact"]),
    "backpack": (True, ["torch gradient", "BackPACK SumGradSquared", "BackPACK DiagGGNExact"]),
    "curvlinops": (True, ["curvlinops HVP", "curvlinops GGNVP"]),
}


def worker(args) -> int:
    """One fresh process: build one group's methods, time the first call and `--calls` warm calls; print JSON."""
    needs_torch, names = GROUPS[args.worker]
    mods = torch_modules() if needs_torch else {}
    model, x, y = problem(args.configs[0], args.dtypes[0], args.n)
    methods = {f"ewc_ref {k}": fn for k, fn in ewc_methods(model, x, y, False).items()}
    if needs_torch:
        refs = reference_methods(model, x, y, False, mods, skip_torch_func=True)
        refs.pop("_backpack_net", None)
        if args.worker == "ewc_ref+torch":
            refs["torch gradient"]()  # torch's thread pool and allocator are live before ewc_ref runs
        methods |= refs
    out = {}
    for name in names:
        fn = methods.get(name)
        if fn is None:
            continue
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        warm = []
        for _ in range(args.calls):
            t = time.perf_counter()
            fn()
            warm.append(time.perf_counter() - t)
        out[name] = {"first": first, "warm": float(np.median(warm))}
    # after the calls, so lazily loaded libraries count; a numpy-only group must not have torch
    if not needs_torch and "torch" in sys.modules:
        raise RuntimeError(f"worker {args.worker}: torch was imported, so this is not a numpy-only process")
    out["blas"] = f"{args.worker}: {blas_info()}; {torch_loaded()}"
    print(json.dumps(out))
    return 0


def isolated(config: str, dtype, args, groups) -> dict:
    """{group: {method: {"first": [per round], "warm": [per round]}}} from fresh processes, alternating."""
    results = {g: {} for g in groups}
    for round_ in range(args.rounds):
        for group in (groups if round_ % 2 == 0 else groups[::-1]):
            command = [sys.executable, __file__, "--worker", group, "--configs", config, "--dtypes", np.dtype(dtype).name,
                       "--n", str(args.n), "--calls", str(args.calls)]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode != 0:
                print(f"[bench] worker {group} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            data = json.loads(done.stdout.strip().splitlines()[-1])
            for name, item in data.items():
                if name == "blas":
                    results[group]["blas"] = item
                    continue
                entry = results[group].setdefault(name, {"first": [], "warm": []})
                entry["first"].append(item["first"])
                entry["warm"].append(item["warm"])
    return results


def full_peak_memory(sizes=(64, 218, 10)) -> tuple[int, int, float]:
    """(P, tracemalloc peak bytes, seconds) of one fisher(empirical, full) at P = 16,360 on the digits."""
    model, x, y = problem("-".join(map(str, sizes)), np.float64, 0)
    tracemalloc.start()
    try:
        t = time.perf_counter()
        er.fisher(model, Categorical(), x, y, "empirical", "full")
        seconds = time.perf_counter() - t
        return model.n_params, tracemalloc.get_traced_memory()[1], seconds
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- report
def fmt_s(t):
    return "n/a" if t is None else (f"{t:.3f}" if t >= 0.01 else f"{t * 1e3:.2f} ms")


def _median(values):
    return float(np.median(values)) if values else None


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}"


# (configuration, numerator, denominator, goal): the goals of issue 18, checked on the isolated figures
GOALS = [
    ("784-256-256-10", "ewc_ref diag exact", "ewc_ref gradient", 2.0),
    ("784-256-256-10", "ewc_ref diag exact", "BackPACK DiagGGNExact", 0.25),
    ("784-256-256-10", "ewc_ref diag empirical", "BackPACK SumGradSquared", 0.65),
    ("64-128-128-10", "ewc_ref diag empirical", "BackPACK SumGradSquared", 0.5),
    ("64-128-128-10", "ewc_ref diag exact", "BackPACK DiagGGNExact", 0.5),
]

# rows of the per-configuration table: (ewc_ref method, reference)
ROWS = [("gradient", "torch gradient"), ("diag empirical", "BackPACK SumGradSquared"),
        ("diag empirical", "torch.func vmap(grad) diag"), ("diag exact", "BackPACK DiagGGNExact"),
        ("HVP", "curvlinops HVP"), ("GGNVP", "curvlinops GGNVP")]
FULL_ROWS = [("full empirical", "numpy G.T @ G (G built)"), ("full empirical", "numpy gemm G.T @ G.copy() (G built)"),
             ("full empirical", "torch.func vmap(grad) + G^T G")]


def run(args) -> str:
    mods = torch_modules() if not args.no_torch else {}
    groups = ["ewc_ref"] if args.no_torch else (["ewc_ref", "backpack"] if args.quick else list(GROUPS))
    head = [f"### Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
            f"- machine: {machine()}", f"- versions: {versions()}",
            f"- BLAS (threadpoolctl): {blas_info()}",
            "- OPENBLAS_CORETYPE=" + os.environ.get("OPENBLAS_CORETYPE", "(unset)")
            + ", OPENBLAS_L2_SIZE=" + os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
            f"- threads: {os.environ.get('OMP_NUM_THREADS')} (OMP/OpenBLAS/MKL/numba), torch "
            f"{mods['torch'].get_num_threads() if 'torch' in mods else '-'}; numba kernels: {kernels.USE_NUMBA}",
            f"- load average at start: {os.getloadavg()[0]:.2f} (1 min) / {os.getloadavg()[1]:.2f} (5 min)",
            f"- isolated: groups {', '.join(groups)}, {args.rounds} alternating rounds of one fresh process each, "
            f"{args.calls} warm calls per process after the first; in-process: median of up to {args.repeats} interleaved repeats", ""]
    for dtype in args.dtypes:
        head.append(f"- numpy matmul peak, {np.dtype(dtype).name}: {matmul_peak(dtype, args.repeats):.1f} GFLOP/s"
                    + (f"; torch's (its own BLAS, the bound on any ratio to BackPACK): "
                       f"{torch_matmul_peak(mods, dtype, args.repeats):.1f} GFLOP/s" if "torch" in mods else ""))
    head.append("")
    body, memory_rows, goal_figures = [], [], {}
    for config in args.configs:
        for dtype in args.dtypes:
            model, x, y = problem(config, dtype, args.n)
            full = model.n_params <= 5000 and not args.quick
            print(f"[bench] {config} {np.dtype(dtype).name}: isolated, {args.rounds} rounds", file=sys.stderr)
            iso = isolated(config, dtype, args, groups)
            fresh = {}  # method -> (warm median over rounds, first-call median) from its own group
            own_group = {"ewc_ref": "ewc_ref", "backpack": "backpack", "curvlinops": "curvlinops"}
            for group, data in iso.items():
                if group not in own_group:
                    continue
                for name, entry in data.items():
                    if name != "blas":
                        fresh[name] = (_median(entry["warm"]), _median(entry["first"]))
            t = {}
            notes = []
            if not args.no_in_process:
                print(f"[bench] {config} {np.dtype(dtype).name}: in-process", file=sys.stderr)
                ours = ewc_methods(model, x, y, full)
                refs = reference_methods(model, x, y, full, mods, skip_torch_func=args.quick)
                notes = cross_check(model, x, y, refs, mods)
                refs.pop("_backpack_net", None)
                t = interleaved_medians({f"ewc_ref {k}": fn for k, fn in ours.items()} | refs, args.repeats)
                if not args.no_memory:
                    for name, fn in ours.items():
                        memory_rows.append((config, np.dtype(dtype).name, x.shape[0], name, traced_peak(fn)))
            dt = np.dtype(dtype).name
            if dt == "float64":
                for name, (warm, _) in fresh.items():
                    goal_figures[(config, name)] = warm
                for name, value in t.items():
                    goal_figures.setdefault((config, "in-process " + name), value)
            g_iso, g_in = fresh.get("ewc_ref gradient", (None, None))[0], t.get("ewc_ref gradient")
            body += [f"#### {config}, N = {x.shape[0]}, P = {model.n_params}, {dt}", ""]
            body += [f"- {note}" for note in notes]
            body += ["", "| method | reference | ewc_ref s (isolated, warm) | first call s | x ewc_ref gradient | reference s (isolated) "
                     "| ratio (isolated) | ewc_ref s (in-process) | reference s (in-process) | ratio (in-process) |",
                     "|---|---|---|---|---|---|---|---|---|---|"]
            for method, ref in ROWS + (FULL_ROWS if full else []):
                name = f"ewc_ref {method}"
                ours_w, ours_first = fresh.get(name, (None, None))
                ref_w = fresh.get(ref, (None, None))[0]
                ours_in, ref_in = t.get(name), t.get(ref)
                if (ours_w is None and ours_in is None) or (ref_w is None and ref_in is None and method != "HVP" and method != "GGNVP"):
                    continue  # not measured in this run (--quick leaves out torch.func and curvlinops)
                x_grad = _ratio(ours_w, g_iso) if ours_w is not None else _ratio(ours_in, g_in)
                body.append(f"| {method} | {ref} | {fmt_s(ours_w)} | {fmt_s(ours_first)} | {_fmt_ratio(x_grad)} | {fmt_s(ref_w)} | "
                            f"{_fmt_ratio(_ratio(ours_w, ref_w))} | {fmt_s(ours_in)} | {fmt_s(ref_in)} | {_fmt_ratio(_ratio(ours_in, ref_in))} |")
            blas_seen = sorted({data.get("blas") for data in iso.values() if data.get("blas")})
            if blas_seen:
                body.append("\nThread pools in the isolated workers after their calls (threadpoolctl): " + " | ".join(blas_seen))
            if "ewc_ref+torch" in iso:
                side = iso["ewc_ref+torch"]
                body.append("\newc_ref in a fresh process that imported torch and ran one torch gradient first (import state): "
                            + ", ".join(f"{k.removeprefix('ewc_ref ')} {fmt_s(_median(v['warm']))} (first {fmt_s(_median(v['first']))})"
                                        for k, v in side.items() if k != "blas"))
            body.append("")
    goals = ["#### Goals of issue 18 (float64, isolated processes, warm median; in-process in brackets)", "",
             "| configuration | figure | goal | measured | verdict |", "|---|---|---|---|---|"]
    for config, num, den, goal in GOALS:
        r = _ratio(goal_figures.get((config, num)), goal_figures.get((config, den)))
        r_in = _ratio(goal_figures.get((config, "in-process " + num)), goal_figures.get((config, "in-process " + den)))
        if r is None and r_in is None:
            continue
        verdict = "n/a" if r is None else ("met" if r <= goal else f"MISSED by {100 * (r / goal - 1):.0f}%")
        goals.append(f"| {config} | {num.removeprefix('ewc_ref ')} / {den.removeprefix('ewc_ref ')} | <= {goal} | "
                     f"{_fmt_ratio(r)} [{_fmt_ratio(r_in)}] | {verdict} |")
    if args.full_memory:
        print("[bench] full peak memory at P = 16,360", file=sys.stderr)
        p, peak, seconds = full_peak_memory()
        ratio = peak / (8 * p * p)
        goals.append(f"| 64-218-10 digits | full empirical tracemalloc peak / P x P matrix (P = {p}) | <= 1.3 | {ratio:.3f} "
                     f"({peak / 2**20:.0f} MiB, {seconds:.1f} s) | {'met' if ratio <= 1.3 else 'MISSED'} |")
    goals.append("")
    lines = head + goals + body
    if memory_rows:
        lines += ["#### tracemalloc peak of each ewc_ref method (NumPy allocations; BLAS work buffers are not traced)", "",
                  "| configuration | dtype | N | method | peak MiB |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {d} | {n} | {m} | {p / 2**20:.1f} |" for c, d, n, m, p in memory_rows]
        lines.append("")
    lines.append(f"- load average at end: {os.getloadavg()[0]:.2f} (1 min)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="in-process interleaved repeats per method (median)")
    parser.add_argument("--rounds", type=int, default=3, help="isolated: alternating rounds of fresh processes")
    parser.add_argument("--calls", type=int, default=5, help="isolated: warm calls per process after the first")
    parser.add_argument("--configs", nargs="+", default=["64-128-128-10", "784-256-256-10", "64-64-10"])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], type=np.dtype)
    parser.add_argument("--n", type=int, default=10000, help="rows of random data for 784-256-256-10")
    parser.add_argument("--no-torch", action="store_true", help="only ewc_ref and numpy")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc measurements")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process column")
    parser.add_argument("--full-memory", action="store_true", help="also the full-structure peak at P = 16,360 (~1 min)")
    parser.add_argument("--quick", action="store_true",
                        help="~1 minute: float64, 64-128-128-10 and 784-256-256-10, ewc_ref and BackPACK, 2 rounds")
    parser.add_argument("--worker", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="write the markdown report here as well")
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args)
    if args.quick:
        args.configs, args.dtypes = ["64-128-128-10", "784-256-256-10"], [np.dtype("float64")]
        args.rounds, args.calls, args.repeats, args.no_memory = 2, 3, 3, True
    report = run(args)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
