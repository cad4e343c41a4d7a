"""A board over SSH (a Raspberry Pi with the device extra): one OpenSSH session, the
torch-free agent copied once and kept serving requests. Torch-free.

Host keys are checked (``StrictHostKeyChecking=yes`` against known_hosts) unless
``insecure=True``. Every remote argument is quoted with :func:`shlex.quote`; no local shell is
used."""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import io
import itertools
import json
import queue
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from deploy.ontarget.agent import model_meta
from deploy.ontarget.protocol import ProtocolError, Request, check_answer
from deploy.ontarget.runtimes import TimingProtocol
from deploy.targets.base import (
    ONTARGET,
    PKG,
    TargetError,
    agent_args,
    agent_error,
    agent_json,
    batch_rows,
    one_batch_at_a_time,
)

__all__ = ["SSHTarget"]


class _AgentProcess:
    """One ``--serve`` agent process on the device (its ssh command here), with its stderr
    in a temporary file, the number of requests whose answers are not read yet and the
    inline files of the last request sent (which the next may ``reuse``)."""

    def __init__(self, argv: list[str]) -> None:
        self.err: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        self.pending = 0
        self.files: dict[str, str] = {}  # name -> encoded content, as last sent
        # every stdout line, read by a thread: answers and the progress lines before them
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="agent-stdout").start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.proc.stdout:
                self.lines.put(line)
        self.lines.put("")  # end of output

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
        timeout: seconds one command may take, and seconds an agent process may stay
            silent (it sends progress while it works: a long batch on a slow board is
            never cut off by it).
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
        # called with (done, total) for each progress line of the agent (a tqdm bar)
        self.progress: Callable[[int, int], None] | None = None
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
        res = self._agent(agent_args([f"model/{model.name}"], threads, protocol, rdata))
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
        req = self._load_request(models, threads, None, op="bench", timing=protocol.fields())
        return batch_rows(self._request(self._serving(0), req), models, self.name)

    def _load_request(self, models: list[Path], threads: int, workers: int | None,
                      op: str = "load", **fields: Any) -> Request:
        """A request of operation ``op`` (``load``, ``bench``, ``top1``; ``fields``: its
        other fields) carrying the models inline, zlib-compressed, each named by its
        content's hash and file name: the same file keeps its name from one request to the
        next, wherever it stands in the batch (the probe goes first in a timing request, not
        in a top-1 one), so a later request can ``reuse`` it."""
        raws = [Path(m).read_bytes() for m in models]
        names = [f"{hashlib.sha256(r).hexdigest()[:16]}/{Path(m).name}"
                 for r, m in zip(raws, models)]
        return Request(op, models=names, threads=threads, workers=workers,
                       compression="zlib",
                       files={n: base64.b64encode(zlib.compress(r)).decode()
                              for n, r in zip(names, raws)}, **fields)

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """One request to the session's agent process: the models, their ``model.json`` and
        their evaluation images inline (an ``eval.npz`` shared by several models, as those of
        one resolution are, travels once); nothing is written on the device.

        Raises:
            TargetError: the device went away, lacks the runtime, or a file is unreadable.
        """
        names, blobs = [], {}
        for d in data:
            raw = Path(d).read_bytes()
            key = hashlib.sha256(raw).hexdigest()[:16]
            names.append(blobs.setdefault(key, (f"data/{key}.npz", raw))[0])
        try:  # model.json: resolution and normalisation, for raw evaluation images
            metas = [model_meta(Path(m)) for m in models]
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        req = self._load_request(models, threads, None, op="top1", data=names, meta=metas)
        req.files.update({n: base64.b64encode(zlib.compress(raw)).decode()
                          for n, raw in blobs.values()})
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
        k, timing = 0, Request("time", timing=protocol.fields())
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
                rows = batch_rows({**ans, "load_s": loaded["load_s"]}, cur, self.name)
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
                    self._send(a, Request("prepare", runtime=runtime))
                answers = [self._receive(a) for a in agents]
            except TargetError:  # no answer may be left unread for the next request
                self._end_pending()
                raise
            self._cores = (answers[0].get("machine") or {}).get("cores")
            self._ready.add(runtime)

    def _end_pending(self) -> None:
        """End the agent processes whose answers are still to be read (a later request
        starts a fresh one)."""
        for j, a in enumerate(self._agents):
            if a is not None and a.pending:
                a.end()
                self._agents[j] = None

    def _request(self, agent: _AgentProcess, req: Request) -> dict[str, Any]:
        """Send one request line to an agent process; its answer (errors raised)."""
        self._send(agent, req)
        return self._receive(agent)

    @staticmethod
    def _reusing(agent: _AgentProcess, req: dict[str, Any]) -> dict[str, Any]:
        """``req`` without the inline files that ``agent`` got, the same name and content, in
        the request before (named in ``reuse`` instead): ``ofa deploy`` times its models,
        then checks their top-1 with the same files, which then travel once."""
        files = req.get("files") or {}
        reuse = [n for n, v in files.items() if agent.files.get(n) == v]
        agent.files = dict(files)
        if not reuse:
            return req
        return {**req, "files": {n: v for n, v in files.items() if n not in reuse},
                "reuse": reuse}

    def _send(self, agent: _AgentProcess, req: Request) -> None:
        try:
            agent.proc.stdin.write(json.dumps(self._reusing(agent, req.to_dict())) + "\n")
            agent.proc.stdin.flush()
        except OSError:
            raise TargetError(self._failure(agent)) from None
        agent.pending += 1

    def _receive(self, agent: _AgentProcess) -> dict[str, Any]:
        """The agent process's next answer line. The agent sends a progress line at least
        every few seconds while it works (``{"progress": done, "of": total}``), so the
        wait is not fixed: only ``timeout`` seconds *without a line* end it (a slow board
        timing a long batch is never cut off)."""
        while True:
            try:
                line = agent.lines.get(timeout=self.timeout)
            except queue.Empty:
                agent.proc.kill()
                raise TargetError(f"{self.name}: the agent sent nothing for "
                                  f"{self.timeout:.0f} s (the device hung or the link "
                                  "dropped)") from None
            if not line:
                raise TargetError(self._failure(agent))
            try:
                ans = check_answer(json.loads(line), self.name)
            except json.JSONDecodeError:
                raise TargetError(f"{self.name}: the agent answered no JSON: {line[:80]!r}"
                                  ) from None
            except ProtocolError as exc:
                agent.proc.kill()
                raise TargetError(str(exc)) from None
            if "progress" in ans and "of" in ans:
                if self.progress is not None:
                    self.progress(int(ans["progress"]), int(ans["of"]))
                continue
            break
        agent.pending -= 1
        if "error" in ans:
            msg = str(ans["error"])
            if "no space left" in msg.lower():
                raise TargetError(self._copy_error("", msg))
            raise agent_error(self.name, msg, ans.get("code", 2))
        return ans

    def _serving(self, k: int = 0) -> _AgentProcess:
        """The session's agent process ``k`` (``python -m deploy.ontarget.agent --serve``)."""
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
        """The torch-free agent (``deploy/ontarget``) into the remote folder, once a session.

        Raises:
            TargetError: unreachable, ``tar`` missing or the device's disk is full.
        """
        if self._agent_copied:
            return
        files = [PKG / "__init__.py", *sorted(ONTARGET.glob("*.py"))]
        self._send_tar({str(f.relative_to(PKG.parent)): f for f in files}, "agent copy")
        self._agent_copied = True

    def _agent_command(self, args: list[str]) -> list[str]:
        """The ``ssh`` command line that runs the agent in the remote folder with ``args``."""
        script = (f"cd {shlex.quote(self.remote_dir)} && exec {shlex.quote(self.python)} -m "
                  f"deploy.ontarget.agent {' '.join(shlex.quote(a) for a in args)}")
        return ["ssh", "-p", str(self.port), *self.opts, self.dest, script]

    def _agent(self, args: list[str]) -> dict[str, Any]:
        """Run the agent in the remote folder with ``args``; its JSON answer."""
        self._connect()
        proc = self._run(self._agent_command(args), "agent")
        why = self._agent_failure(proc.returncode, proc.stderr)
        if why:
            raise TargetError(why)
        return agent_json(proc, self.name)
