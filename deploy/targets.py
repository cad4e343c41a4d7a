"""Where a model is measured: this machine, a board over SSH, or an Android phone over adb.

``parse_target("local" | "ssh://user@host[:port]" | "adb" | "adb:SERIAL")`` returns a target
with ``bench(model, threads, protocol, data=None) -> dict`` in the device agent's JSON schema
(see :mod:`deploy.device.agent`). Torch-free.

- :class:`LocalTarget` runs the agent in a fresh Python process.
- :class:`SSHTarget` copies the agent (the torch-free ``deploy/device`` package) and the model
  as a tar stream through ``ssh``, runs ``PYTHON -m deploy.device.agent`` on the device and
  reads its JSON. Host keys are
  checked (``StrictHostKeyChecking=yes`` against known_hosts) unless ``insecure=True``. Every
  remote argument is quoted with :func:`shlex.quote`; no local shell is used.
- :class:`AdbTarget` pushes the ``.tflite`` and a user-supplied TFLite ``benchmark_model``
  binary to ``/data/local/tmp`` and parses its output (:func:`parse_benchmark_model`).

Failures raise :class:`TargetError` with one line that names the fix.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import io
import itertools
import json
import re
import select
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from deploy.device.runtimes import TimingProtocol

__all__ = ["Target", "TargetError", "LocalTarget", "SSHTarget", "AdbTarget", "parse_target",
           "parse_benchmark_model", "start_in_background", "one_batch_at_a_time"]

_PKG = Path(__file__).resolve().parent
_DEVICE = _PKG / "device"


class TargetError(RuntimeError):
    """A target could not measure (unreachable, auth, missing runtime, bad output)."""


class Target(Protocol):
    """Where a model is measured. ``bench`` returns the device agent's JSON (latency in ms
    per invoke, batch 1; ``accuracy`` when ``data`` is given) plus ``"target": name``.

    Raises (``bench``):
        TargetError: the target could not measure.
    """

    name: str

    def check(self) -> None:
        """Fail fast (seconds) when the target cannot be reached; before any export."""
        ...

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]: ...

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """Latency of every model (one runtime), in one device session where the target
        allows it: one entry per model with ``latency_ms`` (the agent's stats)."""
        ...

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`bench_many` of each batch in turn, yielded as each is timed (``batches``
        may still be being exported). Where the target allows it (SSH, a device with a core
        to spare) the next batch is loaded while this one is timed."""
        ...

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """Top-1 of each model on the device, on its evaluation images (``data``: the
        ``eval.npz`` of each model's bundle, ``deploy/bundle.py``): ``{"model", "top1" (%),
        "images"}`` per model, or None where the target runs no accuracy check (adb)."""
        ...

    def start(self, runtime: str) -> None:
        """Get the device ready to time ``runtime``'s models (log in, start the agent,
        import the runtime) while the host exports the first batch; nothing where there is
        nothing to start."""
        ...


def one_batch_at_a_time(target: Target, batches: Iterable[list[Path]], threads: int = 1,
                        protocol: TimingProtocol | None = None
                        ) -> Iterator[list[dict[str, Any]]]:
    """``target.bench_many`` of each batch in turn: :meth:`Target.bench_batches` of a target
    that cannot load one batch while it times another (each row's ``batch`` gains
    ``load_wait_s``, equal to its ``load_s``, and ``prefetched``: false)."""
    for models in batches:
        rows = target.bench_many(models, threads, protocol)
        for r in rows:
            if isinstance(r.get("batch"), dict):
                r["batch"].update(load_wait_s=r["batch"].get("load_s"), prefetched=False)
        yield rows


def _agent_args(models: list[str], threads: int, protocol: TimingProtocol,
                data: str | None) -> list[str]:
    args = [*models, "--json", "--threads", str(threads), "--runs", str(protocol.runs),
            "--warmup", str(protocol.warmup), "--trials", str(protocol.trials)]
    return args + (["--data", data] if data else [])


def _batch_rows(res: dict[str, Any], models: list[Path], where: str) -> list[dict[str, Any]]:
    """One row per model from the agent's batch answer, in order, each with the batch's
    ``device``, ``runtime_version`` and ``backend`` and ``batch``: ``{"size", "load_s",
    "timing_s"}`` (seconds the agent spent loading the models and in the timed trials)."""
    rows = res.get("models", [res] if "model" in res else None)  # one model: the plain answer
    if not isinstance(rows, list) or [r.get("model") for r in rows] != [
            Path(m).name for m in models]:
        raise TargetError(f"{where}: the agent's batch answer does not list the models sent")
    batch = {"size": len(rows), "load_s": res.get("load_s"), "timing_s": res.get("timing_s")}
    for r in rows:
        for k in ("device", "runtime_version", "backend"):
            r.setdefault(k, res.get(k))
        r["batch"] = batch
    return rows


def _agent_error(where: str, msg: str, code: int) -> TargetError:
    """The one-line error for an agent that answered ``msg`` with exit code / ``code`` (3:
    the runtime is not installed on the device)."""
    if code == 3:
        return TargetError(f"{where}: {msg.removeprefix('agent: error: ')} on the device "
                           "(install the device extra there: pip install 'ofa-edge[device]' "
                           "or the runtime's package)")
    return TargetError(f"{where}: agent failed: {msg}")


def _agent_json(proc: subprocess.CompletedProcess, where: str) -> dict[str, Any]:
    if proc.returncode != 0:
        raise _agent_error(where, (proc.stderr.strip().splitlines() or ["no output"])[-1],
                           proc.returncode)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise TargetError(f"{where}: agent printed no JSON") from None


class LocalTarget:
    """This machine; the agent runs in a fresh interpreter (``python``, default: this one)."""

    name = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def check(self) -> None:
        """This machine is always there."""

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        protocol = protocol or TimingProtocol()
        # absolute paths: the agent runs beside the deploy package, not in the caller's cwd
        res = self._agent(_agent_args([str(Path(model).resolve())], threads, protocol,
                                      str(Path(data).resolve()) if data else None))
        res["target"] = "local"
        return res

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """Every model in one agent run (interleaved trials)."""
        protocol = protocol or TimingProtocol()
        args = _agent_args([str(Path(m).resolve()) for m in models], threads, protocol, None)
        return _batch_rows(self._agent(args), models, "local")

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        """One agent run per batch (:func:`one_batch_at_a_time`)."""
        return one_batch_at_a_time(self, batches, threads, protocol)

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """One agent run per model (its one timed invoke is not used)."""
        rows = []
        for m, d in zip(models, data, strict=True):
            acc = self.bench(m, threads, _ONE_INVOKE, data=d)["accuracy"]
            rows.append({"model": Path(m).name, **acc})
        return rows

    def start(self, runtime: str) -> None:
        """Nothing to start: each batch runs in a fresh interpreter here."""

    def _agent(self, args: list[str]) -> dict[str, Any]:
        """Run the agent beside the deploy package with ``args``; its JSON answer."""
        proc = subprocess.run([self.python, "-m", "deploy.device.agent", *args],
                              capture_output=True, text=True, cwd=_PKG.parent)
        return _agent_json(proc, "local")


_ONE_INVOKE = TimingProtocol(warmup=0, runs=1, trials=1)  # an accuracy run's timing: unused


def _model_json(model: Path) -> dict[str, Any]:
    """The ``model.json`` beside an exported model (``deploy/bundle.py``), {} without one."""
    p = model.with_name("model.json")
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        raise TargetError(f"{p}: not a readable model description") from None


def _protocol_fields(protocol: TimingProtocol) -> dict[str, int]:
    return {"warmup": protocol.warmup, "runs": protocol.runs, "trials": protocol.trials}


class _AgentProcess:
    """One ``--serve`` agent process on the device (its ssh command here), with its stderr
    in a temporary file and the number of requests whose answers are not read yet."""

    def __init__(self, argv: list[str]) -> None:
        self.err: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        self.pending = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def end(self, wait: bool = False) -> tuple[int | None, str]:
        """End it: killed when an answer is outstanding (``wait``: it is already ending),
        else by the end of its input; its exit code and stderr."""
        if self.pending and not wait:  # interrupted mid-batch: do not wait for the device
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # end of input: the agent exits
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        err = ""
        with contextlib.suppress(OSError, ValueError):
            self.err.seek(0)
            err = self.err.read()
            self.err.close()
        return rc, err


class SSHTarget:
    """A device reached with the OpenSSH client (e.g. a Raspberry Pi with the device extra).

    One SSH connection serves the whole session: the first command opens a master connection
    (OpenSSH ``ControlMaster``, ``ControlPersist`` 60 s) that every later ``ssh`` command
    reuses, so a handshake (seconds on a small or emulated board) is paid once. The agent
    package is copied once per session, and :meth:`bench_many` keeps one agent process on
    the device (``--serve``) that times batch after batch (:meth:`bench_batches`: two, one
    loading while the other times). :meth:`close` (also run at exit)
    ends both.

    Args:
        user, host, port: the login.
        python: the interpreter on the device that has numpy and the runtime.
        insecure: skip host-key checking (explicit opt-in; default checks known_hosts).
        known_hosts: a known_hosts file to check against (default: the user's).
        identity: a private key file (default: the ssh agent / ``~/.ssh`` keys).
        remote_dir: working folder on the device, relative to the login's home.
        timeout: seconds one command (or one batch's answer) may take.
        multiplex: reuse one connection (False: one connection per command).
        prefetch: start a second agent process, which loads the next batch while the first
            times this one in :meth:`bench_batches` (where the device has a core to spare).
    """

    def __init__(self, user: str | None, host: str, port: int = 22, python: str = "python3",
                 insecure: bool = False, known_hosts: str | None = None,
                 identity: str | None = None, remote_dir: str = ".cache/ofa-edge-agent",
                 timeout: float = 300.0, multiplex: bool = True, prefetch: bool = True) -> None:
        self.user, self.host, self.port = user, host, port
        self.python, self.remote_dir, self.timeout = python, remote_dir, timeout
        self.name = f"ssh://{user + '@' if user else ''}{host}:{port}"
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if insecure:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "LogLevel=ERROR"]
        else:
            opts += ["-o", "StrictHostKeyChecking=yes"]
            if known_hosts:
                opts += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if identity:
            opts += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        self._opts = opts
        self.dest = f"{user}@{host}" if user else host
        self.multiplex = multiplex
        self._control: Path | None = None  # folder of the master connection's socket
        self.prefetch = prefetch
        self._agents: list[_AgentProcess | None] = [None, None]  # the second: prefetching
        self._cores: int | None = None  # the device's, once an agent has said
        self._agent_copied = False
        self._starting = threading.Lock()
        self._ready: set[str] = set()  # runtimes the session's agents have imported

    @property
    def opts(self) -> list[str]:
        """ssh options: the login's, plus the master connection's socket once open."""
        if self._control is None:
            return self._opts
        return [*self._opts, "-o", f"ControlPath={self._control / 's'}", "-o", "ControlMaster=no"]

    def _explain(self, stderr: str) -> str:
        s = stderr.strip()
        low = s.lower()
        if "host key verification failed" in low or "no matching host key" in low:
            return (f"{self.name}: host key unknown or changed; add it with "
                    f"`ssh-keyscan -p {self.port} {self.host} >> ~/.ssh/known_hosts` "
                    "(or pass --insecure)")
        if "permission denied" in low:
            return (f"{self.name}: authentication failed; install your key with "
                    f"`ssh-copy-id -p {self.port} {self.dest}` or pass --identity")
        if any(k in low for k in ("connection refused", "timed out", "no route",
                                  "could not resolve", "name or service not known",
                                  "network is unreachable", "connection closed",
                                  "connection reset", "broken pipe")):
            return (f"{self.name}: host unreachable ({s.splitlines()[-1]}); check the "
                    "address, port and that sshd runs on the device")
        return f"{self.name}: {(s.splitlines() or ['ssh failed'])[-1]}"

    def _run(self, argv: list[str], what: str,
             stdin: bytes | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` (ssh), ``stdin`` fed to it; exit 255 (ssh's own failure) raised.

        Raises:
            TargetError: no OpenSSH client, a timeout, or ssh could not connect.
        """
        try:
            if stdin is None:
                proc = subprocess.run(argv, capture_output=True, text=True,
                                      timeout=self.timeout, stdin=subprocess.DEVNULL)
            else:
                raw = subprocess.run(argv, capture_output=True, input=stdin,
                                     timeout=self.timeout)
                proc = subprocess.CompletedProcess(
                    argv, raw.returncode, raw.stdout.decode(errors="replace"),
                    raw.stderr.decode(errors="replace"))
        except FileNotFoundError:
            raise TargetError(f"{argv[0]} not found: install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise TargetError(f"{self.name}: {what} timed out after {self.timeout:.0f} s"
                              ) from None
        if proc.returncode == 255:
            raise TargetError(self._explain(proc.stderr))
        return proc

    def _connect(self) -> None:
        """Open the master connection (once; nothing when ``multiplex`` is off).

        Raises:
            TargetError: unreachable, authentication or host key failure.
        """
        if not self.multiplex or self._control is not None:
            return
        folder = Path(tempfile.mkdtemp(prefix="ofa-ssh-"))  # short: a socket path is <108 B
        try:
            with open(folder / "master.log", "w+") as err:
                # -f: ssh backgrounds itself once logged in; its stderr is a file, so this
                # returns then (a pipe would stay open as long as the master lives)
                proc = subprocess.run(
                    ["ssh", "-p", str(self.port), *self._opts, "-o", "ControlMaster=yes",
                     "-o", f"ControlPath={folder / 's'}", "-o", "ControlPersist=60", "-N",
                     "-f", self.dest], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=err, timeout=self.timeout)
                err.seek(0)
                text = err.read()
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            raise TargetError("ssh not found: install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            shutil.rmtree(folder, ignore_errors=True)
            raise TargetError(f"{self.name}: connection timed out after {self.timeout:.0f} s"
                              ) from None
        if proc.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise TargetError(self._explain(text))
        self._control = folder
        atexit.register(self.close)

    def close(self) -> None:
        """End the device's agent processes and the master connection; idempotent."""
        agents, self._agents = self._agents, [None, None]
        for a in agents:
            if a is not None:
                a.end()
        control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["ssh", "-o", f"ControlPath={control / 's'}", "-O", "exit",
                                self.dest], capture_output=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            shutil.rmtree(control, ignore_errors=True)
        self._agent_copied = False
        self._ready.clear()

    def ssh(self, remote_argv: list[str], what: str = "command") -> subprocess.CompletedProcess:
        """Run ``remote_argv`` on the device (each argument shell-quoted for the remote)."""
        self._connect()
        cmd = " ".join(shlex.quote(a) for a in remote_argv)
        return self._run(["ssh", "-p", str(self.port), *self.opts, self.dest, cmd], what)

    def check(self) -> None:
        """Log in once and run ``PYTHON -c 'import numpy'``.

        Raises:
            TargetError: unreachable, authentication or host key failure, no Python/numpy.
        """
        proc = self.ssh([self.python, "-c", "import numpy"], "connection check")
        if proc.returncode != 0:
            raise TargetError(f"{self.name}: {self.python} with numpy is not usable on the "
                              f"device ({(proc.stderr.strip().splitlines() or ['?'])[-1]}); "
                              "pass --python /path/to/python (pip install 'ofa-edge[device]')")

    def copy(self, files: list[Path], remote_subdir: str) -> None:
        """``files`` (a folder with its contents) into ``remote_subdir`` of the remote folder.

        Raises:
            TargetError: unreachable, ``tar`` missing or the device's disk is full.
        """
        self._send_tar({f"{remote_subdir}/{Path(f).name}": Path(f) for f in files}, "copy")

    def _send_tar(self, members: dict[str, Path], what: str) -> None:
        """Write ``members`` (path below the remote folder -> local file or folder) as one
        tar stream through one command: one round trip, where each ``mkdir`` + ``scp`` pair
        is one (a second on an emulated board)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, path in members.items():
                tar.add(path, name)
        self._connect()
        rdir = shlex.quote(self.remote_dir)
        proc = self._run(["ssh", "-p", str(self.port), *self.opts, self.dest,
                          f"mkdir -p {rdir} && tar -xf - -C {rdir}"], what,
                         stdin=buf.getvalue())
        if proc.returncode != 0:
            raise TargetError(self._copy_error(f"{what} failed", proc.stderr))

    def _copy_error(self, what: str, stderr: str) -> str:
        """One line: a full device disk said as such, else the last line of ``stderr``."""
        lines = stderr.strip().splitlines() or ["?"]
        if any("no space left" in line.lower() for line in lines):
            return (f"{self.name}: the device's disk is full (no space left for "
                    f"{self.remote_dir}); free space there and rerun")
        return f"{self.name}: {what}: {lines[-1]}"

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        protocol = protocol or TimingProtocol()
        model = Path(model)
        if not model.is_file():
            raise TargetError(f"model file {model} does not exist")
        self._copy_agent()
        meta = model.with_name("model.json")
        self.copy([model, meta] if meta.exists() else [model], "model")
        rdata = None
        if data:
            self.copy([Path(data)], "data")
            rdata = f"data/{Path(data).name}"
        res = self._agent(_agent_args([f"model/{model.name}"], threads, protocol, rdata))
        res["target"] = self.name
        return res

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """The batch as one request to the session's agent process (``--serve``): the model
        files travel inline in the request, zlib-compressed (a table's models, with
        :func:`deploy.lut.periodic_weights`, shrink 10-35x), and are loaded from memory there
        (nothing is written on the device), then timed in interleaved trials. Per batch no process
        starts on the device (a copy costs a round trip, a second on an emulated board); the
        interpreter start is paid once a session.

        Raises:
            TargetError: the device went away or lacks the runtime.
        """
        protocol = protocol or TimingProtocol()
        req = {**self._load_request(models, threads, None), **_protocol_fields(protocol)}
        req["models"] = req.pop("load")
        return _batch_rows(self._request(self._serving(0), req), models, self.name)

    def _load_request(self, models: list[Path], threads: int,
                      workers: int | None) -> dict[str, Any]:
        """A ``load`` request: the models inline, zlib-compressed, under unique names."""
        names = [f"{j}/{Path(m).name}" for j, m in enumerate(models)]  # unique, same name
        return {"load": names, "threads": threads, "workers": workers, "compression": "zlib",
                "files": {n: base64.b64encode(zlib.compress(Path(m).read_bytes())).decode()
                          for n, m in zip(names, models)}}

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """One request to the session's agent process: the models, their ``model.json`` and
        their evaluation images inline (an ``eval.npz`` shared by several models, as those of
        one resolution are, travels once); nothing is written on the device.

        Raises:
            TargetError: the device went away, lacks the runtime, or a file is unreadable.
        """
        req = self._load_request(models, threads, None)
        names, blobs = [], {}
        for d in data:
            raw = Path(d).read_bytes()
            key = hashlib.sha256(raw).hexdigest()[:16]
            names.append(blobs.setdefault(key, (f"data/{key}.npz", raw))[0])
        req["files"].update({n: base64.b64encode(zlib.compress(raw)).decode()
                             for n, raw in blobs.values()})
        req.update(top1=req.pop("load"), data=names,
                   meta=[_model_json(Path(m)) for m in models])
        ans = self._request(self._serving(0), req)
        rows = ans.get("models")
        if not isinstance(rows, list) or len(rows) != len(models):
            raise TargetError(f"{self.name}: the agent's top-1 answer does not list the "
                              "models sent")
        return [{**r, "model": Path(m).name} for r, m in zip(rows, models)]

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        """Time batch after batch, each as :meth:`bench_many` does, and load the next batch
        in the session's second agent process while this one is timed: the loading (an
        int8 model's session build, ~50 ms each on the emulated Pi) then costs no time.

        Only where it cannot disturb the timing: with ``prefetch``, after :meth:`start`, on a
        device with more cores than ``threads`` (the loader uses the spare ones; the timed
        process has its own interpreter, so no lock is shared); otherwise
        :func:`one_batch_at_a_time`. Each row's ``batch`` gains ``load_wait_s`` (seconds
        this machine waited for the batch to be loaded, after the previous one was timed),
        ``prefetched`` and ``hidden_wait_s`` (seconds ``batches`` took to give the next
        batch while the device was timing this one: no time lost).

        Raises:
            TargetError: the device went away or lacks the runtime.
        """
        protocol = protocol or TimingProtocol()
        it = iter(batches)
        cur = next(it, None)  # the caller may start the device while it makes the first
        if cur is None:
            return
        spare = (self._cores or 0) - threads
        if not self.prefetch or spare < 1:
            yield from one_batch_at_a_time(self, itertools.chain([cur], it), threads,
                                           protocol)
            return
        k, timing = 0, {"time": True, **_protocol_fields(protocol)}
        try:
            t0 = time.perf_counter()
            loaded = self._request(self._serving(0), self._load_request(cur, threads, None))
            wait, prefetched = time.perf_counter() - t0, False
            while cur is not None:
                now = self._serving(k)
                self._send(now, timing)
                t0 = time.perf_counter()
                nxt = next(it, None)  # this machine may still be exporting it
                waited = time.perf_counter() - t0
                if nxt is not None:
                    other = self._serving(1 - k)
                    self._send(other, self._load_request(nxt, threads, spare))
                ans = self._receive(now)
                rows = _batch_rows({**ans, "load_s": loaded["load_s"]}, cur, self.name)
                for r in rows:  # waiting for the next batch hid behind this one's timing
                    r["batch"].update(load_wait_s=wait, prefetched=prefetched,
                                      hidden_wait_s=min(waited, ans.get("timing_s") or 0.0))
                yield rows
                if nxt is not None:
                    t0 = time.perf_counter()
                    loaded = self._receive(other)
                    wait, prefetched = time.perf_counter() - t0, True
                cur, k = nxt, 1 - k
        finally:  # abandoned mid-way: no answer may be left unread for the next caller
            self._end_pending()

    def start(self, runtime: str) -> None:
        """Log in, start the session's agent process (two with ``prefetch``) and import
        ``runtime`` there.

        Raises:
            TargetError: unreachable, or the runtime is not installed on the device.
        """
        with self._starting:  # also called early from another thread (``ofa lut build``)
            n = 2 if self.prefetch else 1
            if runtime in self._ready and all(a is not None and a.alive()
                                              for a in self._agents[:n]):
                return
            agents = [self._serving(k) for k in range(n)]
            try:
                for a in agents:  # both import the runtime at once
                    self._send(a, {"prepare": runtime})
                answers = [self._receive(a) for a in agents]
            except TargetError:  # no answer may be left unread for the next request
                self._end_pending()
                raise
            self._cores = (answers[0].get("device") or {}).get("cores")
            self._ready.add(runtime)

    def _end_pending(self) -> None:
        """End the agent processes whose answers are still to be read (a later request
        starts a fresh one)."""
        for j, a in enumerate(self._agents):
            if a is not None and a.pending:
                a.end()
                self._agents[j] = None

    def _request(self, agent: _AgentProcess, req: dict[str, Any]) -> dict[str, Any]:
        """Send one request line to an agent process; its answer (errors raised)."""
        self._send(agent, req)
        return self._receive(agent)

    def _send(self, agent: _AgentProcess, req: dict[str, Any]) -> None:
        try:
            agent.proc.stdin.write(json.dumps(req) + "\n")
            agent.proc.stdin.flush()
        except OSError:
            raise TargetError(self._failure(agent)) from None
        agent.pending += 1

    def _receive(self, agent: _AgentProcess) -> dict[str, Any]:
        """The agent process's next answer line (within ``timeout`` seconds)."""
        ready, _, _ = select.select([agent.proc.stdout], [], [], self.timeout)
        if not ready:
            agent.proc.kill()
            raise TargetError(f"{self.name}: the agent gave no answer in {self.timeout:.0f} s")
        line = agent.proc.stdout.readline()
        if not line:
            raise TargetError(self._failure(agent))
        agent.pending -= 1
        try:
            ans = json.loads(line)
        except json.JSONDecodeError:
            raise TargetError(f"{self.name}: the agent answered no JSON: {line[:80]!r}"
                              ) from None
        if "error" in ans:
            msg = str(ans["error"])
            if "no space left" in msg.lower():
                raise TargetError(self._copy_error("", msg))
            raise _agent_error(self.name, msg, ans.get("code", 2))
        return ans

    def _serving(self, k: int = 0) -> _AgentProcess:
        """The session's agent process ``k`` (``python -m deploy.device.agent --serve``)."""
        a = self._agents[k]
        if a is not None and a.alive():
            return a
        self._copy_agent()
        if a is not None:
            a.end()
        self._agents[k] = a = _AgentProcess(self._agent_command(["--serve"]))
        return a

    def _failure(self, agent: _AgentProcess) -> str:
        """One line on why an agent process ended (it is waited for, briefly)."""
        rc, err = agent.end(wait=True)
        self._agents = [None if a is agent else a for a in self._agents]
        if rc == 255:
            return self._explain(err or "connection closed")
        return self._agent_failure(rc, err) or f"{self.name}: agent ended: " + (
            (err.strip().splitlines() or [f"exit code {rc}"])[-1])

    def _agent_failure(self, rc: int | None, stderr: str) -> str | None:
        """The one-line reason an agent run could not start on the device, else None."""
        if rc == 127 or "not found" in stderr and "python" in stderr:
            return (f"{self.name}: {self.python} not found on the device; pass "
                    "--python /path/to/python (with numpy and the runtime)")
        if "No module named 'numpy'" in stderr:
            return (f"{self.name}: numpy is missing on the device; pip install "
                    "'ofa-edge[device]' (or numpy) there")
        return None

    def _copy_agent(self) -> None:
        """The torch-free agent (``deploy/device``) into the remote folder, once a session.

        Raises:
            TargetError: unreachable, ``tar`` missing or the device's disk is full.
        """
        if self._agent_copied:
            return
        files = [_PKG / "__init__.py", *sorted(_DEVICE.glob("*.py"))]
        self._send_tar({str(f.relative_to(_PKG.parent)): f for f in files}, "agent copy")
        self._agent_copied = True

    def _agent_command(self, args: list[str]) -> list[str]:
        """The ``ssh`` command line that runs the agent in the remote folder with ``args``."""
        script = (f"cd {shlex.quote(self.remote_dir)} && exec {shlex.quote(self.python)} -m "
                  f"deploy.device.agent {' '.join(shlex.quote(a) for a in args)}")
        return ["ssh", "-p", str(self.port), *self.opts, self.dest, script]

    def _agent(self, args: list[str]) -> dict[str, Any]:
        """Run the agent in the remote folder with ``args``; its JSON answer."""
        self._connect()
        proc = self._run(self._agent_command(args), "agent")
        why = self._agent_failure(proc.returncode, proc.stderr)
        if why:
            raise TargetError(why)
        return _agent_json(proc, self.name)


_TIMINGS = re.compile(r"count=(\d+) first=(\S+) curr=(\S+) min=(\S+) max=(\S+) avg=(\S+) "
                      r"std=(\S+)(?: p5=(\S+) median=(\S+) p95=(\S+))?")
_SUMMARY = re.compile(r"Inference timings in us: Init: (\S+), First inference: (\S+), "
                      r"Warmup \(avg\): (\S+), Inference \(avg\): (\S+)")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Parse TFLite ``benchmark_model`` output into the agent's schema (ms).

    Uses the last ``count=... first=... avg=... std=...`` line (the timed runs, after the
    warm-up line) and the ``Inference timings in us`` summary.

    Raises:
        TargetError: no timing lines in ``text``.
    """
    rows = _TIMINGS.findall(text)
    summary = _SUMMARY.search(text)
    if not rows or not summary:
        tail = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise TargetError(f"benchmark_model printed no timings (last line: {tail})")
    count, first, _, lo, hi, avg, std, p5, median, p95 = rows[-1]
    init, first_inf, warm, inf = (float(v) for v in summary.groups())
    med = float(median) if median else float(avg)
    lat = {"median": med / 1e3, "mean": float(avg) / 1e3, "std": float(std) / 1e3,
           "min": float(lo) / 1e3, "max": float(hi) / 1e3, "count": int(count),
           "p90": None}
    if p95:
        lat["p95"] = float(p95) / 1e3
    return {"latency_ms": lat, "median": lat["median"], "p90": None, "min": lat["min"],
            "runs": int(count), "inference_avg_ms": inf / 1e3, "init_ms": init / 1e3,
            "first_inference_ms": first_inf / 1e3, "warmup_avg_ms": warm / 1e3}


class AdbTarget:
    """An Android phone: TFLite ``benchmark_model`` (user-supplied binary) over adb."""

    remote = "/data/local/tmp/ofa-edge"

    def __init__(self, serial: str | None = None, benchmark_binary: str | None = None,
                 xnnpack: bool = True, adb: str = "adb") -> None:
        self.serial, self.binary, self.xnnpack, self.adb = serial, benchmark_binary, xnnpack, adb
        self.name = f"adb:{serial}" if serial else "adb"
        self._binary_pushed = False  # once a session, not once a model (a table: hundreds)

    def _adb(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [self.adb, *(["-s", self.serial] if self.serial else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise TargetError("adb not found: install Android platform-tools and put adb on "
                              "PATH") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[-1]
            if "no devices" in msg or "not found" in msg or "unauthorized" in msg:
                raise TargetError(f"{self.name}: {msg} (check `adb devices` and authorise "
                                  "USB debugging)")
            raise TargetError(f"{self.name}: adb {args[0]} failed: {msg}")
        return proc

    def check(self) -> None:
        """A benchmark binary is given and the phone answers ``adb get-state``.

        Raises:
            TargetError: no binary, adb missing, no (authorised) device.
        """
        if not self.binary or not Path(self.binary).is_file():
            raise TargetError("adb target needs --benchmark-binary PATH: the TFLite "
                              "benchmark_model for the phone's ABI (android_aarch64)")
        self._adb("get-state")

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        protocol = protocol or TimingProtocol()
        model = Path(model)
        if model.suffix != ".tflite":
            raise TargetError(f"{self.name}: benchmark_model runs .tflite models, not {model}")
        if not model.is_file():
            raise TargetError(f"model file {model} does not exist")
        if not self.binary or not Path(self.binary).is_file():
            raise TargetError("adb target needs --benchmark-binary PATH: the TFLite "
                              "benchmark_model for the phone's ABI (android_aarch64)")
        if not self._binary_pushed:
            self._adb("shell", "mkdir", "-p", self.remote)
            self._adb("push", self.binary, f"{self.remote}/benchmark_model")
            self._adb("shell", "chmod", "755", f"{self.remote}/benchmark_model")
            self._binary_pushed = True
        self._adb("push", str(model), f"{self.remote}/{model.name}")
        proc = self._adb("shell", f"{self.remote}/benchmark_model",
                         f"--graph={self.remote}/{model.name}", f"--num_threads={threads}",
                         f"--use_xnnpack={'true' if self.xnnpack else 'false'}",
                         f"--warmup_runs={protocol.warmup}",
                         f"--num_runs={protocol.runs * protocol.trials}")
        res = parse_benchmark_model(proc.stdout + proc.stderr)
        res.update({"schema": "ofa-edge-agent", "version": 1, "model": model.name,
                    "model_bytes": model.stat().st_size, "runtime": "tflite benchmark_model",
                    "backend": "XNNPACK" if self.xnnpack else "CPU", "threads": threads,
                    "warmup": protocol.warmup, "trials": 1, "target": self.name,
                    "device": {"name": self.name}})
        return res

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """One ``benchmark_model`` run per model (it times one graph per process)."""
        return [self.bench(m, threads, protocol) for m in models]

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        """One ``benchmark_model`` run per model (:func:`one_batch_at_a_time`)."""
        return one_batch_at_a_time(self, batches, threads, protocol)

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """None per model: ``benchmark_model`` times a graph and checks no accuracy (the
        exported file's top-1 on this machine is in its bundle, ``deploy/bundle.py``)."""
        return [None] * len(models)

    def start(self, runtime: str) -> None:
        """Nothing to start: ``benchmark_model`` runs once per model."""


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
            raise ValueError(f"target {spec!r}: expected ssh://user@host[:port]")
        try:
            port = u.port or 22
        except ValueError:
            raise ValueError(f"target {spec!r}: bad port") from None
        return SSHTarget(u.username, u.hostname, port, python=python, insecure=insecure,
                         known_hosts=known_hosts, identity=identity)
    raise ValueError(f"unknown target {spec!r}; use local, ssh://user@host[:port], adb[:serial]")
