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
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ofa.cli.args import CliError
from ofa.errors import InputError
from ofa.fileio import clear_interrupts, note_interrupt
from ofa.lifetime import quiet_peer_errors

__all__ = ["main", "build_parser", "COMMANDS", "CliError"]

#: command modules of this package, in the order ``ofa --help`` lists them
COMMANDS = ("space", "train", "import-ofa-supernet", "import-ofa-specialized", "eval", "lut",
            "predictor", "search", "finetune", "export", "bench", "deploy", "run")


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
        mod = importlib.import_module(f"ofa.cli.{name.replace('-', '_')}_cmd")
        cmd = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(cmd)
        cmd.set_defaults(handler=mod.run)
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that every ``finally``/``except
    BaseException`` cleans up exactly as on Ctrl-C."""


def _on_signal(signum: int, frame: object) -> None:
    note_interrupt(signum)  # remembered, in case a library swallows the exception
    sys.excepthook = quiet_peer_errors  # helper threads whose peer died with the signal
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


BUG_EXIT = 70  # EX_SOFTWARE (sysexits.h): an internal error, not the user's input


def _expected(exc: BaseException) -> bool:
    """An expected failure, reported in one line: bad input (:class:`ofa.errors.
    InputError`, the target side's ``TargetInputError``, a malformed table), a file that
    cannot be read or written (``OSError``), a device that cannot measure (``TargetError``)
    or lacks its runtime. The device classes are looked up only where their modules were
    imported (``ofa --help`` imports none of them)."""
    kinds: list[type] = [CliError, InputError, OSError]
    for mod, name in (("deploy.ontarget.errors", "TargetInputError"),
                      ("deploy.targets.base", "TargetError"),
                      ("deploy.ontarget.runtimes", "RuntimeMissing")):
        if mod in sys.modules:
            kinds.append(getattr(sys.modules[mod], name))
    return isinstance(exc, tuple(kinds))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; the exit code:
    0 done, 2 bad input or an expected failure (one line on stderr, :func:`_expected`), 70
    a bug (the traceback, then one line saying so), 130 interrupted by SIGINT, 143 by
    SIGTERM (temporary files removed, partial outputs resumable)."""
    args = build_parser().parse_args(argv)
    clear_interrupts()
    main_thread = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
           } if main_thread else {}
    try:
        return args.handler(args)
    except KeyboardInterrupt as exc:
        print("ofa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:
        if not _expected(exc):  # a bug: the traceback, and a line that says so
            traceback.print_exc()
            print(f"ofa {args.command}: this is a bug in ofa-edge, not a problem with your "
                  f"input ({type(exc).__name__}); please report it with the traceback above",
                  file=sys.stderr)
            return BUG_EXIT
        lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        # a data-loading worker's error arrives as "Caught InputError in DataLoader worker
        # process 0" + its traceback: the last line is the error itself
        msg = lines[-1].split(": ", 1)[-1] if lines[0].startswith("Caught ") else lines[0]
        print(f"ofa {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
