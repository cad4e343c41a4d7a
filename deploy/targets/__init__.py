"""Where a model is measured: this machine, a board over SSH, or an Android phone over adb.

``parse_target("local" | "ssh://user@host[:port]" | "adb" | "adb:SERIAL")`` returns a target
with ``bench(model, threads, protocol, data=None) -> dict`` in the device agent's JSON schema
(see :mod:`deploy.ontarget.agent`). Torch-free.

One module per concept:

- ``base``: the :class:`Target` protocol, :class:`TargetError`, the agent's answers.
- ``local``: :class:`LocalTarget` runs the agent in a fresh Python process.
- ``ssh``: :class:`SSHTarget` copies the agent (the torch-free ``deploy/ontarget`` package)
  once a session through ``ssh`` and keeps it serving JSON-line requests (models inline).
- ``adb``: :class:`AdbTarget` pushes the ``.tflite`` and a user-supplied TFLite
  ``benchmark_model`` binary to ``/data/local/tmp`` and parses its output
  (:func:`parse_benchmark_model`).

Failures raise :class:`TargetError` with one line that names the fix.
"""

from __future__ import annotations

import contextlib
import threading
from urllib.parse import urlparse

from deploy.targets.adb import AdbTarget, parse_benchmark_model
from deploy.targets.base import Target, TargetError, one_batch_at_a_time
from deploy.targets.local import LocalTarget
from deploy.targets.ssh import SSHTarget
from ofa.errors import InputError

__all__ = ["Target", "TargetError", "LocalTarget", "SSHTarget", "AdbTarget", "parse_target",
           "parse_benchmark_model", "start_in_background", "one_batch_at_a_time"]


def start_in_background(target: Target, runtime: str) -> threading.Thread:
    """Run ``target.start(runtime)`` in a daemon thread: the device logs in, starts its agent
    and imports the runtime (seconds on a small board) while this machine still imports
    torch and exports the first models. A failure here is dropped: the caller's own
    ``start`` (which waits for this one) tries again and raises it."""

    def run() -> None:
        with contextlib.suppress(TargetError):
            target.start(runtime)

    th = threading.Thread(target=run, name="device-start", daemon=True)
    th.start()
    return th


def parse_target(spec: str, python: str = "python3", insecure: bool = False,
                 known_hosts: str | None = None, identity: str | None = None,
                 benchmark_binary: str | None = None) -> Target:
    """``local`` | ``ssh://user@host[:port]`` | ``adb`` | ``adb:SERIAL`` -> a target.

    Raises:
        ValueError: an unknown or malformed target.
    """
    if spec == "local":
        return LocalTarget()
    if spec == "adb" or spec.startswith("adb:"):
        return AdbTarget(spec[4:] or None, benchmark_binary)
    if spec.startswith("ssh://"):
        u = urlparse(spec)
        if not u.hostname:
            raise InputError(f"target {spec!r}: expected ssh://user@host[:port]")
        try:
            port = u.port or 22
        except ValueError:
            raise InputError(f"target {spec!r}: bad port") from None
        return SSHTarget(u.username, u.hostname, port, python=python, insecure=insecure,
                         known_hosts=known_hosts, identity=identity)
    raise InputError(f"unknown target {spec!r}; use local, ssh://user@host[:port], adb[:serial]")
