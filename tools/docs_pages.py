"""Run the code of README.md and docs/*.md as written, and write their transcripts back.

One engine for the test (tests/docs/test_docs.py: a page must run and read as the engine would write it)
and the regeneration script (tools/regen_docs.py: rewrites the transcripts). The blocks of a page
run in order in one fresh working folder, so a later block sees the files an earlier one wrote.

What runs (fences of CommonMark, indented up to 3 spaces, e.g. inside a list):

================  ==============================================================================
```python         executed in one namespace per page (cwd = the working folder); must not raise
```sh / ```bash   every line run by bash -e; must exit 0 (output not compared)
transcript        a fence (any info) whose first line starts with ``$ ``: each ``$ COMMAND`` is run by
                  bash; the lines after it up to the next ``$ `` are its output: stdout, plus stderr
                  when the exit status is not 0 (progress on stderr is never shown)
anything else     shown, not run (```text, ```json, synopses and tables in bare fences)
================  ==============================================================================

Directives are HTML comments (invisible when rendered):

* ``<!-- not run: REASON -->`` as the last non-blank line before a fence: the block is not run, for
  REASON (required; e.g. it installs software, needs torch). ``<!-- test-command -->`` (the
  README's test command, run by .ci/run) counts as one.
* ``<!-- docs: files NAME=PATH ... -->`` on a line of its own anywhere on the page: PATH (relative to the repository)
  is copied to NAME in the working folder before the first block runs. The files a page's commands
  name are real files of the repository, found through this line.
* ``<!-- docs: slow -->`` on a line of its own: the page's test carries the ``docs_slow`` marker.

The working folder also links every top-level entry of the repository (``tests/``, ``examples/``,
...), so repository paths in commands resolve; ``ewc-ref`` and ``python`` run this checkout with
the interpreter running the engine.

Numbers in transcripts (`lines_differ`) match when |page - now| <= RTOL |now| + one unit in the
last digit the page prints (integers: exactly): printed values differ by rounding of the last digit
across BLAS builds; wall-clock times (``12.9 s``) are not compared; everything else must match exactly. The regenerated page ends
with a line naming the versions it was made with (`VERSIONS_MARK`); that line is not compared.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RTOL = 1e-6
VERSIONS_MARK = "<!-- versions: written by tools/regen_docs.py -->"
PYTHON_INFOS = {"python", "py", "python3"}
SHELL_INFOS = {"sh", "bash", "shell", "console"}

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*(?:not run:\s*(?P<reason>.*?)|(?P<test>test-command))\s*-->\s*$")
# Directives stand on a line of their own (a directive quoted in the text, in backticks, is not one).
_FILES = re.compile(r"^\s*<!--\s*docs:\s*files\s+(?P<pairs>[^\n]*?)-->\s*$", re.M)
_SLOW = re.compile(r"^\s*<!--\s*docs:\s*slow\s*-->\s*$", re.M)
_SECONDS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(\s?s)\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


@dataclass
class Block:
    """One fenced block: lines are 1-based line numbers of the page (fence lines)."""

    open_line: int
    close_line: int
    indent: str
    info: str
    body: list[str]
    not_run: str | None = None

    @property
    def kind(self) -> str:
        first = next((line for line in self.body if line.strip()), "")
        if first.startswith("$ "):
            return "transcript"
        if self.info in PYTHON_INFOS:
            return "python"
        if self.info in SHELL_INFOS:
            return "shell"
        return "display"

    @property
    def runnable(self) -> bool:
        return self.kind != "display"


@dataclass
class Page:
    path: Path
    text: str
    blocks: list[Block]
    files: dict[str, str] = field(default_factory=dict)
    slow: bool = False

    @property
    def name(self) -> str:
        return self.path.relative_to(REPO).as_posix() if self.path.is_relative_to(REPO) else str(self.path)


def pages(repo: Path = REPO) -> list[Path]:
    """README.md and every docs/*.md: the pages whose code must run."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def parse(path: Path, text: str | None = None) -> Page:
    """The blocks and directives of a Markdown page. An unclosed fence raises ValueError."""
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent, start = match["fence"], match["indent"], i
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: code fence is never closed")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[start + 1:i]]
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        directive = _NOT_RUN.match(before)
        reason = None
        if directive:
            reason = ".ci/run runs the README's test command in a fresh copy" if directive["test"] else directive["reason"]
        blocks.append(Block(start + 1, i + 1, indent, match["info"], body, reason))
        i += 1
    files = {}
    for found in _FILES.finditer(text):
        for pair in found["pairs"].split():
            name, _, source = pair.partition("=")
            files[name] = source
    return Page(path, text, blocks, files, bool(_SLOW.search(text)))


# ---------------------------------------------------------------------------------- running
def _shims(folder: Path) -> dict[str, str]:
    """An environment whose `python` and `ewc-ref` are this interpreter and this checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, line in (("python", f'exec "{sys.executable}" "$@"'),
                       ("python3", f'exec "{sys.executable}" "$@"'),
                       ("ewc-ref", f'exec "{sys.executable}" -m ewc_ref.cli "$@"')):
        shim = folder / name
        shim.write_text(f"#!/bin/sh\n{line}\n")
        shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("EWC_REF_DEBUG", None)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def prepare(page: Page, work: Path) -> None:
    """Fill the working folder: links to the repository's top-level entries, then the page's files."""
    work.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name not in page.files and not (work / entry.name).exists():
            (work / entry.name).symlink_to(entry)
    for name, source in page.files.items():
        origin = REPO / source
        if not origin.is_file():
            raise FileNotFoundError(f"{page.name}: docs files directive names {source}, which does not exist")
        shutil.copyfile(origin, work / name)


def _commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of a transcript; a trailing backslash continues a command."""
    pairs: list[tuple[str, list[str]]] = []
    lines = iter(block.body)
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + "\n" + next(lines, "")
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(line.rstrip())
    return [(command, _trim(output)) for command, output in pairs]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


class BlockFailed(AssertionError):
    """A block did not run as written; the message names the page and line."""


def run_page(page: Page, work: Path) -> dict[int, list[tuple[str, list[str]]]]:
    """Run every runnable block of `page` in `work`; return {open_line: [(command, output)]} of transcripts.

    Raises BlockFailed at the first python block that raises or shell block that fails.
    """
    prepare(page, work)
    env = _shims(work.parent / f"{work.name}-shims")
    namespace = {"__name__": f"docs.{page.path.stem}"}
    produced: dict[int, list[tuple[str, list[str]]]] = {}
    for block in page.blocks:
        if not block.runnable or block.not_run is not None:
            continue
        where = f"{page.name}:{block.open_line}"
        if block.kind == "python":
            code = compile("\n" * block.open_line + textwrap.dedent("\n".join(block.body)) + "\n", str(page.path), "exec")
            with _inside(work), contextlib.redirect_stdout(io.StringIO()):
                try:
                    exec(code, namespace)
                except Exception as error:
                    raise BlockFailed(f"{where}: the python block raised {type(error).__name__}: {error}") from error
        elif block.kind == "shell":
            done = subprocess.run(["bash", "-e", "-c", "\n".join(block.body)], cwd=work, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise BlockFailed(f"{where}: the shell block exited {done.returncode}:\n{done.stderr[-3000:]}")
        else:
            results = []
            for command, _expected in _commands(block):
                done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
                output = done.stdout + (done.stderr if done.returncode != 0 else "")
                results.append((command, _trim([line.rstrip() for line in output.splitlines()])))
            produced[block.open_line] = results
    return produced


@contextlib.contextmanager
def _inside(folder: Path):
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------------------------- writing
def versions_line(torch: bool = False) -> str:
    """The visible line naming the versions a page's transcripts were written with."""
    import numpy
    import scipy

    from ewc_ref import __version__

    parts = [f"ewc_ref {__version__}", f"Python {platform.python_version()}", f"NumPy {numpy.__version__}",
             f"SciPy {scipy.__version__}"]
    return (f"*The transcripts on this page were written by `python tools/regen_docs.py` with "
            f"{', '.join(parts)}; numbers are compared with the program's in the test suite (tests/docs/test_docs.py).*")


def regenerate(page: Page, produced: dict[int, list[tuple[str, list[str]]]]) -> str:
    """The page's text with every transcript replaced by what its commands print now."""
    lines = page.text.splitlines()
    for block in sorted(page.blocks, key=lambda b: -b.open_line):
        if block.open_line not in produced:
            continue
        body = []
        for command, output in produced[block.open_line]:
            body.append(block.indent + "$ " + command.replace("\n", "\\\n"))
            body += [block.indent + line if line else "" for line in output]
        lines[block.open_line:block.close_line - 1] = body
    if produced:
        if VERSIONS_MARK in lines:
            index = lines.index(VERSIONS_MARK)
            lines[index + 1:index + 2] = [versions_line()]
        else:
            lines += ["", VERSIONS_MARK, versions_line()]
    return "\n".join(lines) + "\n"


def _unit(number: str) -> float:
    """One unit in the last printed digit of `number`; 0 for an integer (compared exactly)."""
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def line_matches(page_line: str, new_line: str) -> bool:
    """True when the lines agree: text exactly, numbers to RTOL plus one unit of the page's last digit.

    A wall-clock time (a number followed by ``s``, as in ``total 12.9 s`` or ``(0.3s)``) is not compared.
    """
    page_line, new_line = _SECONDS.sub(r"<time>\2", page_line), _SECONDS.sub(r"<time>\2", new_line)
    page_numbers, new_numbers = _NUMBER.findall(page_line), _NUMBER.findall(new_line)
    if _NUMBER.split(page_line) != _NUMBER.split(new_line) or len(page_numbers) != len(new_numbers):
        return False
    return all(abs(float(a) - float(b)) <= RTOL * abs(float(b)) + _unit(a) for a, b in zip(page_numbers, new_numbers, strict=True))


def lines_differ(page_text: str, new_text: str) -> list[str]:
    """The differing lines of two versions of a page (numbers to tolerance; the versions line ignored)."""
    old, new = page_text.splitlines(), new_text.splitlines()
    for text in (old, new):
        if VERSIONS_MARK in text:
            del text[text.index(VERSIONS_MARK) + 1]
    if len(old) != len(new):
        import difflib

        return list(difflib.unified_diff(old, new, "page", "program", lineterm="", n=1))[:80]
    return [f"line {n}:\n  page:    {a}\n  program: {b}" for n, (a, b) in enumerate(zip(old, new, strict=True), start=1)
            if a != b and not line_matches(a, b)]
