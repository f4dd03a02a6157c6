"""The Markdown collector of derivations/conftest.py: it runs blocks, and it fails when a block fails.

The derivations are tests only if a wrong statement in them makes CI red, so the collector is
run here on temporary .md files in a subprocess (a fresh pytest, its own rootdir).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DERIVATIONS = Path(__file__).resolve().parents[2] / "derivations"


def _collector():
    spec = importlib.util.spec_from_file_location("derivations_conftest", DERIVATIONS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_pytest(tmp_path: Path, markdown: str, *select: str):
    folder = tmp_path / "derivations"
    folder.mkdir()
    shutil.copy(DERIVATIONS / "conftest.py", folder / "conftest.py")
    (folder / "doc.md").write_text(textwrap.dedent(markdown), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *(select or ["derivations"])],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


def test_extract_python_blocks_lines_and_fences():
    text = textwrap.dedent(
        """\
        # t
        ```python
        a = 1
        ```
        ```text
        not code
        ```
        ````python
        b = 2
        ```
        still inside the four-backtick fence
        ````
        """
    )
    blocks = _collector().extract_python_blocks(text)
    assert [line for line, _ in blocks] == [3, 9]
    assert blocks[0][1] == "a = 1\n"
    assert blocks[1][1] == "b = 2\n```\nstill inside the four-backtick fence\n"


def test_unclosed_fence_is_an_error():
    with pytest.raises(ValueError, match="line 2: code fence"):
        _collector().extract_python_blocks("x\n```python\na = 1\n")


def test_blocks_share_one_namespace_and_pass(tmp_path):
    result = _run_pytest(tmp_path, """\
        ```python
        value = 41
        ```
        ```python
        assert value + 1 == 42
        ```
        """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_block_run_alone_runs_its_predecessors_first(tmp_path):
    """What pytest-xdist does when it sends block 3 to another process than blocks 1-2."""
    doc = """\
        ```python
        value = 40
        ```
        ```python
        value += 1
        ```
        ```python
        assert value + 1 == 42, value
        ```
        """
    result = _run_pytest(tmp_path, doc, "derivations/doc.md::block 3 (line 8)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_failing_block_fails_with_file_and_line(tmp_path):
    result = _run_pytest(tmp_path, """\
        # A derivation with a false statement

        ```python
        import numpy as np
        x = np.ones(3)
        ```

        ```python
        total = x.sum()
        assert total == 4.0, f"sum is {total}"
        ```

        ```python
        never_reached = True
        ```
        """)
    assert result.returncode == 1, result.stdout + result.stderr
    # The assertion is on line 10 of doc.md; the block starts on line 9.
    assert "derivations/doc.md:10: AssertionError: sum is 3.0" in result.stdout
    assert "(block starting at line 9)" in result.stdout
    assert "1 failed, 1 passed, 1 skipped" in result.stdout
    assert "not run: the block at derivations/doc.md:9 failed" in result.stdout


def test_an_exception_inside_a_library_call_points_at_the_md_line(tmp_path):
    result = _run_pytest(tmp_path, """\
        ```python
        import numpy as np
        np.linalg.cholesky(-np.eye(2))
        ```
        """)
    assert result.returncode == 1
    assert "derivations/doc.md:3: LinAlgError" in result.stdout


def test_every_derivation_has_python_blocks():
    files = sorted(DERIVATIONS.glob("[0-9][0-9]_*.md")) + [DERIVATIONS / "ERRATA.md"]
    existing = [f for f in files if f.exists()]
    assert existing, "derivations/ has no numbered .md files"
    extract = _collector().extract_python_blocks
    for path in existing:
        assert extract(path.read_text(encoding="utf-8")), f"{path.name} has no ```python block"
