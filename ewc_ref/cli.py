"""The ``ewc-ref`` command line (EXCHANGE.md, "Command line").

Each subcommand lives in ``ewc_ref/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, and one row in COMMANDS.
User errors (ValueError, TypeError, OSError from validation) become one line on
stderr and exit status 2; set EWC_REF_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

# name -> (module, one-line help)
COMMANDS = {
    "inspect": ("ewc_ref.commands.inspect", "print a model's architecture, P, likelihood, loss and accuracy"),
    "demo": ("ewc_ref.commands.demo", "continual learning on digits: SGD vs L2 vs EWC in three scenarios"),
    "diagnose": ("ewc_ref.commands.diagnose", "say which estimator and scale a foreign Fisher file is (or none)"),
    "fisher": ("ewc_ref.commands.fisher", "compute a Fisher / GGN / Hessian estimate and write it as npz"),
    "compare": ("ewc_ref.commands.compare", "compare two curvature npz files (exit 0 match, 1 mismatch, 2 bad input)"),
    "figures": ("ewc_ref.commands.figures", "regenerate the report's figures (PNG + .npz data): laplace, trajectories, accuracy, estimators"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ewc-ref", description="Elastic Weight Consolidation and Fisher information, by reference.")
    parser.add_argument("--version", action="version", version=f"ewc-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, OSError) as error:
        if os.environ.get("EWC_REF_DEBUG"):
            raise
        message = " ".join(str(error).split())
        sys.stderr.write(f"ewc-ref {args.command}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ewc-ref {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
