"""Worker processes that end with their parent, whatever ended it.

Every process the project starts (the converter pool of ``deploy/export.py``, DataLoader
workers of ``ofa/data.py``, the background block conversion of ``ofa run``) calls
:func:`worker_lifetime` first:

- it dies when its parent dies, even by SIGKILL (a job scheduler's time limit, the OOM
  killer): Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), or a watching thread
  that polls the parent elsewhere;
- it ignores SIGINT and holds SIGTERM for up to :data:`TERM_GRACE_S`, so that a signal sent
  to the whole process group (Ctrl-C in a terminal, ``timeout``, many schedulers) is the
  command's to handle: the command cleans up and exits 130 / 143 in one line, and its
  workers follow it through the parent-death signal instead of dying first and turning the
  clean exit into a "worker killed by signal" traceback; a SIGTERM from a parent that stays
  (multiprocessing terminating its workers at exit) ends the worker after the grace;
- a helper thread of the worker whose peer went away (multiprocessing's fd-sharing thread,
  serving a batch to a parent that the group signal is ending) ends without a traceback
  (:func:`quiet_peer_errors`), so that the command's one line stays the last thing printed.

Numpy-free and torch-free; the device agent has its own watch (``deploy/ontarget/agent.py``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["worker_lifetime", "die_with_parent", "lifetime_init", "default_jobs",
           "quiet_peer_errors"]

_PR_SET_PDEATHSIG = 1
TERM_GRACE_S = 5.0  # a worker told to end by SIGTERM waits this long for its parent to go


def die_with_parent(sig: int = signal.SIGKILL, poll_s: float = 1.0,
                    parent: int | None = None) -> str:
    """Make this process receive ``sig`` when its parent exits. Returns how: ``prctl`` on
    Linux, else ``watch`` (a daemon thread that checks the parent every ``poll_s`` seconds
    and ends this process). ``parent``: the pid the parent had when it started this process
    (a worker that takes seconds to start, importing torch, may already have been handed
    to init when it gets here); that parent already gone ends this process at once."""
    parent = parent or os.getppid()
    how = "watch"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if how == "watch":
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(poll_s)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent went between the fork and the prctl
        os.kill(os.getpid(), sig)
    return how


def quiet_peer_errors(kind: type[BaseException], exc: BaseException, tb: object) -> None:
    """A ``sys.excepthook`` for a process whose peers may die under it: a connection that
    broke (``BrokenPipeError``, ``ConnectionError``, ``EOFError``) is dropped without a
    traceback, anything else is printed as usual. multiprocessing's fd-sharing thread
    (``multiprocessing/resource_sharer.py``) reports its errors through ``sys.excepthook``;
    its peer dying with a group signal is no error of this process."""
    if not issubclass(kind, (BrokenPipeError, ConnectionError, EOFError)):
        sys.__excepthook__(kind, exc, tb)  # type: ignore[arg-type]


def worker_lifetime(*_: object, parent: int | None = None) -> None:
    """The first call of every worker process (usable as a ``worker_init_fn`` or a pool
    ``initializer``: positional arguments are ignored): ignore SIGINT/SIGTERM, drop the
    tracebacks of broken connections (:func:`quiet_peer_errors`), die with the
    parent (:func:`die_with_parent`, SIGKILL: the worker holds nothing to clean up that its
    parent does not). ``parent``: the parent's pid as the parent saw it (pass
    ``os.getpid()`` from there, e.g. with :func:`functools.partial`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = quiet_peer_errors  # the worker's peer is its parent, or its parent's
    parent = parent or os.getppid()

    def on_term(signum: int, frame: object) -> None:
        # a group SIGTERM: the parent is ending too and the parent-death signal follows;
        # the parent itself terminating its workers (multiprocessing does at exit) stays
        # alive: then end here, after a grace that a group signal's parent needs to exit
        deadline = time.monotonic() + TERM_GRACE_S
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    die_with_parent(signal.SIGKILL, parent=parent)


def lifetime_init(parent: int | None = None):
    """:func:`worker_lifetime` bound to this process as the parent: the ``worker_init_fn``
    or pool ``initializer`` to give the workers this process starts."""
    import functools

    return functools.partial(worker_lifetime, parent=parent or os.getpid())


def default_jobs() -> int:
    """Worker processes converting models by default (``ofa lut --jobs``, ``ofa run``'s
    steps): the cores; each conversion runs on one thread."""
    return max(1, os.cpu_count() or 1)
