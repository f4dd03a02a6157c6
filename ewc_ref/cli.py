"""The ``ewc-ref`` command line (docs/file-format.md, "Command line").

Each subcommand lives in ``ewc_ref/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, an optional OUTPUT_IS_FOLDER = True when -o
names a folder, and one row in COMMANDS. -o is guarded here for every command (never an input:
every argument naming an existing path counts; never an existing device, FIFO or folder). Only the module of
the command being run is imported (``python -X importtime -m ewc_ref.cli inspect --help``).
Flags are validated by the shared argparse types of ``ewc_ref/commands/_args.py``.

Every user error (a bad flag, a bad file, ValueError/TypeError/OSError from validation) goes
through `fail`: one line ``ewc-ref CMD: error: ...`` on stderr, exit status 2. Set
EWC_REF_DEBUG=1 (exactly "1"; any other value is off) to see the traceback and warnings instead.
Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
import warnings

from . import __version__

# name -> (module, one-line help)
COMMANDS = {
    "inspect": ("ewc_ref.commands.inspect", "print a model's architecture, P, likelihood, loss and accuracy"),
    "demo": ("ewc_ref.commands.demo", "continual learning on digits: SGD vs L2 vs EWC in three scenarios"),
    "diagnose": ("ewc_ref.commands.diagnose", "say which estimator and scale a foreign Fisher file is (or none)"),
    "diagnose-penalty": ("ewc_ref.commands.diagnose_penalty", "name a foreign EWC penalty: anchor, Fisher, combination, lambda (or none)"),
    "fisher": ("ewc_ref.commands.fisher", "compute a Fisher / GGN / Hessian estimate and write it as npz"),
    "laplace": ("ewc_ref.commands.laplace", "the Laplace log evidence of a model (laplace-torch's log marginal likelihood)"),
    "compare": ("ewc_ref.commands.compare", "compare two curvature npz files (exit 0 match, 1 mismatch, 2 bad input)"),
    "figures": ("ewc_ref.commands.figures", "regenerate the report's figures (PNG + .npz data): laplace, trajectories, accuracy, estimators"),
}
USER_ERRORS = (ValueError, TypeError, OSError)


def fail(prog: str, error) -> int:
    """Write one line 'PROG: error: MESSAGE' on stderr and return exit status 2."""
    message = " ".join(str(error).split())
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 2


# argparse's usage messages rewritten as 'WHAT: MESSAGE' (docs/file-format.md, section 8), WHAT first.
_USAGE_MESSAGES = (
    (re.compile(r"argument (?P<what>[^:]+): (?P<rest>.*)", re.S), "{what}: {rest}"),
    (re.compile(r"the following arguments are required: (?P<what>.*)", re.S), "{what}: required, not given"),
    (re.compile(r"one of the arguments (?P<what>.*) is required", re.S), "{what}: one of them is required"),
    (re.compile(r"ambiguous option: (?P<what>\S+) could match (?P<rest>.*)", re.S), "{what}: ambiguous, could be {rest}"),
    (re.compile(r"unrecognized arguments: (?P<what>.*)", re.S), "{what}: unrecognized argument"),
)


def usage_message(message: str) -> str:
    """argparse's error `message` as 'WHAT: MESSAGE' naming the flag or argument first."""
    for pattern, form in _USAGE_MESSAGES:
        match = pattern.fullmatch(message)
        if match:
            return form.format(**match.groupdict())
    return message


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors go through `fail`, naming the flag first ('--epochs: ...')."""

    def error(self, message):
        raise SystemExit(fail(self.prog, usage_message(message)))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the descriptions (the tables in the commands' docstrings)."""


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if it is one."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser; only the modules of `commands` (default: all) are imported and given their flags."""
    parser = _Parser(prog="ewc-ref", description="Elastic Weight Consolidation and Fisher information, by reference.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"ewc-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        if commands is not None and name not in commands:
            sub.add_parser(name, help=help_text)  # listed in the help, never parsed
            continue
        module = importlib.import_module(module_name)
        subparser = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                   formatter_class=_HelpFormatter)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run, _output_is_folder=getattr(module, "OUTPUT_IS_FOLDER", False))
    return parser


def main(argv=None) -> int:
    """Run ``ewc-ref ARGV``; returns the exit status (also for usage errors, --help and --version).

    Ctrl-C at any point, including while the command's modules are imported, exits 130 with one
    line and no traceback. Floating-point RuntimeWarnings are silenced: a non-finite result is an
    error the command reports itself (never a number written), and stderr stays one line.
    """
    argv_given = argv
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    prog = "ewc-ref" if command is None else f"ewc-ref {command}"
    debug = os.environ.get("EWC_REF_DEBUG") == "1"
    interrupts = []

    def on_interrupt(signum, frame):
        interrupts.append(signum)
        if len(interrupts) == 1:  # a second Ctrl-C while the first is handled must not raise inside it
            raise KeyboardInterrupt

    # A Ctrl-C inside a C extension's import (numpy's) can surface as an ImportError instead of
    # KeyboardInterrupt; the handler remembers the signal so any exception after it means 130.
    handler = signal.signal(signal.SIGINT, on_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore", RuntimeWarning)
            return _run(argv, command, prog, debug)
    except BaseException as error:
        if not (isinstance(error, KeyboardInterrupt) or interrupts):
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        if handler is not None:
            # As a program (argv None), a Ctrl-C after main returns, while Python shuts down, would
            # kill the process by the signal (exit -2); it exits 130 like any other Ctrl-C instead.
            signal.signal(signal.SIGINT, _exit_interrupted if argv_given is None else handler)


def _exit_interrupted(signum, frame) -> None:
    """SIGINT after the command finished: flush what it wrote, then exit 130 without a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def _run(argv: list[str], command: str | None, prog: str, debug: bool) -> int:
    from .commands._args import guard_output, input_paths

    parser = build_parser([] if command is None else [command])
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        # parse_known_args, so that words nobody recognised are reported under the command's name
        # ('ewc-ref inspect: error: --frobnicate: ...'), not the top-level parser's.
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exit_:  # usage error (already reported by fail), --help or --version
        return exit_.code if isinstance(exit_.code, int) else 2
    if unknown:
        where = f"`{prog} --help` lists the flags" if command else f"a COMMAND comes first: {', '.join(COMMANDS)}"
        return fail(prog, f"{' '.join(unknown)}: unrecognized argument{'s' if len(unknown) > 1 else ''}; {where}")
    if getattr(args, "_run", None) is None:
        return fail(prog, f"COMMAND: required, not given (one of {', '.join(COMMANDS)})")
    try:
        guard_output(getattr(args, "output", None), input_paths(args), folder=args._output_is_folder)
        return int(args._run(args) or 0)
    except USER_ERRORS as error:
        if debug:
            raise
        return fail(prog, error)
    except MemoryError as error:  # numpy's "Unable to allocate ...": one line, not a traceback
        if debug:
            raise
        return fail(prog, f"out of memory: {error or 'MemoryError'}")


if __name__ == "__main__":
    sys.exit(main())
