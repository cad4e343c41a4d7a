"""The one command-line entry point, ``ofa`` (the application layer).

Each command is a module of this package that defines its own arguments beside its handler
(``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``) and hands plain values
to the layer that does the work; heavy imports happen inside the handlers, so ``ofa --help``
imports no torch. Arguments are checked when parsed (:mod:`ofa.cli.args`); any expected
failure ends with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from ofa.cli.args import CliError

__all__ = ["main", "build_parser", "COMMANDS", "CliError"]

#: command modules of this package, in the order ``ofa --help`` lists them
COMMANDS = ("space", "train", "eval", "lut", "predictor", "search", "export", "bench", "deploy",
            "run")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ofa train: error: argument --batch-size: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ofa`` parser: one sub-parser per command module."""
    p = _Parser(prog="ofa", description="ofa-edge: train a Once-for-All supernet once, then "
                "search, export and measure its subnets for edge devices.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"ofa.cli.{name}_cmd")
        cmd = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(cmd)
        cmd.set_defaults(handler=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("ofa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ofa {args.command}: error: {msg}", file=sys.stderr)
        return 2
