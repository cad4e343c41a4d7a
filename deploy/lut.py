"""Build and validate latency lookup tables by measuring on this machine (``ofa lut``).

Build: every layer-group shape the space can produce at the requested resolutions is built as
a tiny model, exported for the runtime, and timed with the protocol; then K whole random
subnets are measured end to end to fit the calibration ``a * raw + b`` (REFERENCE section 6).
A killed build resumes: measured entries are kept in ``<out>.partial.json`` (atomically
rewritten after every entry) and skipped on the next run.

Whole subnets (calibration, validation) are exported first and then timed in interleaved
trials, so that a drift of the machine's speed does not favour the subnets timed first.

Validate: N seeded random subnets (other seeds than calibration), measured end to end, against
raw and calibrated predictions: share within ±5% / ±10%, RMSPE, Kendall τ, and a scatter plot.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deploy.devinfo import device_facts
from deploy.export import export_model
from deploy.runtimes import Protocol, get_runtime, stats_ms, time_interleaved, time_invoke
from ofa.fileio import atomic_write_json
from ofa.space import SearchSpace, SubnetConfig
from ofa.static import build_layer
from ofa.supernet import OFAMobileNetV3
from search.acc_dataset import kendall_tau
from search.latency import LatencyPredictor
from search.latency_table import LatencyTable

__all__ = ["measure_module", "build_table", "validate_table", "runtime_context"]


def runtime_context(runtime: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """The measurement context stored in a table's header."""
    if runtime == "torch":
        version, backend = torch.__version__, "eager CPU"
    else:
        rt = get_runtime(runtime, threads)
        version, backend = rt.version(), rt.backend
    return {"device": device_facts(), "runtime": runtime, "runtime_version": version,
            "backend": backend, "threads": threads, "precision": precision, "batch": 1}


def measure_module(model: nn.Module, input_shape: tuple[int, ...], runtime: str, threads: int,
                   protocol: Protocol, workdir: str | Path, target=None) -> dict[str, float]:
    """Export ``model`` for ``runtime`` (unless ``torch``) and time one invoke (ms stats).

    With ``target`` (an SSH or adb target from :mod:`deploy.targets`) the exported file is
    copied to the device and timed there by the agent or ``benchmark_model``; otherwise it is
    timed in this process. Returns ``{"median", "mean", "std", "p90", "min", "count"}``.

    Raises:
        deploy.targets.TargetError: the device is unreachable or lacks the runtime.
    """
    model = model.eval()
    if target is not None and runtime == "torch":
        raise ValueError("the torch runtime is measured in this process only (no --target)")
    if runtime == "torch":
        x = torch.randn(*input_shape)
        torch.set_num_threads(threads)
        times = []
        with torch.inference_mode():
            for _ in range(protocol.trials):
                for _ in range(protocol.warmup):
                    model(x)
                for _ in range(protocol.runs):
                    t = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - t) * 1e3)
        return stats_ms(times)
    if target is not None:
        return _bench_on(target, model, input_shape, runtime, threads, protocol,
                         workdir)["latency_ms"]
    rt, x_rt = _exported(model, input_shape, runtime, threads, Path(workdir) / "m")
    return time_invoke(rt, x_rt, protocol)


def _exported(model: nn.Module, input_shape: tuple[int, ...], runtime: str, threads: int,
              stem: Path) -> tuple[Any, np.ndarray]:
    """Export ``model`` to ``stem`` + the runtime's suffix, load it; (runtime, random input)."""
    rt = get_runtime(runtime, threads)
    path = stem.with_name(stem.name + rt.suffix)
    export_model(runtime, model, input_shape, path)
    rt.load(str(path))
    return rt, rt.prepare(torch.randn(*input_shape).numpy())


def _bench_on(target, model: nn.Module, input_shape: tuple[int, ...], runtime: str,
              threads: int, protocol: Protocol, workdir: str | Path) -> dict[str, Any]:
    """Export ``model`` here and time it on ``target``; the agent's whole JSON (latency
    statistics, device facts, runtime version)."""
    path = Path(workdir) / f"m{get_runtime(runtime, threads).suffix}"
    export_model(runtime, model.eval(), input_shape, path)
    return target.bench(path, threads, protocol)


class _Overhead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _subnet(space: SearchSpace, cfg: SubnetConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = OFAMobileNetV3(space)
    net.set_active_subnet(cfg)
    return net.get_active_subnet().eval()


def _measure_configs(space: SearchSpace, cfgs: list[SubnetConfig], runtime: str, threads: int,
                     protocol: Protocol, desc: str, target=None) -> list[float]:
    """Whole-subnet latency (ms, the protocol's statistic) of every config, end to end.

    Here, with an exported runtime, every subnet is exported and loaded first and then timed
    in interleaved trials (:func:`deploy.runtimes.time_interleaved`), so a drift of the
    machine's speed during the minutes this takes spreads over all subnets alike; on a
    device target or with eager torch, each subnet is timed in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        if target is not None or runtime == "torch":
            return [measure_module(_subnet(space, c, i), (1, 3, c.r, c.r), runtime, threads,
                                   protocol, tmp, target)[protocol.statistic]
                    for i, c in enumerate(tqdm(cfgs, desc=desc, leave=False))]
        rts, xs = [], []
        for i, c in enumerate(tqdm(cfgs, desc=f"{desc}: export", leave=False)):
            rt, x = _exported(_subnet(space, c, i), (1, 3, c.r, c.r), runtime, threads,
                              Path(tmp) / f"s{i}")
            rts.append(rt)
            xs.append(x)
        with tqdm(total=len(cfgs) * protocol.trials, leave=False,
                  desc=f"{desc}: time ({protocol.trials} interleaved trials)") as bar:
            stats = time_interleaved(rts, xs, protocol, progress=bar.update)
        return [st[protocol.statistic] for st in stats]


def build_table(space: SearchSpace, resolutions: list[int], runtime: str, out: str | Path,
                threads: int = 1, protocol: Protocol | None = None, calib: int = 10,
                seed: int = 0, target=None) -> LatencyTable:
    """Measure every block shape and write the table to ``out`` (resumable).

    ``target`` (SSH or adb, :mod:`deploy.targets`): the blocks are exported here and timed on
    that device, whose facts and runtime version go into the table's context; None = this
    machine, in process. Returns the finished :class:`LatencyTable`.

    Raises:
        ValueError: resolutions outside the space or an unknown runtime.
        deploy.targets.TargetError: the device is unreachable or lacks the runtime.
    """
    protocol = protocol or Protocol()
    out = Path(out)
    for r in resolutions:
        space.validate(space.max_subnet(r))
    partial_path = out.with_name(out.name + ".partial.json")
    where = "local" if target is None else target.name
    shapes = [(r, s) for r in resolutions for s in space.all_block_shapes([r])]
    state: dict[str, Any] = {"space": space.to_dict(), "resolutions": resolutions,
                             "runtime": runtime, "threads": threads, "target": where,
                             "protocol": asdict(protocol), "entries": {}}
    if partial_path.exists():
        try:
            old = json.loads(partial_path.read_text())
        except json.JSONDecodeError:
            old = {}
        old.setdefault("target", "local")  # partial files from before device targets
        same = ("space", "resolutions", "runtime", "threads", "target", "protocol")
        if all(old.get(k) == state[k] for k in same):
            state = old
            print(f"resuming: {len(state['entries'])}/{len(shapes)} entries already measured")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        if "context" not in state:
            if target is None:
                state["context"] = runtime_context(runtime, threads)
                state["overhead_ms"] = measure_module(_Overhead(), (1, 8, 1, 1), runtime,
                                                      threads, protocol, tmp)[protocol.statistic]
            else:  # the device describes itself in the agent's JSON
                res = _bench_on(target, _Overhead(), (1, 8, 1, 1), runtime, threads, protocol,
                                tmp)
                state["overhead_ms"] = res["latency_ms"][protocol.statistic]
                state["context"] = {
                    "device": res.get("device", {"name": where}), "runtime": runtime,
                    "runtime_version": res.get("runtime_version"),
                    "backend": res.get("backend"), "threads": threads, "precision": "fp32",
                    "batch": 1, "target": where}
        ctx = state["context"]
        ent = state["entries"]
        todo = [(r, s) for r, s in shapes if s.key() not in ent.get(str(r), {})]
        for r, s in tqdm(todo, desc=f"lut {runtime}", unit="block",
                         initial=len(shapes) - len(todo), total=len(shapes)):
            m = build_layer(s)
            st = measure_module(m, (1, s.in_ch, s.in_size, s.in_size), runtime, threads,
                                protocol, tmp, target)
            ent.setdefault(str(r), {})[s.key()] = {
                k: st.get(k) for k in ("median", "mean", "std", "p90", "count")}
            atomic_write_json(partial_path, state)
    table = LatencyTable(context=ctx, space=space.to_dict(), resolutions=sorted(resolutions),
                         entries=state["entries"], protocol=asdict(protocol),
                         overhead_ms=state["overhead_ms"], source=str(out))
    if calib > 0:
        calibrate(table, space, calib, protocol, seed, target)
    table.save(out)
    partial_path.unlink(missing_ok=True)
    return table


def calibrate(table: LatencyTable, space: SearchSpace, k: int = 10,
              protocol: Protocol | None = None, seed: int = 0, target=None) -> LatencyTable:
    """Fit the table's calibration ``measured = a * sum + b`` (ms) on this machine, in place.

    Measures ``k`` seeded random subnets plus the largest and the smallest end to end in the
    table's context (runtime, threads) and least-squares fits ``a, b`` against the raw block
    sums. The block entries say what costs more; the calibration absorbs what a sum of
    isolated blocks misses (per-invoke overhead, cache effects) and, for a table copied from
    another machine of the same type, that machine's speed. ``target``: measure on that
    device (see :func:`build_table`). Returns ``table``.
    """
    runtime, threads = table.context["runtime"], int(table.context["threads"])
    protocol = protocol or Protocol(**{k_: v for k_, v in table.protocol.items()
                                       if k_ in ("warmup", "runs", "trials", "statistic")})
    res = sorted(table.resolutions)
    g = random.Random(seed + 1)
    cfgs = [space.sample(g, r=g.choice(res)) for _ in range(k)]
    cfgs += [space.max_subnet(max(res)), space.min_subnet(min(res))]
    measured = _measure_configs(space, cfgs, runtime, threads, protocol, "calibration", target)
    raw = LatencyPredictor(table, space, calibrated=False).predict_many(cfgs).tolist()
    a, b = np.polyfit(np.asarray(raw), np.asarray(measured), 1)
    table.calibration = {"a": float(a), "b": float(b), "fitted_on": [
        {"config": c.to_dict(), "sum_ms": s, "measured_ms": m}
        for c, s, m in zip(cfgs, raw, measured)]}
    return table


def accuracy_report(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """% within ±5%/±10%, RMSPE (%), Kendall τ of predictions against measurements."""
    err = (pred - meas) / meas
    return {"within_5pct": float(np.mean(np.abs(err) <= 0.05) * 100),
            "within_10pct": float(np.mean(np.abs(err) <= 0.10) * 100),
            "rmspe": float(np.sqrt(np.mean(err ** 2)) * 100),
            "kendall_tau": kendall_tau(pred, meas)}


def validate_table(table: LatencyTable, space: SearchSpace, n: int = 100, seed: int = 1234,
                   plot: str | Path | None = None, target=None) -> dict[str, Any]:
    """Measure ``n`` random subnets end to end in the table's context (on ``target`` when
    given, see :func:`build_table`); compare with the table's raw and calibrated
    predictions (:func:`accuracy_report`), optionally with a scatter plot PNG."""
    runtime, threads = table.context["runtime"], int(table.context["threads"])
    protocol = Protocol(**{k: v for k, v in table.protocol.items()
                           if k in ("warmup", "runs", "trials", "statistic")})
    g = random.Random(seed)
    cfgs = [space.sample(g, r=g.choice(table.resolutions)) for _ in range(n)]
    measured = np.asarray(_measure_configs(space, cfgs, runtime, threads, protocol, "validate",
                                           target))
    raw = LatencyPredictor(table, space, calibrated=False).predict_many(cfgs)
    cal = LatencyPredictor(table, space, calibrated=True).predict_many(cfgs)
    report = {"table": table.source, "context": table.describe(), "n": n, "seed": seed,
              "raw": accuracy_report(raw, measured), "calibrated": accuracy_report(cal, measured),
              "samples": [{"config": c.to_dict(), "measured_ms": float(m), "raw_ms": float(r),
                           "calibrated_ms": float(p)}
                          for c, m, r, p in zip(cfgs, measured, raw, cal)]}
    if plot:
        _scatter(measured, raw, cal, Path(plot), table.describe())
        report["plot"] = str(plot)
    return report


def _scatter(meas: np.ndarray, raw: np.ndarray, cal: np.ndarray, path: Path, title: str) -> None:
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
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=7)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
