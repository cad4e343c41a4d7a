"""Building a latency table (``ofa lut build``): every block shape timed, here or on a
target, then the calibration; resumable.

A build on this machine converts every model first (blocks and calibration subnets), then
times the blocks in batches of interleaved trials, back to back, and the calibration subnets
right after, all within seconds: the power law then fits whole subnets to their block sums
within ±5.3% where blocks and subnets are timed in one window (``bench/block_order.py``; 26
LiteRT digits subnets, two runs), while blocks timed minutes apart, between conversions,
carried a drift of the VM's speed of up to 20% into the table. On a device target the blocks
are converted here and timed there as soon as a batch is ready. A killed build resumes:
measured entries are kept in ``<out>.partial.json`` (atomically rewritten after every batch)
and skipped on the next run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deploy.export import converter_pool
from deploy.formats import ExportFormat, format_for
from deploy.lut.calibrate import calibrate
from deploy.lut.convert import (
    PRECISIONS,
    _block,
    _block_file,
    _conversions,
    _convert_missing,
    _export,
    _export_subnets,
    _models_folder,
    _Overhead,
    block_layout,
    block_models_dir,
    calibration_configs,
)
from deploy.lut.measure import _context, _loaded, _random_input
from deploy.ontarget.runtimes import TimingProtocol, get_runtime, time_interleaved, times_files
from deploy.probe import PROBE_ID, ProbedTarget, load_probe, probe_summary
from deploy.targets import Target
from deploy.torch_runtime import TorchRuntime
from ofa.errors import InputError
from ofa.fileio import atomic_write_json
from ofa.space import BlockShape, SearchSpace, SubnetConfig
from search.latency_table import LatencyTable

__all__ = ["FIRST_BATCH", "build_table"]

FIRST_BATCH = 8  # blocks in a device build's first request (see _build_on_device)


def _build_here(job: _Build, state: dict[str, Any], todo: list[tuple[int, BlockShape]],
                folder: Path, bar: tqdm) -> float:
    """Time the blocks of ``todo`` in this process from their models in ``folder`` (all
    converted before, :func:`_convert_missing`), ``job.batch`` at a time, the batches back to
    back: a batch is loaded and timed in interleaved trials
    (:func:`deploy.ontarget.runtimes.time_interleaved`) together with the almost empty model,
    whose statistic is the batch's per-invoke overhead (the table's ``overhead_ms`` is the
    median over the batches). No conversion runs meanwhile, and the whole table is timed
    within seconds (288 LiteRT digits blocks: ~5 s) instead of between the conversions of
    minutes: blocks timed minutes apart on this project's VM differ by up to 20% from a
    drift of its speed. ``job.save`` runs after every batch. The torch runtime times the
    modules themselves.

    Returns the seconds spent loading and timing."""
    t0 = time.perf_counter()
    ent = state["entries"]
    runtime, precision, threads, protocol = job.runtime, job.precision, job.threads, job.protocol
    if not todo:
        return 0.0
    ov_rt, ov_x = _loaded(_Overhead(), (1, 8, 1, 1), runtime, threads, folder / "overhead",
                          precision)
    prt, px = load_probe(runtime, threads, precision)
    for i in range(0, len(todo), job.batch):
        chunk = todo[i:i + job.batch]
        rts, xs = [prt, ov_rt], [px, ov_x]
        for _, s in chunk:
            shape = (1, s.in_ch, s.in_size, s.in_size)
            rt = get_runtime(runtime, threads)
            if isinstance(rt, TorchRuntime):
                rt.load_module(_block(s).eval(), shape)
            else:
                rt.load(str(_block_file(folder, s, job.suffix)))
            rts.append(rt)
            xs.append(_random_input(rt, shape))
        probe, ov, *stats = time_interleaved(rts, xs, protocol)
        for (r, s), st in zip(chunk, stats):
            ent.setdefault(str(r), {})[s.key()] = _entry(st)
        _batch_done(state, probe, ov, protocol)
        job.save()
        bar.update(len(chunk))
    return time.perf_counter() - t0


def _entry(st: dict[str, Any]) -> dict[str, Any]:
    return {k: st.get(k) for k in ("median", "mean", "std", "p90", "count", "rel")}


def probe_share(shares: list[Any]) -> float:
    """The probe's share of a build's timed work from its batches' ``[share, timed_ms]``:
    each batch weighted by its timed work, so that a short first batch (:data:`FIRST_BATCH`
    blocks, whose share is the largest) weighs what it cost; the plain mean of the shares
    where some batch has no weight (a bare share: a build state saved before the weights,
    or a batch whose probe statistics carry no ``timed_ms``). The plain mean put an
    emulated-Pi digits build at 19% (``docs/benchmarks.md``).
    """
    if not all(isinstance(s, (list, tuple)) for s in shares):
        return float(np.mean([s[0] if isinstance(s, (list, tuple)) else s for s in shares]))
    pairs = np.asarray(shares, dtype=float)
    return float((pairs[:, 0] * pairs[:, 1]).sum() / pairs[:, 1].sum())


def _probe_done(state: dict[str, Any], probe: dict[str, Any]) -> None:
    """Record a timed batch's probe: its mean invoke (as probe units are means: the
    device's speed in that batch), its share of the timed work, how often the batch was
    timed again and how many model trials it dropped (``time_interleaved``)."""
    state.setdefault("probe_ms", []).append(probe["mean"])
    for k in ("retimed", "dropped"):
        state[k] = state.get(k, 0) + int(probe.get(k, 0))
    if probe.get("share") is not None:  # with the batch's timed work (ms) as its weight
        state.setdefault("probe_shares", []).append(
            [probe["share"], probe["timed_ms"]] if "timed_ms" in probe else probe["share"])


def _batch_done(state: dict[str, Any], probe: dict[str, Any], ov: dict[str, Any],
                protocol: TimingProtocol) -> None:
    """Record a timed batch's probe (its mean invoke, as probe units are means: the
    device's speed in that batch; how often it was re-timed) and its per-invoke overhead
    (ms and probe units; the table's are the medians over the batches)."""
    _probe_done(state, probe)
    state.setdefault("overheads_ms", []).append(ov[protocol.statistic])
    state.setdefault("overheads_rel", []).append(ov["rel"])
    state["overhead_ms"] = float(np.median(state["overheads_ms"]))
    state["overhead_rel"] = float(np.median(state["overheads_rel"]))


def _build_on_device(job: _Build, state: dict[str, Any], todo: list[tuple[int, BlockShape]],
                     target: Target, tmp: Path, bar: tqdm, convert: Callable[..., Any],
                     folder: Path) -> dict[str, float]:
    """Time the blocks of ``todo`` on ``target``, ``job.batch`` per request
    (``Target.bench_batches``; over SSH the device loads batch ``i + 1`` in a second agent
    process while it times batch ``i``). The blocks are converted here by ``convert`` (all
    submitted at once, converting while the device times) into ``folder``
    (:func:`block_models_dir`: a killed build converts nothing twice), and a batch goes to
    the device as soon as its models are there; the
    first batch, at most :data:`FIRST_BATCH` blocks so that its conversion hides behind the
    device's start, also carries the overhead model and sets the table's context from the
    device's answer; ``job.save`` runs after every batch.

    Returns seconds: ``wall`` (this loop), ``start`` (the device getting ready), ``wait``
    (the device idle, waiting for conversions), ``timing``, ``load`` and ``load_wait`` (the
    loading nothing hid), NaN where the target does not report them (adb); and counts:
    ``prefetched`` batches, ``converted`` block models.
    """
    runtime, precision, threads, batch = job.runtime, job.precision, job.threads, job.batch
    first = min(batch, FIRST_BATCH)  # converted while the device starts, timed soon after
    bounds = [(0, first)] + [(i, i + batch) for i in range(first, len(todo), batch)]
    spent = dict.fromkeys(("start", "wait", "timing", "load", "load_wait"), 0.0)
    spent.update(prefetched=0, converted=0)
    suffix = job.suffix
    files = [_block_file(folder, s, suffix) for _, s in todo]
    ready = {f for f in files if f.exists()}  # converted by an earlier call

    def converted() -> Iterator[list[Path]]:
        """Each chunk's models, as soon as the pool has converted them."""
        head = []
        if "context" not in state:  # the first batch carries the overhead model
            head = [tmp / f"overhead{suffix}"]
            _export(_Overhead(), (1, 8, 1, 1), job.fmt, head[0])
        spent["converted"], done = _conversions(todo, job.fmt, folder, convert)
        target.start(runtime)  # the device gets ready while the pool converts the first
        spent["start"] = time.perf_counter() - t0
        for i, (a, b) in enumerate(bounds):
            paths = files[a:b]
            t1 = time.perf_counter()
            while not all(f in ready for f in paths):  # results come in submission order
                ready.add(Path(next(done)))
            spent["wait"] += time.perf_counter() - t1
            yield (head if i == 0 else []) + paths

    t0 = time.perf_counter()
    for i, rows in enumerate(target.bench_batches(converted(), threads, job.protocol)):
        chunk = todo[slice(*bounds[i])]
        if "context" not in state:  # the device's facts, from its first answer
            state["context"] = {
                "machine": rows[0].get("machine") or {"name": target.name},
                "runtime": runtime, "runtime_version": rows[0].get("runtime_version"),
                "backend": rows[0].get("backend"), "threads": threads,
                "precision": precision, "batch": 1, "target": target.name,
                "block_layout": block_layout(runtime)}
        _device_batch_done(state, chunk, rows, job.protocol)
        job.save()  # a dropped device loses one batch
        bar.update(len(chunk))
        _account(spent, rows[0].get("batch", {}) if rows else {})
    spent["wait"] = max(0.0, spent["wait"])  # less what hid behind timing: rounding below 0
    return {"wall": time.perf_counter() - t0, **spent}


def _device_batch_done(state: dict[str, Any], chunk: list[tuple[int, BlockShape]],
                       rows: list[dict[str, Any]], protocol: TimingProtocol) -> None:
    """A device batch's rows into the build state: the probe's time (and, in the first
    batch, the overhead model's), then one entry per block of ``chunk``."""
    if rows and len(rows) > len(chunk):  # the overhead model of the first batch
        _batch_done(state, rows[0]["probe"], rows.pop(0)["latency_ms"], protocol)
    elif rows:
        _probe_done(state, rows[0]["probe"])
    for (r, s), row in zip(chunk, rows):
        state["entries"].setdefault(str(r), {})[s.key()] = _entry(row["latency_ms"])


def _account(spent: dict[str, float], info: dict[str, Any]) -> None:
    """Add a batch's device seconds (its ``batch`` record) to ``spent``."""
    for k in ("timing", "load", "load_wait"):
        v = info.get(f"{k}_s")
        spent[k] += float("nan") if v is None else v
    spent["prefetched"] += bool(info.get("prefetched"))
    spent["wait"] -= info.get("hidden_wait_s", 0.0)  # the device was timing meanwhile


def _resume_state(partial_path: Path, state: dict[str, Any], total: int) -> dict[str, Any]:
    """The saved build state in ``partial_path`` when it was made with the same settings
    (space, resolutions, runtime, threads, target, protocol, block layout), else
    ``state``."""
    try:
        old = json.loads(partial_path.read_text())
    except (OSError, json.JSONDecodeError):
        return state
    if not isinstance(old, dict):
        return state
    old.setdefault("target", "local")  # partial files from before device targets
    old.setdefault("precision", "fp32")
    old.setdefault("block_layout", "nchw")  # partial files from before NHWC LiteRT blocks
    same = ("space", "resolutions", "runtime", "precision", "threads", "target", "protocol",
            "block_layout")
    if any(old.get(k) != state[k] for k in same):
        return state
    done = sum(len(g) for g in old.get("entries", {}).values())
    print(f"resuming: {done}/{total} entries already measured")
    return old


def _device_time(spent: dict[str, float], blocks: int, where: str) -> str:
    """One line: where a device build's time went (see :func:`_build_on_device`)."""
    wall, start, timing = spent["wall"], spent["start"], spent["timing"]
    if not blocks or not timing > 0:  # nothing timed, or a target that does not say (adb)
        return f"{where}: {blocks} block(s) in {wall:.1f} s"
    send = wall - sum(spent[k] for k in ("start", "wait", "timing", "load_wait"))
    return (f"{where}: {blocks} block(s) in {wall:.1f} s: session start {start:.1f} s, timed "
            f"trials {timing:.1f} s (warm-up included), loading {spent['load']:.1f} s "
            f"({spent['load_wait']:.1f} s of it not hidden behind timing), waiting for this "
            f"machine's export {spent['wait']:.1f} s, requests and answers {send:.1f} s; "
            f"overhead {100 * (wall - timing) / timing:.0f}% of the timed trials "
            f"({100 * (wall - start - timing) / timing:.0f}% after the session start)")


def build_table(space: SearchSpace, resolutions: list[int], runtime: str, out: str | Path,
                threads: int = 1, protocol: TimingProtocol | None = None, calib: int = 10,
                seed: int = 0, target: Target | None = None, batch: int = 32,
                precision: str = "fp32", jobs: int = 1, calib_repeats: int = 3
                ) -> LatencyTable:
    """Measure every block shape and write the table to ``out`` (resumable).

    ``precision``: ``fp32`` or ``int8`` (blocks and calibration subnets in the int8 format
    of ``runtime``, see the module docstring); recorded in the table's context. ``jobs``:
    processes converting models, one pool for blocks and calibration subnets. A build on
    this machine converts every model first (into :func:`block_models_dir`; those
    :func:`convert_blocks` converted ahead are used), then times the blocks, ``batch`` at a
    time in a seeded shuffled order (a drift spreads over stages and resolutions), and the
    calibration subnets right after (``calib_repeats`` passes, :func:`calibrate`).
    Entries are kept in ``<out>.partial.json`` after each batch (converted models in
    :func:`block_models_dir` until the table is written), so a killed build, or one whose
    device went away, resumes. ``target`` (SSH or adb, :mod:`deploy.targets`; None: this
    machine): the blocks are converted here and timed there as soon as a batch is ready
    (:func:`_build_on_device`), the device's facts go into the table's context and one
    line says where the device time went (the ``build`` record, ``docs/formats.md``).

    Raises:
        ValueError: resolutions outside the space, an unknown runtime or a precision it has
            no format for.
        deploy.targets.TargetError: the device is unreachable or lacks the runtime.
    """
    _check_build(space, resolutions, runtime, precision)
    protocol = dataclasses.replace(protocol or TimingProtocol(), probe=True)
    out = Path(out)
    partial_path = out.with_name(out.name + ".partial.json")
    shapes: list[tuple[int, BlockShape]] = [(r, s) for r in resolutions
                                            for s in space.all_block_shapes([r])]
    state = _resume_state(partial_path, _new_state(space, resolutions, runtime, precision,
                                                   threads, target, protocol), len(shapes))
    torch.manual_seed(seed)
    todo = [(r, s) for r, s in shapes if s.key() not in state["entries"].get(str(r), {})]
    random.Random(seed).shuffle(todo)  # a drift while timing spreads over every stage
    jobs = jobs if times_files(runtime) else 1
    cfgs = calibration_configs(space, resolutions, calib, seed) if calib > 0 else []
    job = _Build(space, runtime, precision, threads, protocol, batch, jobs, out,
                 lambda: atomic_write_json(partial_path, state), len(shapes))
    with (tempfile.TemporaryDirectory() as tmp, converter_pool(jobs) as convert):
        if target is not None:
            target = ProbedTarget(target, runtime, precision)
            build = job.on_device(state, todo, target, Path(tmp), convert)
            models = _models_folder(out, runtime, precision) / "calibration"
        else:
            build, models = job.here(state, todo, cfgs, convert)
        table = _table_of(state, build, space, resolutions, protocol, out)
        if calib > 0 and state.get("calibration"):  # measured before the build was stopped
            table.calibration = state["calibration"]
        elif calib > 0:
            calibrate(table, space, calib, protocol, seed, target, jobs, convert, models,
                      calib_repeats)
            state["calibration"] = table.calibration
            job.save()
    table.save(out)
    partial_path.unlink(missing_ok=True)
    shutil.rmtree(block_models_dir(out), ignore_errors=True)
    return table


def _new_state(space: SearchSpace, resolutions: list[int], runtime: str, precision: str,
               threads: int, target: Target | None, protocol: TimingProtocol
               ) -> dict[str, Any]:
    """A build's state before any block is timed: the settings a resumed build must share
    (:func:`_resume_state`) and no entries."""
    return {"space": space.to_dict(), "resolutions": resolutions, "runtime": runtime,
            "precision": precision, "threads": threads,
            "target": "local" if target is None else target.name,
            "protocol": asdict(protocol), "block_layout": block_layout(runtime),
            "entries": {}}


def _check_build(space: SearchSpace, resolutions: list[int], runtime: str,
                 precision: str) -> None:
    """Refuse a build that cannot be done, before any work.

    Raises:
        ValueError: an unknown precision, one ``runtime`` has no format for, or a resolution
            outside the space.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if times_files(runtime):
        format_for(runtime, precision)
    elif precision != "fp32":
        raise InputError("the torch runtime is timed in fp32 only")
    for r in resolutions:
        space.validate(space.max_subnet(r))


@dataclasses.dataclass(frozen=True)
class _Build:
    """One table build's fixed settings (what every batch of it shares) and its two ways
    of timing the blocks: here, in process, or on a device target."""

    space: SearchSpace
    runtime: str
    precision: str
    threads: int
    protocol: TimingProtocol
    batch: int
    jobs: int
    out: Path
    save: Callable[[], None]  # writes the partial state (after every batch)
    total: int  # block shapes in the whole table

    @functools.cached_property
    def fmt(self) -> ExportFormat | None:
        """The models' format: the runtime's at the build's precision, resolved here once
        (None for eager torch, which times modules)."""
        return format_for(self.runtime, self.precision) if times_files(self.runtime) \
            else None

    @property
    def suffix(self) -> str:
        """The block models' file suffix (``.onnx``, ``.tflite``; "" for eager torch)."""
        return self.fmt.suffix if self.fmt else ""

    def bar(self, todo: list[tuple[int, BlockShape]], desc: str) -> tqdm:
        return tqdm(desc=desc, unit="block", total=self.total,
                    initial=self.total - len(todo))

    def on_device(self, state: dict[str, Any], todo: list[tuple[int, BlockShape]],
                  target: Target, tmp: Path, convert: Callable[..., Any]) -> dict[str, Any]:
        """Time the blocks left on ``target`` (:func:`_build_on_device`); the ``build``
        record. With none left (a build stopped after its blocks), nothing is timed."""
        if not todo:
            return {"blocks": 0, "jobs": self.jobs}
        folder = _models_folder(self.out, self.runtime, self.precision)
        with self.bar(todo, f"lut {self.runtime} {self.precision}") as bar:
            spent = _build_on_device(self, state, todo, target, tmp, bar, convert, folder)
        print(_device_time(spent, len(todo), target.name))
        return {"blocks": len(todo), "jobs": self.jobs,
                **{k: int(spent.pop(k)) for k in ("converted", "prefetched")},
                **{f"{k}_s": round(v, 2) for k, v in spent.items()}}

    def here(self, state: dict[str, Any], todo: list[tuple[int, BlockShape]],
             cfgs: list[SubnetConfig], convert: Callable[..., Any]
             ) -> tuple[dict[str, Any], Path | None]:
        """Convert every model first (blocks and calibration subnets, which
        :func:`calibrate` then finds: nothing converts while timing), then time the blocks
        left in process; the ``build`` record and the calibration models' folder."""
        state.setdefault("context", _context(self.runtime, self.threads, self.precision))
        folder = _models_folder(self.out, self.runtime, self.precision)
        t0 = time.perf_counter()
        converted, models = 0, None
        if times_files(self.runtime):
            converted = _convert_missing(todo, self.fmt, folder, convert)
            models = folder / "calibration"
            _export_subnets(self.space, cfgs, self.fmt, models, "calibration", self.jobs,
                            convert)
        export_s = time.perf_counter() - t0
        with self.bar(todo, f"lut {self.runtime} {self.precision}: time") as bar:
            timing_s = _build_here(self, state, todo, folder, bar)
        return {"blocks": len(todo), "converted": converted, "jobs": self.jobs,
                "wall_s": round(time.perf_counter() - t0, 2),
                "export_s": round(export_s, 2), "timing_s": round(timing_s, 2)}, models


def _table_of(state: dict[str, Any], build: dict[str, Any], space: SearchSpace,
              resolutions: list[int], protocol: TimingProtocol, out: Path) -> LatencyTable:
    """The table the build state holds (before its calibration)."""
    build["retimed"] = state.get("retimed", 0)
    build["dropped"] = state.get("dropped", 0)
    if state.get("probe_shares"):  # the probe's part of the blocks' timed work
        build["probe_share"] = round(probe_share(state["probe_shares"]), 4)
    return LatencyTable(context=state["context"], space=space.to_dict(),
                        resolutions=sorted(resolutions), entries=state["entries"],
                        protocol=asdict(protocol), overhead_ms=state["overhead_ms"],
                        source=str(out), build=build,
                        probe={"id": PROBE_ID, "ms": probe_summary(state["probe_ms"]),
                               "measured": "build"},
                        overhead_rel=state["overhead_rel"])
