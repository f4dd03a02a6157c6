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

Two output guards every command passes: `guard_output`, which ewc_ref/cli.py applies to -o of
every command before it runs (-o may not be an input, compared by device and inode, so links and
other spellings of the path count, nor an existing device, FIFO, socket or folder; the inputs are
every parsed argument that names an existing path, found by `input_paths`), and `write_json`,
the one JSON writer (strictly valid JSON: NaN and +-inf become null, each named with its reason
under the key "non_finite").

Checks that need the data (a batch size <= N) stay in the library, which names its Python
argument; `flags_named` relabels those errors with the flag the user typed.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from ..jsonio import json_text


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


def _check_name_lengths(path: Path) -> None:
    """ArgumentTypeError when a component of `path` or the whole is longer than the file system allows."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        name_max = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
        path_max = os.pathconf(folder if folder.is_dir() else ".", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > name_max or len(os.fsencode(str(path))) >= path_max:
        raise argparse.ArgumentTypeError(
            f"name too long ({longest} bytes in one component, the file system allows {name_max})")


def output_file(text: str) -> Path:
    """Type for an output file: fails before any work if it could not be written."""
    path = Path(text)
    _check_name_lengths(path)
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file name")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(f"folder {folder} of {path} does not exist")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{path}: {error.strerror or error}") from None
    return path


def output_folder(text: str) -> Path:
    """Type for an output folder (created if missing): the name must be one the file system takes."""
    path = Path(text)
    _check_name_lengths(path)
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
    from ..atomic import atomic_output

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


def guard_output(output, inputs: dict, *, folder: bool = False) -> None:
    """The one output guard of every command (called by ewc_ref/cli.py, never by a command).

    ValueError naming -o when `output`
    - is the same file as one of `inputs` (label -> path): os.path.samefile compares device and
      inode, so ``./d.npz``, ``../dir/d.npz``, ``.//d.npz``, a symbolic link or a hard link all count;
      with `folder`, an input inside the output folder counts too (the command writes there);
    - exists and is not a regular file (a device, FIFO, socket; a folder, unless `folder`), which a
      rename would silently replace;
    - with `folder`, exists and is not a folder.
    A path that does not exist yet cannot be an input.
    """
    if output is None:
        return
    output = Path(output)
    try:
        exists = os.path.lexists(output)
        mode = os.stat(output).st_mode if os.path.exists(output) else None
    except OSError as error:
        raise ValueError(f"-o {output}: {error.strerror or error}") from None
    if folder:
        if exists and (mode is None or not stat.S_ISDIR(mode)):
            raise ValueError(f"-o {output}: exists and is not a folder")
    elif mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise ValueError(f"-o {output}: is {kind}; expected a regular file or a new name")
    if mode is None:
        return
    for label, path in inputs.items():
        if not os.path.exists(path):
            continue
        if os.path.samefile(output, path):
            raise ValueError(f"-o {output}: is the same file as the input {label} {path}; refusing to overwrite an input")
        if folder and _inside(os.path.realpath(path), os.path.realpath(output)):
            raise ValueError(f"-o {output}: the input {label} {path} is inside this output folder; refusing to write over it")


def _exists(path) -> bool:
    """os.path.exists that says False for names the system cannot even look up (too long, NUL)."""
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def _inside(path: str, folder: str) -> bool:
    """True when the real path `path` lies in the real folder `folder`."""
    return os.path.commonpath([path, folder]) == folder


def input_paths(args) -> dict:
    """label -> path of every argument the user gave that names an existing file or folder (not -o).

    The command line's inputs are found from what was parsed, not from a list each command keeps,
    so a new command (or a new input flag) is guarded without declaring anything.
    """
    found = {}
    for dest, value in vars(args).items():
        if dest == "output" or dest.startswith("_"):
            continue
        items = list(value) if isinstance(value, list | tuple) else [value]
        for index, item in enumerate(items):
            if isinstance(item, str | os.PathLike) and str(item) and _exists(item):
                found[dest.upper() if len(items) == 1 else f"{dest.upper()}[{index}]"] = item
    return found


def write_json(value: dict) -> None:
    """Print `value` as one line of strictly valid JSON (RFC 8259): the one JSON writer of every command.

    A non-finite number is never printed: it becomes null, and the object gains the key
    ``"non_finite"``, {JSON path: 'nan' | 'inf' | '-inf'}, the reason for each such null
    (docs/file-format.md, section 9; ``ewc_ref.io.json_text``, also behind every ``to_json()``).
    A quantity that is the command's answer is refused before it gets here (e.g. laplace's log
    evidence, ewc_ref.bayes.evidence).
    """
    if not isinstance(value, dict):
        raise TypeError(f"value: expected a dict (one JSON object), got {type(value).__name__}")
    sys.stdout.write(json_text(value) + "\n")
