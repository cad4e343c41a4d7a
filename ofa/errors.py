"""The project's own error for bad input, told apart from a bug.

Code that checks what a user gave (a path, an option, a file's content, a config) raises
:class:`InputError` (a ``ValueError``, so ``except ValueError`` still catches it). The CLI
(``ofa/cli/__init__.py``) prints such an error, and the other expected failures (a missing
file, an unreachable device, a malformed table), as one line with exit code 2; any other
exception is a bug: its traceback is printed with a one-line "this is a bug" note and exit
code 70.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input, reported to the user in one line (what and where)."""
