"""Device agent: benchmark an exported model and check its accuracy where it runs. Torch-free.

    python -m deploy.ontarget.agent MODEL [--threads N --runs N --warmup N --trials N]
                                 [--data FILE.npz|FOLDER] [--json]
    python -m deploy.ontarget.agent MODEL MODEL ... [--threads ...] --json    # a batch
    python -m deploy.ontarget.agent --serve    # batches as JSON lines on stdin, answers on stdout

Imports only numpy and the one runtime the model needs (onnxruntime for ``.onnx``;
ai-edge-litert, or tflite-runtime as a fallback, for ``.tflite``), so it runs on a Raspberry
Pi with the ``device`` extra. It is also what the SSH target copies and runs remotely.

Output (``--json``): ``{"schema": "ofa-edge-agent", "version": 1, "model", "model_bytes",
"runtime", "runtime_version", "backend", "threads", "input_shape", "input_dtype",
"latency_ms": {"median", "p90", "mean", "std", "min", "count"}, "median", "p90", "min",
"runs", "warmup", "trials", "machine": {...}, ["accuracy": {"top1", "images"}]}``.
Latencies are per invoke (batch 1), in milliseconds. With several models (a latency-table
build's batch of blocks, :func:`benchmark_many`): ``{"schema", "version", "runtime",
"runtime_version", "backend", "threads", "runs", "warmup", "trials", "machine", "models":
[{"model", "model_bytes", "input_shape", "latency_ms", "median"}, ...], "load_s", "timing_s"}``,
all timed in one process in interleaved trials (``load_s``: seconds spent loading the models,
``timing_s``: seconds of the interleaved trials, warm-up invokes included).

``--serve`` keeps one process for a whole latency-table build (:func:`serve`): each stdin
line is a request of the versioned wire protocol (``deploy/ontarget/protocol.py``: ``bench``,
``load``/``time``, ``top1``, ``prepare``) and gets one stdout answer line (after progress
lines), or an error line; end of input ends it.
The interpreter start and the runtime's import (tens of seconds on an emulated board) are
then paid once per build, not once per batch.

Accuracy data: an ``.npz`` written by ``ofa export`` (``x``: float32 ``(N, 3, r, r)``
already normalised, ``y``: int labels), or raw images (``x_test``/``y_test`` uint8
``(N, H, W[, C])``) or an ImageFolder-style folder (needs Pillow), which are resized and
normalised with the ``model.json`` beside the model.

Exit codes: 0 ok, 2 bad input (missing/corrupt model or data), 3 runtime not installed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deploy.ontarget.errors import TargetInputError
from deploy.ontarget.facts import machine_facts
from deploy.ontarget.protocol import ProtocolError, Request, answer
from deploy.ontarget.runtimes import (
    Runtime,
    RuntimeMissing,
    TimingProtocol,
    get_runtime,
    runtime_for,
    time_interleaved,
    time_invoke,
)

__all__ = ["benchmark", "benchmark_many", "LoadedBatch", "serve", "load_eval_data", "top1",
           "accuracy", "model_meta", "main", "SCHEMA"]

SCHEMA = "ofa-edge-agent"
def model_meta(model: Path) -> dict[str, Any]:
    """The ``model.json`` beside the model (or ``<stem>.json``); {} when there is none.

    Raises:
        ValueError: the description is not valid JSON.
    """
    p = model.with_name("model.json")
    p = p if p.exists() else model.with_suffix(".json")
    if p.exists():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise TargetInputError(f"{p}: model description is not valid JSON") from None
    return {}


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(C, H, W)`` float to ``(C, size, size)`` (half-pixel centres)."""
    c, h, w = img.shape

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bot = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy)[None, :, None] + bot * fy[None, :, None]


def _normalise(raw: list[np.ndarray], meta: dict[str, Any]) -> np.ndarray:
    """uint8 images (H, W[, C]) -> normalised float ``(N, 3, r, r)`` from model.json."""
    try:
        r = int(meta["resolution"])
        norm = meta["normalisation"]
        mean = np.asarray(norm["mean"], np.float32)[:, None, None]
        std = np.asarray(norm["std"], np.float32)[:, None, None]
    except (KeyError, TypeError):
        raise TargetInputError("raw images need the model.json beside the model (resolution, "
                         "normalisation); or pass the eval .npz that ofa export wrote") from None
    out = []
    for img in raw:
        a = np.asarray(img, np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if a.shape[0] == 1:
            a = np.repeat(a, 3, axis=0)
        out.append((_resize(a[:3], r) - mean) / std)
    return np.stack(out).astype(np.float32)


def load_eval_data(path: str | Path | bytes, meta: Mapping[str, Any],
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, r, r)`` float32 and labels ``(N,)`` from an ``.npz`` (a file, or its
    bytes sent inline) or a folder.

    Raises:
        ValueError: missing/malformed data, or raw images without a model.json.
    """
    if isinstance(path, bytes):
        return _eval_arrays(io.BytesIO(path), "the data sent", meta, limit)
    path = Path(path)
    if not path.exists():
        raise TargetInputError(f"data {path} does not exist")
    if path.is_dir():
        try:
            from PIL import Image
        except ImportError:
            raise TargetInputError("reading an image folder needs Pillow (pip install pillow)"
                             ) from None
        classes = sorted(d.name for d in path.iterdir() if d.is_dir())
        names = meta.get("classes") or classes
        files = [(f, names.index(c)) for c in classes if c in names
                 for f in sorted((path / c).iterdir()) if f.is_file()]
        files = files[:limit] if limit else files
        if not files:
            raise TargetInputError(f"{path}: no class folders with images (class/xxx.jpg)")
        raw = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
        return _normalise(raw, meta), np.array([y for _, y in files], np.int64)
    return _eval_arrays(path, str(path), meta, limit)


def _eval_arrays(src: Path | io.BytesIO, where: str, meta: Mapping[str, Any],
                 limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_eval_data` of an ``.npz`` (``where`` names it in errors)."""
    try:
        z = np.load(src)
        keys = set(z.files)
    except (OSError, ValueError, EOFError) as exc:
        raise TargetInputError(f"{where}: not a readable .npz ({exc})") from None
    if {"x", "y"} <= keys:
        x, y = z["x"].astype(np.float32), z["y"].astype(np.int64)
    elif {"x_test", "y_test"} <= keys:
        n = limit or len(z["y_test"])
        x, y = _normalise(list(z["x_test"][:n]), meta), z["y_test"][:n].astype(np.int64)
    else:
        raise TargetInputError(f"{where}: expected arrays x, y (ofa export) or x_test, y_test")
    if x.ndim != 4 or len(x) != len(y):
        raise TargetInputError(f"{where}: x must be (N, 3, r, r) with one label each, got "
                               f"{x.shape}")
    return (x[:limit], y[:limit]) if limit else (x, y)


def top1(rt: Runtime, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (%) of the loaded model on ``x (N, 3, r, r)``, ``y (N,)``."""
    pred = rt.logits(x).argmax(1)
    return float((pred == y).mean() * 100)


def accuracy(model: str | Path, data: str | Path | bytes, threads: int = 1,
             meta: Mapping[str, Any] | None = None, content: bytes | None = None,
             limit: int | None = None) -> dict[str, Any]:
    """Top-1 (%) of ``model`` on the evaluation images ``data`` (:func:`load_eval_data`),
    without timing it: ``{"model", "top1", "images"}``. ``content``: the model's bytes (sent
    inline; no file is read); ``meta``: its ``model.json`` (default: the file beside it).

    Raises:
        FileNotFoundError/ValueError: missing, empty or corrupt model or data.
        RuntimeMissing: the runtime's package is not installed.
    """
    model = Path(model)
    rt = get_runtime(runtime_for(model), threads)
    rt.load_bytes(content, model.name) if content is not None else rt.load(str(model))
    xs, ys = load_eval_data(data, model_meta(model) if meta is None else meta, limit)
    return {"model": model.name, "top1": top1(rt, xs, ys), "images": int(len(ys))}


def benchmark(model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Load ``model``, time one invoke per the protocol, optionally measure top-1.

    Raises:
        FileNotFoundError/ValueError: missing, empty or corrupt model or data.
        RuntimeMissing: the runtime's package is not installed.
    """
    model = Path(model)
    protocol = protocol or TimingProtocol()
    rt = get_runtime(runtime_for(model), threads)
    rt.load(str(model))
    meta = model_meta(model)
    shape = tuple(int(d) for d in rt.input_shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)  # already in the model's layout
    st = time_invoke(rt, rt.prepare(x), protocol)
    out: dict[str, Any] = {
        "schema": SCHEMA, "version": 1, "model": model.name,
        "model_bytes": model.stat().st_size, "runtime": rt.name,
        "runtime_version": rt.version(), "backend": rt.backend, "threads": threads,
        "input_shape": list(shape), "input_dtype": np.dtype(rt.input_dtype).name,
        "latency_ms": st, "median": st["median"], "p90": st["p90"], "min": st["min"],
        "runs": protocol.runs, "warmup": protocol.warmup, "trials": protocol.trials,
        "machine": machine_facts()}
    if data is not None:
        xs, ys = load_eval_data(data, meta, limit)
        out["accuracy"] = {"top1": top1(rt, xs, ys), "images": int(len(ys))}
    return out


def _load_all(kind: str, threads: int, paths: list[Path],
              contents: Mapping[str, bytes], workers: int | None = None) -> list[Runtime]:
    """Load every model (from ``contents`` by its name as given, else from its file), in
    ``workers`` parallel threads (default one per core): the runtimes build their sessions
    outside Python's lock (2.5 s -> 1.4 s for 96 blocks on the emulated Pi)."""

    def one(p: Path) -> Runtime:
        rt = get_runtime(kind, threads)
        data = contents.get(str(p))
        rt.load_bytes(data, p.name) if data is not None else rt.load(str(p))
        return rt

    workers = max(1, min(len(paths), workers or os.cpu_count() or 1))
    if workers == 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


class LoadedBatch:
    """A batch of models (one runtime, by suffix) loaded and given seeded random inputs of
    their input shapes, ready to be timed (:meth:`time`); ``load_s``: seconds it took.

    Loading is separate from timing so that the persistent agent can load the next batch in
    a second process while this one is timed (:func:`serve`'s ``load`` and ``time``
    requests, used by ``deploy.targets.SSHTarget.bench_batches``).

    Raises (constructor):
        FileNotFoundError/ValueError: a missing or corrupt model, or models of two runtimes.
        RuntimeMissing: the runtime is not installed.
    """

    def __init__(self, models: list[str | Path], threads: int = 1,
                 contents: Mapping[str, bytes] | None = None,
                 workers: int | None = None) -> None:
        self.paths = [Path(m) for m in models]
        contents = contents or {}
        kinds = {runtime_for(p) for p in self.paths}
        if len(kinds) != 1:
            raise TargetInputError(f"one runtime per batch, got {sorted(kinds)}")
        kind = kinds.pop()
        get_runtime(kind, threads).version()  # RuntimeMissing before any thread starts
        self.threads = threads
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        self.runtimes = _load_all(kind, threads, self.paths, contents, workers)
        self.inputs = [rt.prepare(rng.standard_normal(tuple(int(d) for d in rt.input_shape))
                                  .astype(np.float32)) for rt in self.runtimes]
        self.load_s = time.perf_counter() - t0
        self.sizes = [len(contents[str(p)]) if str(p) in contents else p.stat().st_size
                      for p in self.paths]

    def time(self, protocol: TimingProtocol | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Time one invoke of each model in interleaved trials
        (:func:`deploy.ontarget.runtimes.time_interleaved`): the batch answer of
        :func:`benchmark_many`. ``progress(done, total)``: called after each model's
        trial."""
        protocol = protocol or TimingProtocol()
        t1 = time.perf_counter()
        total, done = len(self.runtimes) * protocol.trials, 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        stats = time_interleaved(self.runtimes, self.inputs, protocol, step)
        t2 = time.perf_counter()
        rt = self.runtimes[0]
        return {"schema": SCHEMA, "version": 1, "runtime": rt.name,
                "runtime_version": rt.version(), "backend": rt.backend,
                "threads": self.threads, "runs": protocol.runs, "warmup": protocol.warmup,
                "trials": protocol.trials, "machine": machine_facts(),
                "models": [{"model": p.name, "model_bytes": n,
                            "input_shape": [int(d) for d in r.input_shape], "latency_ms": st,
                            "median": st["median"]}
                           for p, n, r, st in zip(self.paths, self.sizes, self.runtimes,
                                                  stats)],
                "load_s": self.load_s, "timing_s": t2 - t1,
                **({"probe": stats[0]} if protocol.probe else {})}


def benchmark_many(models: list[str | Path], threads: int = 1,
                   protocol: TimingProtocol | None = None,
                   contents: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """Load every model (one runtime, by suffix) and time one invoke of each in interleaved
    trials (:func:`deploy.ontarget.runtimes.time_interleaved`): one interpreter start and one
    device session for a whole batch, and a drift of the device's speed spreads over the
    batch alike. Inputs are seeded random tensors of each model's input shape.
    ``contents``: model bytes by the model's name as listed in ``models`` (sent inline; no
    file is read or written for those).

    Raises:
        FileNotFoundError/ValueError: a missing or corrupt model, or models of two runtimes.
        RuntimeMissing: the runtime is not installed.
    """
    return LoadedBatch(models, threads, contents).time(protocol)


def _prepare(runtime: str) -> dict[str, Any]:
    """Import ``runtime`` now (seconds on a small board) and say what it and the device are."""
    try:
        rt = get_runtime(runtime, 1)
        return {"runtime": rt.name, "runtime_version": rt.version(), "machine": machine_facts()}
    except RuntimeMissing as exc:
        return {"error": str(exc), "code": 3}
    except ValueError as exc:
        return {"error": str(exc).splitlines()[0], "code": 2}


def _failure(exc: Exception) -> dict[str, Any]:
    """The answer to a request whose models could not be loaded or timed."""
    if isinstance(exc, RuntimeMissing):
        return {"error": str(exc), "code": 3}
    return {"error": (str(exc).splitlines() or ["?"])[0], "code": 2}


PROGRESS_S = 5.0  # a working agent writes a progress line this often (:class:`_Heartbeat`)


class _Heartbeat:
    """A progress line, ``{"progress": done, "of": total}``, every :data:`PROGRESS_S`
    seconds while a request is worked on, written by a thread of its own whatever the work
    is doing: loading a batch, timing it again because the probe moved (those trials report
    nothing), one long invoke, a top-1 pass. The host waits for an answer only as long as
    lines keep coming (``deploy/targets/ssh.py``), so its wait scales with the work and a
    slow device is never cut off; a device that hangs (the thread stops with it) or a
    dropped link still is. ``progress(done, total)`` records how far the work is; nothing
    else writes until the ``with`` block ends (the answer comes after)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self.done = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def _beat(self) -> None:
        while not self._stop.wait(PROGRESS_S):
            self._write(answer({"progress": self.done, "of": self.total}))

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def watch_parent(stdin_fd: int | None = 0, poll_s: float = 1.0) -> threading.Thread:
    """End this process (exit code 0) as soon as its parent is gone or ``stdin_fd`` is
    hung up (the SSH connection dropped, the host's command was killed): nothing of the
    agent outlives the request that started it, even in the middle of a long timing.
    ``stdin_fd`` None watches the parent only. Returns the daemon thread."""
    import select as _select

    parent = os.getppid()
    poller = None
    if stdin_fd is not None and hasattr(_select, "poll"):
        poller = _select.poll()
        poller.register(stdin_fd, _select.POLLHUP | _select.POLLERR)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            if poller is not None:
                for _, ev in poller.poll(0):
                    if ev & (_select.POLLHUP | _select.POLLERR):
                        os._exit(0)
            time.sleep(poll_s)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t


class _Session:
    """What a serving agent keeps between requests: the batch a ``load`` request holds
    (with the files to delete after it is timed) and the last request's inline files,
    which a ``reuse`` names."""

    def __init__(self) -> None:
        self.held: tuple[LoadedBatch, list[Path]] | None = None
        self.previous: dict[str, bytes] = {}

    def files(self, req: Request) -> dict[str, bytes]:
        """The request's inline files, decoded, with those it reuses.

        Raises:
            ProtocolError: undecodable files, or a reuse of a file not sent the line before.
        """
        reusable, self.previous = self.previous, {}
        unpack = zlib.decompress if req.compression == "zlib" else bytes
        try:
            files = {k: unpack(base64.b64decode(v)) for k, v in req.files.items()}
        except (binascii.Error, zlib.error, TypeError, ValueError) as exc:
            raise ProtocolError(f"{req.op} request: undecodable files ({exc})") from None
        for name in req.reuse:
            if name not in reusable:
                raise ProtocolError(f"reuse: {name} was not sent in the previous request")
            files[name] = reusable[name]
        self.previous = files
        return files

    def handle(self, req: Request, files: dict[str, bytes],
               progress: Callable[[int, int], None] | None = None
               ) -> tuple[dict[str, Any], list[Path]]:
        """The answer to ``req`` and the files on the target to remove after it;
        ``progress(done, total)`` is told how far the work is (:class:`_Heartbeat`)."""
        models = [Path(m) for m in req.models]
        delete = [m for m in models if str(m) not in files] if req.delete else []
        if req.op == "prepare":
            return _prepare(str(req.runtime)), []
        if req.op == "top1":
            done = []
            for m, d, meta in zip(models, req.data, req.meta):
                done.append(accuracy(m, files.get(d, d), req.threads, meta, files.get(str(m))))
                if progress is not None:
                    progress(len(done), len(models))
            return {"models": done, "machine": machine_facts()}, delete
        protocol = TimingProtocol.from_fields(req.timing)
        if req.op == "time":
            if self.held is None:
                raise TargetInputError("no batch loaded to time (send a load request first)")
            (batch, delete), self.held = self.held, None
            return batch.time(protocol, progress), delete
        batch = LoadedBatch(models, req.threads, files, req.workers)
        if req.op == "load":
            self.held = (batch, delete)
            return {"loaded": len(models), "load_s": batch.load_s}, []
        return batch.time(protocol, progress), delete


def serve(lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Answer requests (one JSON line each, :mod:`deploy.ontarget.protocol`) with one answer
    line each through ``write``, until the lines end: the persistent agent of ``--serve``.

    ``bench`` loads and times a batch (:func:`benchmark_many`): its ``files`` are model files
    sent inline, loaded from memory, so a batch needs no copy process and writes nothing on
    the target; other names are files there, which ``delete`` removes afterwards. ``load``
    only loads a batch (``workers`` loading threads, default one per core) and holds it;
    ``time`` then times the held batch: two agent processes so driven load one batch while
    the other times the previous one (``deploy.targets.SSHTarget.bench_batches``). ``top1``
    measures each model's top-1 on its evaluation images (:func:`accuracy`); ``prepare``
    imports a runtime ahead of the first batch.

    While a request is worked on, a progress line is written every :data:`PROGRESS_S`
    seconds (:class:`_Heartbeat`; timing: model trials done); the answer follows. A request
    that fails gets an error answer (code 2, or 3: the runtime is not installed) and serving
    goes on; a line that is not a request of this protocol version ends serving with that
    error.
    """
    session = _Session()
    for line in lines:
        if not line.strip():
            continue
        try:
            req = Request.parse(line)
            files = session.files(req)
        except ProtocolError as exc:
            write(answer({"error": str(exc), "code": 2}))
            return
        delete: list[Path] = []
        try:
            with _Heartbeat(write) as beat:
                ans, delete = session.handle(req, files, beat.progress)
        except (RuntimeMissing, ValueError, OSError) as exc:
            ans = _failure(exc)
        for m in delete:
            with contextlib.suppress(OSError):
                m.unlink(missing_ok=True)
        write(answer(ans))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m deploy.ontarget.agent",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="*", help=".onnx or .tflite file (several: a batch, "
                    "timed in interleaved trials; --json only, no --data)")
    ap.add_argument("--serve", action="store_true",
                    help="answer batch requests, one JSON line each, from stdin until it ends")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=TimingProtocol.runs)
    ap.add_argument("--warmup", type=int, default=TimingProtocol.warmup)
    ap.add_argument("--trials", type=int, default=TimingProtocol.trials)
    ap.add_argument("--probe", action="store_true",
                    help="the first model is the reference probe: report times in its units")
    ap.add_argument("--probe-bound", type=float, default=TimingProtocol.probe_bound)
    ap.add_argument("--retime", type=int, default=TimingProtocol.retime)
    ap.add_argument("--data", help="eval .npz or image folder: also report top-1")
    ap.add_argument("--limit", type=int, help="at most this many eval images")
    ap.add_argument("--json", action="store_true")
    return ap


def _serve_stdio() -> int:
    """``--serve``: requests from stdin, answers on the real stdout (anything a runtime
    prints goes to stderr instead)."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def write(text: str) -> None:
        answers.write(text + "\n")
        answers.flush()

    watch_parent(0)  # a dropped connection ends the agent, even mid-batch
    serve(sys.stdin, write)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.serve:
        if a.model:
            print("agent: error: --serve takes its models from stdin", file=sys.stderr)
            return 2
        return _serve_stdio()
    if not a.model:
        print("agent: error: give a model file (or --serve)", file=sys.stderr)
        return 2
    if len(a.model) > 1 and (a.data or not a.json):
        print("agent: error: several models are a batch: --json, and no --data",
              file=sys.stderr)
        return 2
    if a.probe and len(a.model) < 2:
        print("agent: error: --probe: give the probe first, then the models to time",
              file=sys.stderr)
        return 2
    watch_parent(None)
    try:
        protocol = TimingProtocol(a.warmup, a.runs, a.trials, probe=a.probe,
                                  probe_bound=a.probe_bound, retime=a.retime)
        res = (benchmark_many(a.model, a.threads, protocol) if len(a.model) > 1 else
               benchmark(a.model[0], a.threads, protocol, a.data, a.limit))
    except RuntimeMissing as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as exc:
        print(f"agent: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res))
    else:
        d = res["machine"]
        print(f"{res['model']} on {d['cpu_model']} ({d['cores']} cores), {res['runtime']} "
              f"{res['runtime_version']}, {res['threads']} thread(s): median "
              f"{res['median']:.3f} ms, p90 {res['p90']:.3f} ms, min {res['min']:.3f} ms")
        if "accuracy" in res:
            print(f"top-1 {res['accuracy']['top1']:.2f}% on {res['accuracy']['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
