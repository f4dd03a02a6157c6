"""Run the fenced ```python blocks of every derivations/*.md file as tests.

Each Markdown file is one test module. Its ```python blocks run in order, in one namespace per
file (so a later block sees the arrays an earlier block computed), each block as one test item
named after the line where it starts::

    derivations/04_fisher.md::block 3 (line 87) PASSED

A failing block is reported with the Markdown file and line: the code is compiled with the
.md file as its filename and padded so that traceback line numbers are the file's own line
numbers (pytest shows the failing line from the .md file itself). Blocks after a failing one
in the same file are not run (they would fail for the wrong reason) and are reported as
skipped with the line of the block that failed; the file as a whole has already failed.
Under pytest-xdist a block whose predecessors ran in another process runs them first in its
own (each block at most once per process), so ``-n 2`` gives the same results.

Only fences whose info string is exactly ``python`` run. Use ```text, ```latex or a bare
fence for anything that should be shown but not executed.

Run them with the rest of the suite (``python -m pytest -q``; pyproject's testpaths include
derivations/) or alone: ``python -m pytest -q derivations``.
"""

from __future__ import annotations

import re
import traceback

import pytest

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


def extract_python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text as (first code line number, code), in order.

    Line numbers are 1-based line numbers of the text. A fence closes with a fence of the
    same character that is at least as long (CommonMark). An unclosed fence raises ValueError.
    """
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info, open_line = match.group("fence"), match.group("info"), i + 1
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"line {open_line}: code fence {fence}{info} is never closed")
        if info == "python":
            blocks.append((open_line + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


class MarkdownFile(pytest.File):
    """One .md file: its python blocks, run in one shared namespace."""

    def collect(self):
        text = self.path.read_text(encoding="utf-8")
        self.namespace = {"__name__": f"derivations.{self.path.stem}", "__file__": str(self.path)}
        self.failed_at: int | None = None
        self.blocks: list[MarkdownBlock] = []
        self.ran: set[int] = set()  # blocks executed in this process's namespace
        for index, (line, code) in enumerate(extract_python_blocks(text), start=1):
            block = MarkdownBlock.from_parent(self, name=f"block {index} (line {line})", line=line, code=code)
            block.index = index - 1
            self.blocks.append(block)
            yield block


class MarkdownBlockError(Exception):
    """A block raised; carries the formatted traceback restricted to the .md file's frames."""


class MarkdownBlock(pytest.Item):
    def __init__(self, *, line: int, code: str, **kwargs):
        super().__init__(**kwargs)
        self.line, self.code = line, code

    def runtest(self):
        parent: MarkdownFile = self.parent
        # Under pytest-xdist the blocks of one file may be split between processes: the earlier
        # blocks this one builds on are run here first (each block at most once per process).
        for block in parent.blocks[: self.index + 1]:
            if parent.failed_at is not None:
                pytest.skip(f"not run: the block at {self._where()}:{parent.failed_at} failed")
            if block.index not in parent.ran:
                block.execute()

    def execute(self):
        parent: MarkdownFile = self.parent
        # Pad with newlines so the compiled code's line numbers are the .md file's line numbers.
        compiled = compile("\n" * (self.line - 1) + self.code, str(self.path), "exec")
        try:
            exec(compiled, parent.namespace)
        except Exception as error:
            parent.failed_at = self.line
            raise MarkdownBlockError(self._format(error)) from error
        parent.ran.add(self.index)

    def _format(self, error: BaseException) -> str:
        frames = traceback.extract_tb(error.__traceback__)
        ours = [i for i, frame in enumerate(frames) if frame.filename == str(self.path)]
        where = frames[ours[-1]].lineno if ours else self.line
        text = self.path.read_text(encoding="utf-8").splitlines()
        source = text[where - 1].strip() if 0 < where <= len(text) else ""
        # The traceback from the block's first frame on (the collector's own frame is noise).
        shown = frames[ours[0]:] if ours else frames
        detail = "".join(traceback.format_list(shown)) + "".join(traceback.format_exception_only(type(error), error))
        return (
            f"{self._where()}:{where}: {type(error).__name__}: {error}\n"
            f"    {source}\n"
            f"(block starting at line {self.line})\n\n{detail}"
        )

    def _where(self) -> str:
        try:
            return str(self.path.relative_to(self.config.rootpath))
        except ValueError:
            return str(self.path)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MarkdownBlockError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.line - 1, f"{self._where()}:{self.line}"


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".md":
        return MarkdownFile.from_parent(parent, path=file_path)
    return None
