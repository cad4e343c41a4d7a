"""Latency lookup tables shipped with ofa-edge (package data, read with importlib.resources).

The JSON tables beside this file are installed with the wheel; ``ofa run`` reuses one whose
context (CPU model, space, runtime, threads, precision) matches the machine it runs on. The
format is described in ``docs/formats.md`` and the measurements in ``README.md`` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.resources import as_file, files
from pathlib import Path

__all__ = ["shipped_tables"]


@contextmanager
def shipped_tables() -> Iterator[list[Path]]:
    """The shipped ``*.json`` tables as file-system paths, valid inside the ``with`` block
    (sorted by name)."""
    with ExitStack() as stack:
        entries = sorted((e for e in files(__name__).iterdir() if e.name.endswith(".json")),
                         key=lambda e: e.name)
        yield [stack.enter_context(as_file(e)) for e in entries]
