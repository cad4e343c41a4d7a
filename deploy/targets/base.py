"""The :class:`Target` protocol that every transport implements, and the device agent's
answers as the transports read them (the agent and its JSON schema: :mod:`deploy.ontarget.agent`).
Torch-free."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from deploy.ontarget.runtimes import TimingProtocol

__all__ = ["Target", "TargetError", "one_batch_at_a_time", "device_progress"]

PKG = Path(__file__).resolve().parents[1]  # deploy/: the agent runs beside it
ONTARGET = PKG / "ontarget"  # the torch-free package an SSH target copies to the target


@contextlib.contextmanager
def device_progress(target: Any, desc: str) -> Iterator[None]:
    """Show the progress lines a device's agent sends while it times (``{"progress", "of"}``,
    every few seconds: minutes of timing on a slow board) as one tqdm bar on this machine
    for the requests sent inside the block, the requests one after the other. ``target``:
    a target with a ``progress`` hook (SSH), or one wrapping such a target in its
    ``target`` attribute (:class:`deploy.probe.ProbedTarget`); others show nothing here."""
    from tqdm import tqdm

    inner = getattr(target, "target", target)
    if not hasattr(inner, "progress"):
        yield
        return
    before, state = inner.progress, {"base": 0, "last": (0, 0)}

    def update(done: int, of: int) -> None:
        if done < state["last"][0]:  # a new request: the one before ended at its total
            state["base"] += state["last"][1]
        state["last"] = (done, of)
        bar.total = max(bar.total or 0, state["base"] + of)
        bar.n = state["base"] + done
        bar.refresh()

    with tqdm(total=0, desc=f"{desc}: time on {inner.name}", leave=False,
              unit="trial") as bar:
        inner.progress = update
        try:
            yield
        finally:
            inner.progress = before


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


class OneBatchAtATime:
    """:meth:`Target.bench_batches` of a target that cannot load one batch while it times
    another (this machine, adb): :func:`one_batch_at_a_time`."""

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        return one_batch_at_a_time(self, batches, threads, protocol)  # self: a Target


def agent_args(models: list[str], threads: int, protocol: TimingProtocol,
                data: str | None) -> list[str]:
    args = [*models, "--json", "--threads", str(threads), "--runs", str(protocol.runs),
            "--warmup", str(protocol.warmup), "--trials", str(protocol.trials)]
    if protocol.probe:  # the first model is the reference probe (deploy/probe.py)
        args += ["--probe", "--probe-bound", str(protocol.probe_bound), "--retime",
                 str(protocol.retime)]
    return args + (["--data", data] if data else [])


def batch_rows(res: dict[str, Any], models: list[Path], where: str) -> list[dict[str, Any]]:
    """One row per model from the agent's batch answer, in order, each with the batch's
    ``machine`` (its facts), ``runtime_version``, ``backend`` and ``batch``: ``{"size",
    "load_s", "timing_s"}`` (seconds the agent spent loading the models and in the timed trials)."""
    rows = res.get("models", [res] if "model" in res else None)  # one model: the plain answer
    if not isinstance(rows, list) or [r.get("model") for r in rows] != [
            Path(m).name for m in models]:
        raise TargetError(f"{where}: the agent's batch answer does not list the models sent")
    batch = {"size": len(rows), "load_s": res.get("load_s"), "timing_s": res.get("timing_s")}
    for r in rows:
        for k in ("machine", "runtime_version", "backend"):
            r.setdefault(k, res.get(k))
        r["batch"] = batch
    return rows


def agent_error(where: str, msg: str, code: int) -> TargetError:
    """The one-line error for an agent that answered ``msg`` with exit code / ``code`` (3:
    the runtime is not installed on the device)."""
    if code == 3:
        return TargetError(f"{where}: {msg.removeprefix('agent: error: ')} on the device "
                           "(install the device extra there: pip install 'ofa-edge[device]' "
                           "or the runtime's package)")
    return TargetError(f"{where}: agent failed: {msg}")


def agent_json(proc: subprocess.CompletedProcess, where: str) -> dict[str, Any]:
    if proc.returncode != 0:
        raise agent_error(where, (proc.stderr.strip().splitlines() or ["no output"])[-1],
                           proc.returncode)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise TargetError(f"{where}: agent printed no JSON") from None
