"""The argparse types every subcommand shares, so each flag is validated once and its error names it.

A type turns the flag's text into a value or raises ``argparse.ArgumentTypeError``; the parser
(ewc_ref/cli.py) prints that as ``ewc-ref CMD: error: --flag: expected ..., got ...`` and exits 2.

=================  ==========================================================================
integer(lo, hi)    an integer in [lo, hi] (hi optional): --epochs, --batch-size, --seed (lo 0)
number(lo, hi)     a finite float in an interval, each end open or closed: --lr, --gamma
number_list(lo)    comma-separated numbers >= lo: --sweep-lambda
output_file        a file name whose folder exists and that is not a folder: -o/--output
add_output, add_report_output, add_json, add_quiet: the flags every command spells the same way
=================  ==========================================================================

Two output guards every command that writes or prints uses: `refuse_input_as_output` (-o may
not be the same file as an input, compared by device and inode, so links and other spellings of
the path count) and `write_json` (strictly valid JSON: NaN and +-inf become null).

Checks that need the data (a batch size <= N) stay in the library, which names its Python
argument; `flags_named` relabels those errors with the flag the user typed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path


def integer(low: int, high: int | None = None):
    """Type for an integer flag in [low, high]: ``--epochs 0`` -> 'expected an integer >= 1, got 0'."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected an integer <= {high}, got {value}")
        return value

    return parse


def _interval(low, high, open_low, open_high) -> str:
    if high is None:
        return f"a finite number {'>' if open_low else '>='} {low:g}"
    return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def number(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False):
    """Type for a float flag in an interval; NaN and inf are refused."""
    expected = _interval(low, high, open_low, open_high)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        inside = math.isfinite(value) and (value > low if open_low else value >= low)
        if high is not None:
            inside = inside and (value < high if open_high else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def number_list(low: float):
    """Type for 'a,b,c': a tuple of finite numbers >= low (an empty list is refused)."""
    one = number(low)

    def parse(text: str) -> tuple[float, ...]:
        values = tuple(one(part) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= {low:g}, got {text!r}")
        return values

    return parse


def output_file(text: str) -> Path:
    """Type for an output file: fails before any work if it could not be written."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {folder} of {path} does not exist")
    return path


def add_output(parser, *, help: str, required: bool = True, type=output_file, **kwargs) -> None:
    """The one -o/--output flag of every command that writes something."""
    parser.add_argument("-o", "--output", required=required, help=help, type=type, **kwargs)


def add_report_output(parser) -> None:
    """-o/--output for the commands whose product is their report (inspect, compare, diagnose, demo)."""
    add_output(parser, required=False, default=None, metavar="FILE",
               help="write the report (text, or JSON with --json) to FILE instead of stdout")


@contextmanager
def report_to(path):
    """Send stdout to `path` (written atomically, only if the block succeeds), or leave it alone."""
    if path is None:
        yield
        return
    from ..io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w") as stream, redirect_stdout(stream):
        yield


def add_json(parser, what: str = "the report") -> None:
    """The one --json flag of every command that reports something."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON object on stdout")


def add_quiet(parser) -> None:
    """The one --quiet flag of every command."""
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


@contextmanager
def flags_named(**flags: str):
    """Relabel a library error 'name: ...' as '--flag: ...' for each name=--flag given."""
    try:
        yield
    except (ValueError, TypeError) as error:
        name, colon, rest = str(error).partition(": ")
        if not colon or name not in flags:
            raise
        kind = ValueError if isinstance(error, ValueError) else TypeError
        raise kind(f"{flags[name]}: {rest}") from error


def refuse_input_as_output(output, **inputs) -> None:
    """ValueError naming -o when `output` is the same file as one of `inputs` (label=path).

    Same file means os.path.samefile (st_dev and st_ino), so ``./model.npz``, a symbolic link to
    it or a hard link all count; a path that does not exist yet cannot be an input.
    """
    if output is None or not os.path.exists(output):
        return
    for label, path in inputs.items():
        if path is not None and os.path.exists(path) and os.path.samefile(output, path):
            raise ValueError(f"-o {output}: is the same file as the input {label} {path}; refusing to overwrite an input")


def strict_json(value):
    """`value` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_json(value) -> None:
    """Print `value` as one line of strictly valid JSON (RFC 8259: no NaN or Infinity; they become null)."""
    sys.stdout.write(json.dumps(strict_json(value), allow_nan=False) + "\n")
