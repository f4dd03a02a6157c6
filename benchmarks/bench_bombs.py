"""Peak memory of the two compression bombs of issue 15 (item 4), read by the ewc-ref CLI.

Each bomb is ~1 MB on disk and ~1 GiB of zeros once inflated, with a layout the command
refuses (so the command exits 2 either way; the question is how much it inflated first):

- npz: ``data.npz`` (np.savez_compressed) whose x is (134217728 / d, d) float64 zeros for a model
  with 3 inputs: ``ewc-ref inspect model.npz bomb.npz``.
- idx: ``train-images-idx3-ubyte.gz`` of (1369000, 28, 28) zero bytes with 5 labels:
  ``ewc-ref demo --data-dir DIR``.

Usage::

    python benchmarks/bench_bombs.py                 # the installed ewc_ref
    python benchmarks/bench_bombs.py --root OLDTREE  # another checkout (PYTHONPATH=OLDTREE)

Prints, per bomb: size on disk, exit status, stderr's last line and the child's peak RSS
(GNU ``/usr/bin/time -f %M``, one fresh child per bomb).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GIB = 1024**3


def make_npz_bomb(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    np.savez(folder / "model.npz", **{"0.weight": rng.standard_normal((2, 3)), "0.bias": np.zeros(2),
                                      "__activation__": np.array("relu"), "__likelihood__": np.array("categorical")})
    d = 8
    np.savez_compressed(folder / "bomb.npz", x=np.zeros((GIB // (8 * d), d)), y=np.zeros(GIB // (8 * d), np.uint8))
    return ["inspect", str(folder / "model.npz"), str(folder / "bomb.npz")], folder / "bomb.npz"


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(header)
        for start in range(0, array.shape[0], 100_000):
            handle.write(array[start : start + 100_000].tobytes())


def make_idx_bomb(folder: Path) -> list[str]:
    _idx(folder / "train-images-idx3-ubyte.gz", np.zeros((1_369_000, 28, 28), np.uint8))
    _idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    _idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    return ["demo", "--data-dir", str(folder)], folder / "train-images-idx3-ubyte.gz"


def measure(argv: list[str], root: str | None) -> tuple[int, str, float]:
    """(exit status, last stderr line, peak RSS in GiB) of `ewc-ref ARGV` in a fresh child,
    the peak as GNU time's %M (maximum resident set size, KiB)."""
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = root
    script = "import sys; from ewc_ref.cli import main; sys.exit(main(sys.argv[1:]))"
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        code = ["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-c", script, *argv]
        done = subprocess.run(code, env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
        peak_kib = int(rss.read().split()[-1])
    lines = done.stderr.strip().splitlines() or [""]
    return done.returncode, lines[-1][:160], peak_kib / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="PYTHONPATH of the ewc_ref to measure (default: installed)")
    parser.add_argument("--only", choices=("npz", "idx"), default=None)
    args = parser.parse_args()
    makers = {"npz": make_npz_bomb, "idx": make_idx_bomb}
    for name, maker in makers.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            argv, bomb = maker(Path(folder))
            status, last, peak = measure(argv, args.root)
            print(f"{name}: {bomb.stat().st_size / 1e6:.2f} MB on disk, exit {status}, peak RSS {peak:.3f} GiB | {last}")


if __name__ == "__main__":
    main()
