"""Build and validate latency lookup tables by measuring on this machine (``ofa lut``).

Build: every layer-group shape the space can produce at the requested resolutions is built as
a tiny model, exported for the runtime, and timed with the protocol; then K whole random
subnets are measured end to end to fit the calibration ``a * raw ** p`` (block sums miss
fusion and per-invoke overhead; nn-Meter, Zhang et al., MobiSys 2021). Formats are in
``docs/formats.md``.
A killed build resumes: measured entries are kept in ``<out>.partial.json`` (atomically
rewritten after every batch of blocks) and skipped on the next run, and converted models in
``<out>.models/`` until the table is written.

A build on this machine converts every model first (blocks and calibration subnets), then
times the blocks in batches of interleaved trials, back to back, and the calibration subnets
right after, all within seconds: the power law then fits whole subnets to their block sums
within ±5.3% where blocks and subnets are timed in one window (``bench/block_order.py``; 26
LiteRT digits subnets, two runs), while blocks timed minutes apart, between conversions,
carried a drift of the VM's speed of up to 20% into the table.

Whole subnets (calibration, validation) are exported first and then timed in interleaved
trials, so that a drift of the machine's speed does not favour the subnets timed first.

Precision: ``fp32`` or ``int8``. An int8 table times every block and subnet as the file
``ofa export`` writes for that runtime at int8 (:data:`deploy.formats.FORMATS`: ONNX QDQ with
per-channel weights, full-integer TFLite), quantised on a fixed-seed random representative set
(:func:`representative_set`; the values set the quantisation scales, not the work). Each block
shape is converted once. Conversions run in ``jobs`` processes in parallel, never beside a
timed invoke (a full-integer TFLite conversion of a subnet takes ~30 s here, of a block ~1 s).

Validate: N seeded random subnets (other seeds than calibration), measured end to end, against
raw and calibrated predictions: share within ±5% / ±10%, RMSPE, Kendall τ, and a scatter plot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from torch import nn
from tqdm import tqdm

from deploy.export import converter_pool
from deploy.formats import format_for
from deploy.ontarget.facts import machine_facts
from deploy.ontarget.runtimes import Runtime, TimingProtocol, get_runtime, time_interleaved
from deploy.probe import PROBE_ID, ProbedTarget, load_probe, probe_summary
from deploy.targets import Target
from deploy.torch_runtime import TorchRuntime
from ofa.errors import InputError
from ofa.fileio import atomic_write_json
from ofa.space import BlockShape, SearchSpace, SubnetConfig
from ofa.static import build_layer
from ofa.supernet import build_supernet
from search.latency import LatencyPredictor
from search.latency_table import LatencyTable
from search.metrics import relative_error_report

__all__ = ["measure_module", "measure_subnets", "build_table", "block_models_dir", "convert_blocks",
           "calibration_configs", "calibrate", "fit_calibration",
           "refit_calibration", "validate_table",
           "runtime_context", "representative_set", "periodic_weights", "block_layout",
           "PRECISIONS"]

PRECISIONS = ("fp32", "int8")
CALIB_IMAGES = 8  # representative inputs per int8 conversion (blocks and whole subnets)
FIRST_BATCH = 8  # blocks in a device build's first request (see _build_on_device)
# whole subnets timed together beside the probe: each batch short enough (seconds) that a
# change of the device's speed during it is rare and timing it again is cheap
SUBNET_BATCH = 16


def representative_set(input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``(CALIB_IMAGES, C, H, W)`` float32 standard-normal inputs (fixed ``seed``) for int8
    conversions in tables: normalised images and BN-ed activations are of that scale."""
    g = np.random.default_rng(seed)
    return g.standard_normal((CALIB_IMAGES, *input_shape[1:])).astype(np.float32)


def _export(model: nn.Module, input_shape: tuple[int, ...], runtime: str, precision: str,
            path: Path) -> Path:
    """Write ``model`` as the file ``runtime`` runs at ``precision`` (see ``deploy/formats.py``).
    """
    fmt = format_for(runtime, precision)
    calib = representative_set(input_shape) if precision == "int8" else None
    return fmt.export(model.eval(), input_shape, path, calib=calib)


def runtime_context(runtime: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """The measurement context stored in a table's header (this machine)."""
    rt = get_runtime(runtime, threads)
    return {"machine": machine_facts(), "runtime": runtime, "runtime_version": rt.version(),
            "backend": rt.backend, "threads": threads, "precision": precision, "batch": 1}


def _loaded(model: nn.Module, input_shape: tuple[int, ...], runtime: str, threads: int,
            stem: Path, precision: str = "fp32") -> tuple[Runtime, np.ndarray]:
    """``model`` ready to time in ``runtime``: exported to ``stem`` + the format's suffix and
    loaded (the torch runtime takes the module itself); (runtime, random input)."""
    rt = get_runtime(runtime, threads)
    if isinstance(rt, TorchRuntime):
        if precision != "fp32":
            raise InputError("the torch runtime is timed in fp32 only")
        rt.load_module(model, input_shape)
    else:
        path = stem.with_name(stem.name + format_for(runtime, precision).suffix)
        _export(model, input_shape, runtime, precision, path)
        rt.load(str(path))
    return rt, _random_input(rt, input_shape)


def _random_input(rt: Runtime, input_shape: tuple[int, ...]) -> np.ndarray:
    """A random float NCHW input in the layout and type ``rt``'s model takes."""
    return rt.prepare(torch.randn(*input_shape).numpy())


def _bench_on(target: Target, model: nn.Module, input_shape: tuple[int, ...], runtime: str,
              threads: int, protocol: TimingProtocol, workdir: str | Path,
              precision: str = "fp32") -> dict[str, Any]:
    """Export ``model`` here and time it on ``target``; the agent's whole JSON (latency
    statistics, device facts, runtime version).

    Raises:
        ValueError: the torch runtime (it runs in this process only).
    """
    if runtime == "torch":
        raise InputError("the torch runtime is measured in this process only (no --target)")
    path = Path(workdir) / f"m{format_for(runtime, precision).suffix}"
    _export(model, input_shape, runtime, precision, path)
    return target.bench(path, threads, protocol)


def measure_module(model: nn.Module, input_shape: tuple[int, ...], runtime: str, threads: int,
                   protocol: TimingProtocol, workdir: str | Path,
                   target: Target | None = None, precision: str = "fp32") -> dict[str, float]:
    """Time one invoke of ``model`` (input ``input_shape``, NCHW) in ``runtime`` at
    ``precision`` (``fp32`` | ``int8``: the file ``ofa export`` writes) (ms stats).

    With ``target`` (an SSH or adb target from :mod:`deploy.targets`) the exported file is
    copied to the device and timed there by the agent or ``benchmark_model``; otherwise it is
    timed in this process. Returns ``{"median", "mean", "std", "p90", "min", "count"}``.

    Raises:
        deploy.targets.TargetError: the device is unreachable or lacks the runtime.
    """
    if target is not None:
        return _bench_on(target, model, input_shape, runtime, threads, protocol,
                         workdir, precision)["latency_ms"]
    rt, x = _loaded(model, input_shape, runtime, threads, Path(workdir) / "m", precision)
    return time_interleaved([rt], [x], protocol)[0]


WEIGHT_PERIOD = 251  # values in the repeated weight tile of a timed model


def periodic_weights(model: nn.Module, period: int = WEIGHT_PERIOD, seed: int = 0) -> nn.Module:
    """Give every weight tensor of ``model`` (conv and linear kernels: the parameters with
    more than one dimension) one seeded tile of ``period`` normal values, repeated and scaled
    to the tensor's own standard deviation at initialisation; in place, returns ``model``.

    A model timed for a latency table is a shape, not a trained network: the dense kernels
    of ONNX Runtime, XNNPACK and eager torch do the same work whatever the values (no
    sparsity, no value-dependent paths; values stay far from the denormal range), and a
    repeated tile compresses with zlib (25-35x fp32 ONNX and TFLite files, ~10x int8, whose
    per-channel scales differ), so a batch of blocks sent to a device is a few percent of its
    bytes (``tests/test_deploy.py`` checks the latencies match random weights). The range
    per tensor is kept so int8 quantisation sees ordinary scales.

    Raises:
        ValueError: ``period < 2``.
    """
    if period < 2:
        raise InputError(f"period must be >= 2, got {period}")
    base = torch.randn(period, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                n = p.numel()
                std = float(p.std(correction=0)) or 1.0  # 1.0: a constant tensor
                p.copy_((base.repeat(n // period + 1)[:n] * std).reshape(p.shape))
    return model


def _block(s: BlockShape) -> nn.Module:
    """The model a table times for block shape ``s``: its layer with periodic weights."""
    return periodic_weights(build_layer(s))


class _ChannelsLast(nn.Module):
    """``block`` with NHWC input and (4-D) output: inside a whole TFLite network every layer
    reads and writes NHWC, so a LiteRT block timed with NCHW I/O would carry two TRANSPOSE
    ops the network does not have (litert-torch folds these permutes into the layout)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def block_layout(runtime: str) -> str:
    """The I/O layout a table's blocks are exported with for ``runtime``: ``nhwc`` for
    LiteRT (the layout between layers of a TFLite network), ``nchw`` otherwise (ONNX keeps
    NCHW throughout)."""
    return "nhwc" if runtime == "litert" else "nchw"


def _block_model(s: BlockShape, runtime: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model exported for block ``s`` in ``runtime`` and its input shape (NHWC with
    :class:`_ChannelsLast` for LiteRT, see :func:`block_layout`)."""
    if block_layout(runtime) == "nhwc":
        return _ChannelsLast(_block(s)), (1, s.in_size, s.in_size, s.in_ch)
    return _block(s), (1, s.in_ch, s.in_size, s.in_size)


class _Overhead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _subnet(space: SearchSpace, cfg: SubnetConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build_supernet(space)
    net.set_active_subnet(cfg)
    return periodic_weights(net.get_active_subnet().eval())


def _export_subnet(space: dict, cfg: dict, seed: int, runtime: str, precision: str,
                   path: str) -> str:
    """One whole subnet to ``path`` (a process-pool task: plain arguments)."""
    sp, c = SearchSpace.from_dict(space), SubnetConfig.from_dict(cfg)
    _export(_subnet(sp, c, seed), (1, 3, c.r, c.r), runtime, precision, Path(path))
    return path


def _export_subnets(space: SearchSpace, cfgs: list[SubnetConfig], runtime: str, precision: str,
                    folder: Path, desc: str, jobs: int,
                    convert: Callable[..., Any] | None = None) -> list[Path]:
    """Every config exported into ``folder`` (``s<i>-<config hash><suffix>``; a file already
    there is kept: converted ahead by :func:`convert_blocks`), by ``jobs`` processes (1:
    here), or by ``convert`` (an open :func:`deploy.export.converter_pool`'s map)."""
    suffix = format_for(runtime, precision).suffix
    paths = [folder / (f"s{i}-" + hashlib.sha1(c.to_json().encode()).hexdigest()[:12] + suffix)
             for i, c in enumerate(cfgs)]
    tasks = [(space.to_dict(), c.to_dict(), i, runtime, precision, str(p))
             for i, (c, p) in enumerate(zip(cfgs, paths)) if not p.exists()]
    if tasks:
        with (tqdm(total=len(tasks), desc=f"{desc}: export ({precision}, {jobs} process(es))",
                   leave=False) as bar,
              contextlib.nullcontext(convert) if convert else converter_pool(jobs) as run):
            for _ in run(_export_subnet, *zip(*tasks)):
                bar.update()
    return paths


def _measure_configs(space: SearchSpace, cfgs: list[SubnetConfig], runtime: str, threads: int,
                     protocol: TimingProtocol, desc: str, target: Target | None = None,
                     precision: str = "fp32", jobs: int = 1,
                     convert: Callable[..., Any] | None = None,
                     models: Path | None = None) -> dict[str, list[float]]:
    """Whole-subnet latency of every config, end to end, beside the reference probe.

    Every subnet is exported (by ``jobs`` processes) and loaded first and then timed in
    interleaved trials with the probe first (:func:`deploy.ontarget.runtimes.time_interleaved`,
    ``TimingProtocol(probe=True)``), :data:`SUBNET_BATCH` subnets at a time, so a change of
    the machine's speed cancels from each subnet's ``rel`` and a batch whose probe moved is
    timed again in seconds, not minutes; no conversion runs while anything is timed: here in
    this process, on a device target batch after batch (``Target.bench_many``).
    ``convert``: an open converter pool's map to export with (else one is started for
    ``jobs``). ``models``: a folder to export into whose files already there
    are used (else a temporary one).

    Returns ``{"ms": [...], "rel": [...], "probe_ms": [...]}``: each subnet's statistic (ms)
    and its time in probe units, and the probe's medians (ms) over the measurement (its
    speed states)."""
    protocol = dataclasses.replace(protocol, probe=True)
    with tempfile.TemporaryDirectory() as tmp:
        if runtime == "torch" and target is None:
            loaded = [_loaded(_subnet(space, c, i), (1, 3, c.r, c.r), runtime, threads,
                              Path(tmp) / f"s{i}", precision) for i, c in enumerate(cfgs)]
            rts, xs = [r for r, _ in loaded], [x for _, x in loaded]
        else:
            paths = _export_subnets(space, cfgs, runtime, precision, models or Path(tmp),
                                    desc, jobs, convert)
            if target is not None:
                probed = ProbedTarget(target, runtime, precision)
                out: dict[str, list[float]] = {"ms": [], "rel": [], "probe_ms": []}
                for i in range(0, len(paths), SUBNET_BATCH):
                    rows = probed.bench_many(paths[i:i + SUBNET_BATCH], threads, protocol)
                    out["ms"] += [r["latency_ms"][protocol.statistic] for r in rows]
                    out["rel"] += [r["latency_ms"]["rel"] for r in rows]
                    out["probe_ms"] += list(rows[0]["probe"]["trial_means"]) if rows else []
                return out
            rts, xs = [], []
            for c, path in zip(cfgs, paths):
                rt = get_runtime(runtime, threads)
                rt.load(str(path))
                rts.append(rt)
                xs.append(_random_input(rt, (1, 3, c.r, c.r)))
        prt, px = load_probe(runtime, threads, precision)
        out = {"ms": [], "rel": [], "probe_ms": []}
        with tqdm(total=len(cfgs) * protocol.trials, leave=False,
                  desc=f"{desc}: time ({protocol.trials} interleaved trials, probe)") as bar:
            for i in range(0, len(rts), SUBNET_BATCH):
                head, *stats = time_interleaved([prt, *rts[i:i + SUBNET_BATCH]],
                                                [px, *xs[i:i + SUBNET_BATCH]], protocol,
                                                progress=bar.update)
                out["ms"] += [st[protocol.statistic] for st in stats]
                out["rel"] += [st["rel"] for st in stats]
                out["probe_ms"] += head["trial_means"]
        return out


def measure_subnets(table: LatencyTable, space: SearchSpace, cfgs: list[SubnetConfig],
                    target: Target | None = None, jobs: int = 1, desc: str = "measure",
                    protocol: TimingProtocol | None = None) -> dict[str, list[float]]:
    """Whole subnets measured beside the reference probe in ``table``'s context (runtime,
    threads, precision, protocol), on ``target`` (None: this machine, in process), with
    periodic weights (a latency does not depend on the values, :func:`periodic_weights`).

    Returns ``{"ms", "rel", "probe_ms"}`` as :func:`_measure_configs` does.

    Raises:
        deploy.targets.TargetError: the device could not measure.
    """
    return _measure_configs(space, cfgs, table.context["runtime"],
                            int(table.context["threads"]),
                            protocol or TimingProtocol.from_fields(table.protocol), desc,
                            target, table.context.get("precision", "fp32"), jobs)


def _export_block(s: BlockShape, runtime: str, precision: str, path: str) -> str:
    """One block's model to ``path`` (a process-pool task)."""
    _export(*_block_model(s, runtime), runtime, precision, Path(path))
    return path


def block_models_dir(out: str | Path) -> Path:
    """Where a local build of the table ``out`` keeps its converted block models until the
    table is written (``<out>.models/``): a killed build, or :func:`convert_blocks` run
    ahead of it, leaves them for the build to time without converting again."""
    out = Path(out)
    return out.with_name(out.name + ".models")


def _models_folder(out: str | Path, runtime: str, precision: str) -> Path:
    """:func:`block_models_dir` of ``out``, emptied when its models were converted for
    another runtime, precision, block layout or torch; temp files of a killed conversion
    removed."""
    folder = block_models_dir(out)
    want = {"runtime": runtime, "precision": precision, "block_layout": block_layout(runtime),
            "torch": torch.__version__}
    head = folder / "models.json"
    try:
        same = json.loads(head.read_text()) == want
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
        atomic_write_json(head, want)
    for junk in folder.glob(".*.tmp"):
        junk.unlink(missing_ok=True)
    return folder


def _block_file(folder: Path, s: BlockShape, suffix: str) -> Path:
    """A block's model file in a models folder (named by a hash of its table key)."""
    return folder / (hashlib.sha1(s.key().encode()).hexdigest()[:20] + suffix)


def _conversions(todo: list[tuple[int, BlockShape]], runtime: str, precision: str,
                 folder: Path, convert: Callable[..., Any]) -> tuple[int, Iterator[str]]:
    """Start converting the models of ``todo``'s blocks missing from ``folder`` (one per
    shape) with ``convert`` (a :func:`deploy.export.converter_pool` map: a process pool
    takes every task at once); returns how many, and their paths in ``todo``'s order, each
    given once its file is written."""
    suffix = format_for(runtime, precision).suffix
    missing = {_block_file(folder, s, suffix): s for _, s in todo}
    missing = {p: s for p, s in missing.items() if not p.exists()}
    return len(missing), iter(convert(_export_block, list(missing.values()),
                                      [runtime] * len(missing), [precision] * len(missing),
                                      [str(p) for p in missing]))


def _convert_missing(todo: list[tuple[int, BlockShape]], runtime: str, precision: str,
                     folder: Path, convert: Callable[..., Any], progress: bool = True) -> int:
    """Convert the models of ``todo``'s blocks missing from ``folder`` (one per shape) with
    ``convert`` (a :func:`deploy.export.converter_pool` map); returns how many."""
    n, done = _conversions(todo, runtime, precision, folder, convert)
    with tqdm(total=n, desc=f"convert blocks ({runtime} {precision})", unit="block",
              disable=not progress or not n) as bar:
        for _ in done:
            bar.update()
    return n


def calibration_configs(space: SearchSpace, resolutions: list[int], k: int,
                        seed: int = 0) -> list[SubnetConfig]:
    """The subnets a table's calibration is fitted on: ``k`` seeded random ones at random
    resolutions of ``resolutions``, then the largest (at the largest resolution) and the
    smallest (at the smallest)."""
    res = sorted(resolutions)
    g = random.Random(seed + 1)
    cfgs = [space.sample(g, r=g.choice(res)) for _ in range(k)]
    return cfgs + [space.max_subnet(max(res)), space.min_subnet(min(res))]


def convert_blocks(space: SearchSpace, resolutions: list[int], runtime: str, out: str | Path,
                   precision: str = "fp32", jobs: int = 1, calib: int = 10, seed: int = 0,
                   progress: bool = True) -> int:
    """Convert every model a local :func:`build_table` of ``out`` (same ``calib`` and
    ``seed``) will time into :func:`block_models_dir` (``out`` + ``.models``): the blocks the
    build's partial table does not have yet, then the calibration subnets; a model already
    there is skipped and each file is written atomically, so a killed call resumes. The
    build then converts only what is missing. ``ofa run`` runs this in a background process
    while it trains (``ofa/pipeline/tables.py``). Returns the number of block models converted
    (0 for the torch runtime: nothing to convert).

    Raises:
        ValueError: an unknown runtime or a precision it has no format for.
    """
    if runtime == "torch":
        return 0
    folder = _models_folder(out, runtime, precision)
    try:
        done = json.loads(Path(str(out) + ".partial.json").read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        done = {}
    todo = [(r, s) for r in resolutions for s in space.all_block_shapes([r])
            if s.key() not in done.get(str(r), {})]
    with converter_pool(jobs) as run:
        n = _convert_missing(todo, runtime, precision, folder, run, progress)
        if calib > 0:
            _export_subnets(space, calibration_configs(space, resolutions, calib, seed),
                            runtime, precision, folder / "calibration", "calibration", jobs,
                            run)
    return n


def _build_here(state: dict[str, Any], todo: list[tuple[int, BlockShape]], runtime: str,
                precision: str, threads: int, protocol: TimingProtocol, batch: int,
                folder: Path, save: Callable[[], None], bar: tqdm) -> float:
    """Time the blocks of ``todo`` in this process from their models in ``folder`` (all
    converted before, :func:`_convert_missing`), ``batch`` at a time, the batches back to
    back: a batch is loaded and timed in interleaved trials
    (:func:`deploy.ontarget.runtimes.time_interleaved`) together with the almost empty model,
    whose statistic is the batch's per-invoke overhead (the table's ``overhead_ms`` is the
    median over the batches). No conversion runs meanwhile, and the whole table is timed
    within seconds (288 LiteRT digits blocks: ~5 s) instead of between the conversions of
    minutes: blocks timed minutes apart on this project's VM differ by up to 20% from a
    drift of its speed. ``save`` runs after every batch. The torch runtime times the
    modules themselves.

    Returns the seconds spent loading and timing."""
    t0 = time.perf_counter()
    ent = state["entries"]
    suffix = "" if runtime == "torch" else format_for(runtime, precision).suffix
    if not todo:
        return 0.0
    ov_rt, ov_x = _loaded(_Overhead(), (1, 8, 1, 1), runtime, threads, folder / "overhead",
                          precision)
    prt, px = load_probe(runtime, threads, precision)
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        rts, xs = [prt, ov_rt], [px, ov_x]
        for _, s in chunk:
            shape = (1, s.in_ch, s.in_size, s.in_size)
            rt = get_runtime(runtime, threads)
            if isinstance(rt, TorchRuntime):
                rt.load_module(_block(s).eval(), shape)
            else:
                rt.load(str(_block_file(folder, s, suffix)))
            rts.append(rt)
            xs.append(_random_input(rt, shape))
        probe, ov, *stats = time_interleaved(rts, xs, protocol)
        for (r, s), st in zip(chunk, stats):
            ent.setdefault(str(r), {})[s.key()] = _entry(st)
        _batch_done(state, probe, ov, protocol)
        save()
        bar.update(len(chunk))
    return time.perf_counter() - t0


def _entry(st: dict[str, Any]) -> dict[str, Any]:
    return {k: st.get(k) for k in ("median", "mean", "std", "p90", "count", "rel")}


def _batch_done(state: dict[str, Any], probe: dict[str, Any], ov: dict[str, Any],
                protocol: TimingProtocol) -> None:
    """Record a timed batch's probe (its mean invoke, as probe units are means: the
    device's speed in that batch; how often it was re-timed) and its per-invoke overhead
    (ms and probe units; the table's are the medians over the batches)."""
    state.setdefault("probe_ms", []).append(probe["mean"])  # as probe units are: means
    state["retimed"] = state.get("retimed", 0) + int(probe.get("retimed", 0))
    if probe.get("share") is not None:
        state.setdefault("probe_shares", []).append(probe["share"])
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
    suffix = format_for(runtime, precision).suffix
    files = [_block_file(folder, s, suffix) for _, s in todo]
    ready = {f for f in files if f.exists()}  # converted by an earlier call

    def converted() -> Iterator[list[Path]]:
        """Each chunk's models, as soon as the pool has converted them."""
        head = []
        if "context" not in state:  # the first batch carries the overhead model
            head = [tmp / f"overhead{suffix}"]
            _export(_Overhead(), (1, 8, 1, 1), runtime, precision, head[0])
        spent["converted"], done = _conversions(todo, runtime, precision, folder, convert)
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
        probe = rows[0]["probe"]
        state.setdefault("probe_ms", []).append(probe["mean"])
        state["retimed"] = state.get("retimed", 0) + int(probe.get("retimed", 0))
        if probe.get("share") is not None:
            state.setdefault("probe_shares", []).append(probe["share"])
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


def _context(runtime: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """This machine's context for the table (:func:`runtime_context` and the block layout)."""
    return {**runtime_context(runtime, threads, precision), "block_layout": block_layout(runtime)}


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
                precision: str = "fp32", jobs: int = 1) -> LatencyTable:
    """Measure every block shape and write the table to ``out`` (resumable).

    ``precision``: ``fp32`` or ``int8`` (blocks and calibration subnets in the int8 format
    of ``runtime``, see the module docstring); recorded in the table's context. ``jobs``:
    processes converting models, one pool for the blocks and the calibration subnets. A
    build on this machine converts every model first (into :func:`block_models_dir`; those
    :func:`convert_blocks` converted ahead are used), then times the blocks, ``batch`` at a
    time in a seeded shuffled order (a drift spreads over stages and resolutions), and the
    calibration subnets right after: the table is timed in one short window.

    Entries are kept in ``<out>.partial.json`` after each batch (converted models in
    :func:`block_models_dir` until the table is written), so a killed build, or one whose
    device went away, resumes. ``target`` (SSH or adb, :mod:`deploy.targets`; None: this
    machine): the blocks are converted here and timed there as soon as a batch is ready
    (:func:`_build_on_device`); the device's facts go into the table's context and one
    printed line says where the device time went. The ``build`` record says where the time
    went (``docs/formats.md``). Returns the finished :class:`LatencyTable`.

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
    jobs = 1 if runtime == "torch" else jobs
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
            calibrate(table, space, calib, protocol, seed, target, jobs, convert, models)
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
    if runtime != "torch":
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
        if self.runtime != "torch":
            converted = _convert_missing(todo, self.runtime, self.precision, folder, convert)
            models = folder / "calibration"
            _export_subnets(self.space, cfgs, self.runtime, self.precision, models,
                            "calibration", self.jobs, convert)
        export_s = time.perf_counter() - t0
        with self.bar(todo, f"lut {self.runtime} {self.precision}: time") as bar:
            timing_s = _build_here(state, todo, self.runtime, self.precision, self.threads,
                                   self.protocol, self.batch, folder, self.save, bar)
        return {"blocks": len(todo), "converted": converted, "jobs": self.jobs,
                "wall_s": round(time.perf_counter() - t0, 2),
                "export_s": round(export_s, 2), "timing_s": round(timing_s, 2)}, models


def _table_of(state: dict[str, Any], build: dict[str, Any], space: SearchSpace,
              resolutions: list[int], protocol: TimingProtocol, out: Path) -> LatencyTable:
    """The table the build state holds (before its calibration)."""
    build["retimed"] = state.get("retimed", 0)
    if state.get("probe_shares"):  # the probe's part of the blocks' timed work
        build["probe_share"] = round(float(np.mean(state["probe_shares"])), 4)
    return LatencyTable(context=state["context"], space=space.to_dict(),
                        resolutions=sorted(resolutions), entries=state["entries"],
                        protocol=asdict(protocol), overhead_ms=state["overhead_ms"],
                        source=str(out), build=build,
                        probe={"id": PROBE_ID, "ms": probe_summary(state["probe_ms"]),
                               "measured": "build"},
                        overhead_rel=state["overhead_rel"])


def calibrate(table: LatencyTable, space: SearchSpace, k: int = 10,
              protocol: TimingProtocol | None = None, seed: int = 0,
              target: Target | None = None, jobs: int = 1,
              convert: Callable[..., Any] | None = None,
              models: Path | None = None) -> LatencyTable:
    """Fit the table's calibration ``measured = a * sum ** p`` (ms) on this machine, in place.

    Measures ``k`` seeded random subnets plus the largest and the smallest end to end in the
    table's context (runtime, threads) and fits ``a, p`` against the raw block sums by
    relative error (:func:`fit_calibration`). The block entries say what costs more; the
    calibration absorbs what a sum of isolated blocks misses (per-invoke overhead, cache
    effects) and, for a table copied from another machine of the same type, its speed.
    ``target``: measure on that device (see :func:`build_table`). ``convert``: an open
    converter pool's map (else ``jobs`` processes are started); ``models``: a folder holding
    the subnets' models converted ahead (:func:`convert_blocks`). Returns ``table``.
    """
    runtime, threads = table.context["runtime"], int(table.context["threads"])
    protocol = protocol or TimingProtocol.from_fields(table.protocol)
    cfgs = calibration_configs(space, table.resolutions, k, seed)
    m = _measure_configs(space, cfgs, runtime, threads, protocol, "calibration", target,
                         table.context.get("precision", "fp32"), jobs, convert, models)
    measured = m["rel"] if table.probe else m["ms"]  # in the table's unit
    raw = LatencyPredictor(table, space, calibrated=False).units_many(cfgs).tolist()
    table.calibration = {**fit_calibration(raw, measured), "unit": table.unit, "fitted_on": [
        {"config": c.to_dict(), "sum": s, "measured": v, "measured_ms": ms}
        for c, s, v, ms in zip(cfgs, raw, measured, m["ms"])]}
    return table


def refit_calibration(table: LatencyTable) -> LatencyTable:
    """Refit ``table``'s calibration (:func:`fit_calibration`) on the subnets it was last
    calibrated on (``calibration.fitted_on``: block sum and measured ms each), measuring
    nothing; in place, returns ``table``. Upgrades a table fitted with an earlier form.

    Raises:
        ValueError: fewer than two recorded subnets.
    """
    pts = table.calibration.get("fitted_on") or []
    if len(pts) < 2:
        raise InputError(f"{len(pts)} calibration subnet(s) recorded; refitting needs two or "
                         "more (run `ofa lut calibrate` without --refit to measure some)")
    table.calibration = {**fit_calibration([f.get("sum", f.get("sum_ms")) for f in pts],
                                           [f.get("measured", f.get("measured_ms"))
                                            for f in pts]),
                         "unit": table.unit, "fitted_on": pts}
    return table


def fit_calibration(raw: list[float], measured: list[float]) -> dict[str, Any]:
    """The calibration ``measured = a * raw ** p`` (ms; stored with ``b = 0``): least squares
    on logarithms, ``log m = log a + p log raw``, i.e. on relative errors, what the ±10%
    criterion counts, symmetric for over- and under-prediction, so that neither the largest
    subnet (an ordinary least-squares line let one 4.7 ms LiteRT subnet pull ``a`` to 1.23
    and put the small ones 14% off) nor the smallest one dominates.

    Why a power rather than a line: a whole subnet's time against its block sum is not
    proportional. On this project's 2-core VM (LiteRT XNNPACK, ``mbv3-digits`` 12-20 px)
    whole subnets ran at 0.84x their block sum at 0.1 ms and 1.13x at 5.7 ms (small
    networks gain from warm caches across blocks, large ones lose); fitted on the same 12
    calibration subnets, the line ``a * raw + b`` (by relative error) left 85% of 100
    validation subnets within ±10%, the power 95%; on the ``mbv3-cifar`` tables, whose
    subnets lie closer to proportional, both give 99-100% (``latency_tables/README.md``).
    ``p`` is kept in [0.5, 2] and is 1 when the sums span less than 1.5x (too narrow to see
    a curvature). Returns ``{"a", "p", "b", "fit": "log-power"}``.

    Raises:
        ValueError: fewer than two points or a non-positive latency.
    """
    x, y = np.asarray(raw, float), np.asarray(measured, float)
    if len(x) < 2 or len(x) != len(y) or (y <= 0).any() or (x <= 0).any():
        raise InputError("calibration needs two or more subnets with positive latencies")
    lx, ly = np.log(x), np.log(y)
    p = 1.0
    if lx.max() - lx.min() >= np.log(1.5):
        p = float(np.clip(np.polyfit(lx, ly, 1)[0], 0.5, 2.0))
    return {"a": float(np.exp(np.mean(ly - p * lx))), "p": p, "b": 0.0, "fit": "log-power"}


def validate_table(table: LatencyTable, space: SearchSpace, n: int = 100, seed: int = 1234,
                   plot: str | Path | None = None, target: Target | None = None,
                   jobs: int = 1) -> dict[str, Any]:
    """Measure ``n`` random subnets end to end beside the reference probe in the table's
    context (runtime, threads, precision; on ``target`` when given, see
    :func:`build_table`; converted by ``jobs`` processes) and compare them with the table's
    raw and calibrated predictions (:func:`search.metrics.relative_error_report`).

    Reported separately: ``relative`` (calibrated prediction in probe units against each
    subnet's measured time in probe units: what a change of the device's speed cannot
    move), ``absolute`` (calibrated ms at the table's nominal speed against the ms measured
    now: what also depends on the device's speed now), ``raw`` (block sums, in the table's
    unit), and ``speed``: the probe's speed states in this run beside the table's. For a
    table without probe data, ``relative`` is None and ``raw``/``calibrated`` are in ms.
    Optionally a scatter plot PNG.
    """
    runtime, threads = table.context["runtime"], int(table.context["threads"])
    protocol = TimingProtocol.from_fields(table.protocol)
    g = random.Random(seed)
    cfgs = [space.sample(g, r=g.choice(table.resolutions)) for _ in range(n)]
    m = _measure_configs(space, cfgs, runtime, threads, protocol, "validate", target,
                         table.context.get("precision", "fp32"), jobs)
    ms, rel = np.asarray(m["ms"]), np.asarray(m["rel"])
    units = rel if table.probe else ms
    raw = LatencyPredictor(table, space, calibrated=False).units_many(cfgs)
    cal = LatencyPredictor(table, space, calibrated=True).units_many(cfgs)
    cal_ms = table.to_ms(cal)
    now = probe_summary(m["probe_ms"])
    report = {"table": table.source, "context": table.describe(), "n": n, "seed": seed,
              "unit": table.unit,
              "relative": relative_error_report(cal, rel) if table.probe else None,
              "absolute": relative_error_report(cal_ms, ms),
              "raw": relative_error_report(raw, units),
              "calibrated": relative_error_report(cal, units),
              "speed": {"now": now, "table": table.probe.get("ms") if table.probe else None,
                        "now_vs_table": (now["median"] / table.probe_ms()
                                         if table.probe else None)},
              "samples": [{"config": c.to_dict(), "measured_ms": float(a),
                           "measured_rel": float(r), "raw": float(w), "calibrated": float(p),
                           "calibrated_ms": float(q)}
                          for c, a, r, w, p, q in zip(cfgs, ms, rel, raw, cal, cal_ms)]}
    if plot:
        _scatter(units, raw, cal, Path(plot), table.describe(), table.unit)
        report["plot"] = str(plot)
    return report


def _scatter(meas: np.ndarray, raw: np.ndarray, cal: np.ndarray, path: Path, title: str,
             unit: str = "ms") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ofa.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = min(meas.min(), raw.min(), cal.min()) * 0.9, max(meas.max(), raw.max(),
                                                               cal.max()) * 1.1
    xs = np.linspace(lo, hi, 10)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.9", label="±10%")
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.scatter(meas, raw, s=10, alpha=0.6, label="raw sum")
    ax.scatter(meas, cal, s=10, alpha=0.8, label="calibrated")
    what = "probe units" if unit == "probe" else "ms"
    ax.set_xlabel(f"measured latency ({what})")
    ax.set_ylabel(f"predicted latency ({what})")
    ax.set_title(title, fontsize=7)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
