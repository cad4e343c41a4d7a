"""Atomic file writes (temp file in the same folder + ``os.replace``) and the record of an
interrupt (SIGINT/SIGTERM) that a library may have swallowed. Torch-free."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ofa.errors import InputError

__all__ = ["atomic_write", "atomic_write_dir", "atomic_write_text", "atomic_write_json",
           "read_json", "note_interrupt", "clear_interrupts", "check_interrupted"]

_INTERRUPTS: list[int] = []  # signals received by this process (see ofa/cli/__init__.py)


def note_interrupt(signum: int) -> None:
    """Record that SIGINT/SIGTERM arrived (the CLI's signal handler calls this)."""
    _INTERRUPTS.append(signum)


def clear_interrupts() -> None:
    """Forget recorded interrupts (a new command starts)."""
    _INTERRUPTS.clear()


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived, even one that a library caught
    (a converter that swallows Ctrl-C must not go on to publish its output).

    Raises:
        KeyboardInterrupt: an interrupt was recorded.
    """
    if _INTERRUPTS:
        raise KeyboardInterrupt


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``; no partial files.
    The file gets the permissions a plain ``open`` would give it (``0666`` less the umask).

    The temp file is removed if ``write`` raises, or if the process was interrupted while it
    ran (:func:`check_interrupted`), in which case ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        check_interrupted()
        if os.path.exists(tmp):  # mkstemp's 0600 -> what open() would give (umask)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_dir(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_folder)``, then rename the folder onto ``path`` (replacing an existing
    one); a hidden temp folder beside ``path`` is removed on any failure or interrupt, so
    ``path`` is either the old folder or the complete new one."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        check_interrupted()
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON with a one-line error naming the file.

    Raises:
        ValueError: missing file or invalid JSON.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON ({exc})") from None
