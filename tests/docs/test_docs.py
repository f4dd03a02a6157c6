"""Docs are tests: README.md and every docs/*.md run as written (tools/docs_pages.py).

* ``test_page_runs_as_written[PAGE]``: the page's python, shell and ``$`` transcript blocks run in
  order in a fresh folder, and the page reads exactly as ``python tools/regen_docs.py PAGE`` would
  write it (numbers to the tolerance of tools/docs_pages.py). A page with ``<!-- docs: slow -->``
  carries the ``docs_slow`` marker: ``-m docs_slow`` selects those, ``-m "not docs_slow"`` skips them.
* every runnable-looking block runs or says why not (``<!-- not run: REASON -->``);
* every ``--help`` names every structure and estimator its command accepts (walked against the
  tables of ewc_ref/curvature/estimators.py and structures.py).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import docs_pages  # noqa: E402

from ewc_ref.cli import COMMANDS, build_parser  # noqa: E402
from ewc_ref.curvature.estimators import ESTIMATORS  # noqa: E402
from ewc_ref.curvature.structures import KFAC_BIASES, STRUCTURES  # noqa: E402

PAGES = docs_pages.pages()


def _page_param(path: Path):
    page = docs_pages.parse(path)
    marks = [pytest.mark.docs_slow] if page.slow else []
    return pytest.param(path, id=page.name, marks=marks)


@pytest.mark.parametrize("path", [_page_param(p) for p in PAGES])
def test_page_runs_as_written(path, tmp_path):
    page = docs_pages.parse(path)
    produced = docs_pages.run_page(page, tmp_path / "work")
    differences = docs_pages.lines_differ(page.text, docs_pages.regenerate(page, produced))
    assert not differences, (f"{page.name} differs from what its commands print; if the program is right, run "
                             f"`python tools/regen_docs.py {page.name}`:\n" + "\n".join(differences))


COMMAND_WORDS = ("ewc-ref ", "python ", "python3 ", "pip ")


@pytest.mark.parametrize("path", PAGES, ids=[docs_pages.parse(p).name for p in PAGES])
def test_every_code_block_runs_or_says_why_not(path):
    page = docs_pages.parse(path)
    problems = []
    for block in page.blocks:
        first = next((line for line in block.body if line.strip()), "")
        if block.not_run is not None and not block.not_run.strip():
            problems.append(f"line {block.open_line}: '<!-- not run: -->' without a reason")
        if block.not_run is not None and not block.runnable:
            problems.append(f"line {block.open_line}: '<!-- not run -->' before a block that would not run anyway")
        if block.kind == "display" and block.info != "text" and first.startswith(COMMAND_WORDS):
            problems.append(f"line {block.open_line}: a command in a bare fence; make it ```sh, a '$ ' transcript, "
                            "or ```text for a synopsis")
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_the_docs_fixtures_exist():
    missing = [f"{docs_pages.parse(p).name}: {name}={source}" for p in PAGES
               for name, source in docs_pages.parse(p).files.items() if not (REPO / source).is_file()]
    assert not missing


# ------------------------------------------------------------------ the engine bites
def _page(tmp_path, text):
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return docs_pages.parse(path)


def test_a_failing_python_block_fails_with_its_line(tmp_path):
    page = _page(tmp_path, """\
        # t
        ```python
        a = 1
        ```
        ```python
        assert a == 2, "wrong"
        ```
        """)
    with pytest.raises(docs_pages.BlockFailed, match=r"page.md:5: the python block raised AssertionError: wrong"):
        docs_pages.run_page(page, tmp_path / "work")


def test_a_failing_shell_block_fails(tmp_path):
    page = _page(tmp_path, "```sh\ntrue\nfalse\ntrue\n```\n")
    with pytest.raises(docs_pages.BlockFailed, match="exited 1"):
        docs_pages.run_page(page, tmp_path / "work")


def test_not_run_needs_the_comment_right_before_the_block(tmp_path):
    page = _page(tmp_path, """\
        <!-- not run: needs torch -->

        ```python
        raise SystemExit("ran")
        ```
        <!-- not run: x -->
        text between
        ```python
        b = 1
        ```
        """)
    assert [b.not_run for b in page.blocks] == ["needs torch", None]
    docs_pages.run_page(page, tmp_path / "work")


def test_a_transcript_is_rewritten_and_a_stale_one_is_found(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    page = _page(tmp_path, """\
        <!-- docs: files copied.txt=tests/fixtures/torch/README.md -->
        ```
        $ python -c "print('P = 2410, error 6.84e-07, p = 0.51')"
        P = 2410, error 6.84e-07, p = 0.24
        $ head -c 4 copied.txt
        # Py
        ```

        <!-- versions: written by tools/regen_docs.py -->
        *written with an old NumPy*
        """)
    produced = docs_pages.run_page(page, tmp_path / "work")
    new = docs_pages.regenerate(page, produced)
    assert "P = 2410, error 6.84e-07, p = 0.51\n$ head -c 4 copied.txt\n# Py\n```" in new
    assert docs_pages.VERSIONS_MARK in new and "NumPy" in new
    differences = docs_pages.lines_differ(page.text, new)
    assert len(differences) == 1 and "p = 0.24" in differences[0] and "p = 0.51" in differences[0]
    assert docs_pages.lines_differ(new, new.replace("NumPy ", "NumPy 0.0.0-")) == []  # the versions line is not compared
    without_versions = new.replace(docs_pages.VERSIONS_MARK, "")
    assert docs_pages.lines_differ(without_versions, new)  # but it must be there


@pytest.mark.parametrize(("page_line", "now", "same"), [
    ("relative error 6.84e-07", "relative error 6.841e-07", True),   # within one unit of the last digit shown
    ("relative error 6.84e-07", "relative error 6.86e-07", False),
    ("p = 0.51", "p = 0.24", False),
    ("p = 0.51", "p = 0.509", True),
    ("P = 2410", "P = 2411", False),                                 # integers exactly
    ("c = 0.0319999709495215", "c = 0.03199997094952153", True),     # RTOL 1e-6
    ("c = 0.0319999709495215", "c = 0.0320001", False),
    ("batched, B = 985 ... 0.714", "batched, B = 985 (on 256 screened entries) ... 0.714", False),
    ("+/- 2.3, ...", "+/- 2.5, ...", False),
])
def test_numbers_match_to_the_stated_tolerance_and_text_exactly(page_line, now, same):
    assert docs_pages.line_matches(page_line, now) is same


# ------------------------------------------------------------------ --help names the tables
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


def _named(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_every_structure_and_estimator_the_command_accepts(command):
    subparser = _subparsers()[command]
    text = subparser.format_help()
    tables = set(ESTIMATORS) | set(STRUCTURES) | set(KFAC_BIASES)
    accepted = {name for action in subparser._actions if action.choices and set(action.choices) <= tables
                for name in action.choices}
    declared = getattr(importlib.import_module(COMMANDS[command][0]), "ACCEPTS", {})
    for kind, names in declared.items():
        table = {"structures": set(STRUCTURES), "estimators": set(ESTIMATORS) | {"shuffled"}}[kind]
        assert set(names) <= table, f"{command}: ACCEPTS[{kind!r}] names {set(names) - table}, not in the table"
        accepted |= set(names)
    missing = sorted(name for name in accepted if not _named(text, name))
    assert not missing, f"`ewc-ref {command} --help` does not name {missing}"


def test_diagnose_and_compare_declare_what_they_read():
    from ewc_ref.curvature.result import THEIRS_STRUCTURES

    assert importlib.import_module(COMMANDS["diagnose"][0]).ACCEPTS["structures"] == THEIRS_STRUCTURES
    assert "kfac" in THEIRS_STRUCTURES and set(ESTIMATORS) <= set(importlib.import_module(COMMANDS["diagnose"][0]).ACCEPTS["estimators"])
    assert importlib.import_module(COMMANDS["compare"][0]).ACCEPTS["structures"] == STRUCTURES


@pytest.mark.parametrize(("page_line", "now", "same"), [
    ("  total 12.9 s", "  total 31.0 s", True),
    ("laplace  figures/laplace.npz (0.3s)", "laplace  figures/laplace.npz (1.2s)", True),
    ("  total 12.9 s", "  total 12.9 samples", False),
    ("5 tasks x 20 epochs", "5 tasks x 21 epochs", False),
])
def test_wall_clock_times_are_not_compared(page_line, now, same):
    assert docs_pages.line_matches(page_line, now) is same


def test_directives_stand_on_their_own_line(tmp_path):
    page = _page(tmp_path, """\
        Write `<!-- docs: files NAME=PATH -->` and `<!-- docs: slow -->` to use them.
        <!-- docs: files a.npz=tests/x.npz b.npz=tests/y.npz -->
        """)
    assert page.files == {"a.npz": "tests/x.npz", "b.npz": "tests/y.npz"} and not page.slow
    assert _page(tmp_path, "text\n<!-- docs: slow -->\n").slow
