"""Time and peak memory of compression bombs and of a real 1 GiB array, read by ewc_ref (issues 15 and 25).

Every bomb is a small file (KB to a few MB) of valid zip layout that inflates to 1-2 GiB of zeros:

=================  =======================================================================================
case               file and command
=================  =======================================================================================
npz                data.npz whose x is 1 GiB of zeros with the wrong column count: ``inspect MODEL BOMB``
idx                train-images-idx3-ubyte.gz of (1369000, 28, 28) zeros with 5 labels: ``demo --data-dir``
weight-deflate     model.npz with a valid 2 x 2^26 float64 weight (1 GiB) of zeros, deflate: ``inspect BOMB``
weight-bzip2       the same, bzip2
weight-lzma        the same, lzma
bzip2-header       a bzip2 member whose header declares 2^27 float64 in a layout the model refuses (1-d
                   weight): refused from its header, which zipfile's reader inflates whole to reach
data-1.25g         data.npz with a valid x (55924053, 3) float64 of zeros (1.25 GiB): ``inspect MODEL BOMB``
compare-2g         two full curvature files of 16384 x 16384 zeros (2 GiB each): ``compare A B``
real-1g-stored     a REAL 1 GiB float64 array (random normal, x of a data file), stored: ``read_npz`` and
real-1g-deflate    ``load_data`` in a child; the goal is a peak of at most 1.3 GiB (1.2 x the array + Python)
real-1g-model      a model.npz with a REAL 2 x 2^26 float64 weight (1 GiB), stored: ``inspect MODEL``
=================  =======================================================================================

Usage::

    python benchmarks/bench_bombs.py                          # every case, the ewc_ref on PYTHONPATH
    python benchmarks/bench_bombs.py --root OLDTREE --only weight-bzip2   # another checkout
    python benchmarks/bench_bombs.py --limit-gib 6 --timeout 150          # the defaults
    python benchmarks/bench_bombs.py --allow-ratio --only weight-bzip2    # the ratio cap lifted

Each case runs in a fresh child whose address space is capped at --limit-gib (so a bomb that would
take the machine down fails with MemoryError instead) and that is killed after --timeout seconds.
Prints, per case: size on disk, wall time, peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``
ru_maxrss, measured by a wrapper process around the child) and the outcome. Never run two
1 GiB cases at once on a shared machine: the cases run one after another.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

GIB = 1024**3
CHUNK = 16 * 1024**2


def _npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    """A version 1.0 .npy header (numpy's own writer)."""
    import io

    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue()


def _member(archive: zipfile.ZipFile, name: str, shape: tuple, fill=None, descr: str = "<f8") -> None:
    """Stream KEY.npy of `shape` into `archive`: zeros, or fill(n_bytes) -> bytes chunks (never all in memory)."""
    count = int(np.prod(shape, dtype=np.int64)) * np.dtype(descr).itemsize
    with archive.open(name, "w", force_zip64=True) as handle:
        handle.write(_npy_header(shape, descr))
        zeros = bytes(CHUNK)
        written = 0
        while written < count:
            n = min(CHUNK, count - written)
            handle.write(fill(n) if fill else zeros[:n])
            written += n


def _small(archive: zipfile.ZipFile, arrays: dict) -> None:
    import io

    for key, value in arrays.items():
        stream = io.BytesIO()
        np.lib.format.write_array(stream, np.asarray(value), allow_pickle=False)
        archive.writestr(f"{key}.npy", stream.getvalue())


META = {"__activation__": np.array("relu"), "__likelihood__": np.array("categorical")}


def _model_3_inputs(folder: Path) -> Path:
    np.savez(folder / "model.npz", **{"0.weight": np.ones((2, 3)), "0.bias": np.zeros(2)}, **META)
    return folder / "model.npz"


def make_npz(folder: Path):
    model = _model_3_inputs(folder)
    d = 8
    np.savez_compressed(folder / "bomb.npz", x=np.zeros((GIB // (8 * d), d)), y=np.zeros(GIB // (8 * d), np.uint8))
    return ["inspect", str(model), str(folder / "bomb.npz")], folder / "bomb.npz"


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(header)
        for start in range(0, array.shape[0], 100_000):
            handle.write(array[start : start + 100_000].tobytes())


def make_idx(folder: Path):
    _idx(folder / "train-images-idx3-ubyte.gz", np.zeros((1_369_000, 28, 28), np.uint8))
    _idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    _idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    return ["demo", "--data-dir", str(folder)], folder / "train-images-idx3-ubyte.gz"


def _weight_bomb(method: int):
    def make(folder: Path):
        bomb = folder / "model.npz"
        with zipfile.ZipFile(bomb, "w", compression=method) as archive:
            _member(archive, "0.weight.npy", (2, GIB // 16))
            _small(archive, {"0.bias": np.zeros(2), **META})
        return ["inspect", str(bomb)], bomb

    return make


def make_bzip2_header(folder: Path):
    bomb = folder / "model.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_BZIP2) as archive:
        _member(archive, "0.weight.npy", (2**27,))  # a 1-d weight: refused from the header
        _small(archive, {"0.bias": np.zeros(2), **META})
    return ["inspect", str(bomb)], bomb


def make_data_125(folder: Path):
    model = _model_3_inputs(folder)
    n = int(1.25 * GIB) // 24
    bomb = folder / "data.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _member(archive, "x.npy", (n, 3))
        _member(archive, "y.npy", (n,), descr="|u1")
    return ["inspect", str(model), str(bomb)], bomb


def make_compare_2g(folder: Path):
    p = 16384
    paths = []
    for name in ("a.npz", "b.npz"):
        with zipfile.ZipFile(folder / name, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _member(archive, "full.npy", (p, p))
            _small(archive, {"__structure__": np.array("full"), "__estimator__": np.array("exact")})
        paths.append(str(folder / name))
    return ["compare", *paths], folder / "a.npz"


_READ_REAL = """
import sys, time, resource
import ewc_ref as er
from ewc_ref import safe_files
start = time.perf_counter()
arrays = safe_files.read_npz(sys.argv[1])
read = time.perf_counter() - start
peak_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
del arrays
x, y = er.load_data(sys.argv[1])
print(f"read_npz {read:.1f} s (peak {peak_read:.3f} GiB); then load_data x {x.shape} {x.nbytes / 1024**3:.2f} GiB")
"""


def _real(method: int):
    def make(folder: Path):
        rng = np.random.default_rng(0)
        path = folder / "real.npz"
        rows = GIB // 64

        def fill(n):
            return rng.standard_normal(n // 8).tobytes()

        with zipfile.ZipFile(path, "w", compression=method, compresslevel=1 if method else None) as archive:
            _member(archive, "x.npy", (rows, 8), fill=fill)
            _small(archive, {"y": np.zeros(rows, np.uint8)})
        return ["-c", _READ_REAL, str(path)], path

    return make


def make_real_model(folder: Path):
    """A model.npz whose one weight is a REAL 2 x 2^26 float64 array (1 GiB, stored): ``inspect MODEL``."""
    rng = np.random.default_rng(0)
    path = folder / "model.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        _member(archive, "0.weight.npy", (2, GIB // 16), fill=lambda n: rng.standard_normal(n // 8).tobytes())
        _small(archive, {"0.bias": np.zeros(2), **META})
    return ["inspect", str(path)], path


CASES = {
    "npz": make_npz,
    "idx": make_idx,
    "weight-deflate": _weight_bomb(zipfile.ZIP_DEFLATED),
    "weight-bzip2": _weight_bomb(zipfile.ZIP_BZIP2),
    "weight-lzma": _weight_bomb(zipfile.ZIP_LZMA),
    "bzip2-header": make_bzip2_header,
    "data-1.25g": make_data_125,
    "compare-2g": make_compare_2g,
    "real-1g-stored": _real(zipfile.ZIP_STORED),
    "real-1g-deflate": _real(zipfile.ZIP_DEFLATED),
    "real-1g-model": make_real_model,
}

# The wrapper: caps the child's address space, runs it, reports the child's peak RSS (ru_maxrss, KiB).
_WRAPPER = """
import resource, subprocess, sys, time
limit = int(sys.argv[1]); timeout = float(sys.argv[2]); argv = sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = time.perf_counter()
try:
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=cap, timeout=timeout)
    code, err, out = done.returncode, done.stderr, done.stdout
except subprocess.TimeoutExpired as expired:
    code, err, out = "timeout", (expired.stderr or b"").decode(errors="replace"), ""
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
last = (out.strip().splitlines() or [""])[-1] if code == 0 and out.strip() else (err.strip().splitlines() or [""])[-1]
print(f"{code}\\t{seconds:.2f}\\t{peak}\\t{last[:220]}")
"""


def measure(argv: list[str], root: str | None, limit_gib: float, timeout: float,
            allow_ratio: bool = False) -> tuple[str, float, float, str]:
    """(exit status, seconds, peak RSS in GiB, last line) of the child running `argv`."""
    env = dict(os.environ)
    if allow_ratio:  # the ratio cap lifted: what the streaming reader and the budget alone cost
        env["EWC_REF_ALLOW_COMPRESSION_RATIO"] = "1"
    if root:
        env["PYTHONPATH"] = root
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if argv[0] == "-c":
        child = [sys.executable, *argv]
    else:
        child = [sys.executable, "-c", "import sys; from ewc_ref.cli import main; sys.exit(main(sys.argv[1:]))", *argv]
    wrapper = [sys.executable, "-c", _WRAPPER, str(int(limit_gib * GIB)), str(timeout), *child]
    done = subprocess.run(wrapper, env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    code, seconds, peak_kib, last = done.stdout.rstrip("\n").split("\t", 3)
    return code, float(seconds), int(peak_kib) / 1024**2, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="PYTHONPATH of the ewc_ref to measure (default: as imported)")
    parser.add_argument("--only", choices=tuple(CASES), action="append", default=None)
    parser.add_argument("--limit-gib", type=float, default=6.0, help="address-space cap of each child (default 6)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds before a child is killed (default 150)")
    parser.add_argument("--folder", default=None, help="where to build the files (default: a temporary folder)")
    parser.add_argument("--allow-ratio", action="store_true", help="set EWC_REF_ALLOW_COMPRESSION_RATIO=1 in the child")
    args = parser.parse_args()
    for name in args.only or CASES:
        with tempfile.TemporaryDirectory(dir=args.folder) as folder:
            built = time.perf_counter()
            argv, bomb = CASES[name](Path(folder))
            built = time.perf_counter() - built
            code, seconds, peak, last = measure(argv, args.root, args.limit_gib, args.timeout, args.allow_ratio)
            print(f"{name:<16} {bomb.stat().st_size / 1e6:9.3f} MB  exit {code:<7} {seconds:7.2f} s  "
                  f"peak RSS {peak:6.3f} GiB  (built in {built:.0f} s) | {last}", flush=True)


if __name__ == "__main__":
    main()
