"""The figures committed under derivations/figures/ are the ones the code computes today.

derivations/ embeds the PNGs of ``ewc-ref figures --out derivations/figures`` and quotes numbers
from their ``.npz`` files. These tests recompute each figure's arrays and compare them with the
committed ``.npz``, so a change to the code that moves a figure fails here until the figures are
regenerated (the command above). The accuracy matrices are checked by derivations/06, which runs
the same configuration anyway.

Tolerance: the same code with the same seeds reproduces every array bit for bit on one machine
(measured). We allow 1e-9 relative (1e-12 absolute for entries near zero) so that a different
BLAS summation order passes and a changed computation does not.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ewc_ref import figures
from ewc_ref.io import read_npz

FIGURE_DIR = Path(__file__).resolve().parents[2] / "derivations" / "figures"


@pytest.mark.parametrize("name", ["laplace", "trajectories", "estimators", "regions", "ellipses"])
def test_committed_figure_data_match_a_fresh_computation(name):
    stored = read_npz(FIGURE_DIR / f"{name}.npz")
    fresh = figures.DATA[name]()
    assert set(stored) == set(fresh), f"{name}.npz keys differ: regenerate with `ewc-ref figures --out derivations/figures`"
    for key, value in fresh.items():
        np.testing.assert_allclose(stored[key], np.asarray(value, dtype=np.float64), rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name}.npz[{key!r}]")


def test_every_figure_has_its_data_and_the_pngs_stay_small():
    pngs = sorted(FIGURE_DIR.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(figures.FIGURES)
    assert all((FIGURE_DIR / f"{p.stem}.npz").is_file() for p in pngs)
    assert sum(p.stat().st_size for p in pngs) < 1_000_000


def test_images_embedded_in_the_pages_exist():
    pages = sorted(FIGURE_DIR.parent.glob("*.md"))
    embedded = {(page.name, target) for page in pages
                for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8"))}
    assert {target for _, target in embedded} == {f"figures/{name}.png" for name in figures.FIGURES}
    for page, target in embedded:
        assert (FIGURE_DIR.parent / target).is_file(), f"{page} embeds a missing {target}"
