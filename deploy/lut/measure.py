"""Timing whole models for latency tables: one module (``measure_module``) or whole subnets
in interleaved trials beside the reference probe (``measure_subnets``), here or on a target.

Whole subnets (calibration, validation, measured budgets) are exported first and then timed
:data:`SUBNET_BATCH` at a time in interleaved trials, so that a drift of the machine's speed
reaches them alike and does not favour the subnets timed first; each gets its time in ms and
in probe units (``deploy/probe.py``). Each batch also times the table's reference subnet
(:func:`deploy.lut.convert.reference_config`): the small probe follows the device's speed,
the reference follows what moves whole subnets of the space and not the probe (cache and
memory shared with neighbours), and a table's measurements are brought to the state of its
calibration by it (:func:`at_reference`, ``docs/latency.md``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deploy.formats import format_for
from deploy.lut.convert import _export, _export_subnets, _subnet, block_layout, reference_config
from deploy.ontarget.facts import machine_facts
from deploy.ontarget.runtimes import (
    Runtime,
    TimingProtocol,
    get_runtime,
    time_interleaved,
    times_files,
)
from deploy.probe import (
    ProbedTarget,
    kept_at_fast_state,
    load_probe,
    median_repeat,
    wait_for_fast_state,
)
from deploy.targets import Target
from deploy.targets.base import device_progress
from deploy.torch_runtime import TorchRuntime
from ofa.errors import InputError
from ofa.space import SearchSpace, SubnetConfig
from search.latency_table import LatencyTable

__all__ = ["SUBNET_BATCH", "runtime_context", "measure_module", "measure_subnets",
           "at_reference", "trial_pairs", "paired_at_reference", "table_reference",
           "tracking_weight"]

# whole subnets timed together beside the probe: each batch short enough (seconds) that a
# change of the device's speed during it is rare and timing it again is cheap
SUBNET_BATCH = 16
REPEAT_RETIME = 1  # re-timings per repeat of a repeated measurement (measure_subnets)


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
        fmt = format_for(runtime, precision)
        path = stem.with_name(stem.name + fmt.suffix)
        _export(model, input_shape, fmt, path)
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
    if not times_files(runtime):
        raise InputError(f"the {runtime} runtime is measured in this process only (no --target)")
    fmt = format_for(runtime, precision)
    path = Path(workdir) / f"m{fmt.suffix}"
    _export(model, input_shape, fmt, path)
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


def _measure_configs(space: SearchSpace, cfgs: list[SubnetConfig], runtime: str, threads: int,
                     protocol: TimingProtocol, desc: str, target: Target | None = None,
                     precision: str = "fp32", jobs: int = 1,
                     convert: Callable[..., Any] | None = None,
                     models: Path | None = None,
                     reference: SubnetConfig | None = None) -> dict[str, list[float]]:
    """Whole-subnet latency of every config, end to end, beside the reference probe.

    Every subnet is exported (by ``jobs`` processes) and loaded first and then timed in
    interleaved trials with the probe first (:func:`deploy.ontarget.runtimes.time_interleaved`,
    ``TimingProtocol(probe=True)``), :data:`SUBNET_BATCH` subnets at a time, so a change of
    the machine's speed cancels from each subnet's ``rel`` and a batch whose probe moved is
    timed again in seconds, not minutes; no conversion runs while anything is timed: here in
    this process, on a device target batch after batch (``Target.bench_many``).
    ``convert``: an open converter pool's map to export with (else one is started for
    ``jobs``). ``models``: a folder to export into whose files already there
    are used (else a temporary one). ``reference``: a subnet timed first in every batch
    (after the probe); its probe units in each subnet's batch come back as
    ``reference_rel``.

    Returns ``{"ms": [...], "rel": [...], "probe_ms": [...]}`` (and ``reference_rel`` and
    ``pairs``, :func:`trial_pairs`): each subnet's statistic (ms) and its time in probe
    units, and the probe's medians (ms) over the measurement (its speed states)."""
    protocol = dataclasses.replace(protocol, probe=True)
    every = [*cfgs, reference] if reference is not None else list(cfgs)
    with tempfile.TemporaryDirectory() as tmp:
        if not times_files(runtime) and target is None:
            loaded = [_loaded(_subnet(space, c, i), (1, 3, c.r, c.r), runtime, threads,
                              Path(tmp) / f"s{i}", precision) for i, c in enumerate(every)]
            rts, xs = [r for r, _ in loaded], [x for _, x in loaded]
        else:
            paths = _export_subnets(space, every, format_for(runtime, precision),
                                    models or Path(tmp), desc, jobs, convert)
            if target is not None:
                return _timed_on(target, paths, runtime, threads, precision, protocol, desc,
                                 reference is not None)
            rts, xs = [], []
            for c, path in zip(every, paths):
                rt = get_runtime(runtime, threads)
                rt.load(str(path))
                rts.append(rt)
                xs.append(_random_input(rt, (1, 3, c.r, c.r)))
        return _timed_here(rts, xs, runtime, threads, precision, protocol, desc,
                           reference is not None)


def _batches(n: int, with_reference: bool) -> list[tuple[list[int], int | None]]:
    """Indices of ``n`` models (the reference last when ``with_reference``) in timing
    batches of :data:`SUBNET_BATCH` subnets: (the batch's models in timing order, the
    reference's position in it or None)."""
    m = n - 1 if with_reference else n
    return [([n - 1, *range(i, min(i + SUBNET_BATCH, m))] if with_reference
             else list(range(i, min(i + SUBNET_BATCH, m))), 0 if with_reference else None)
            for i in range(0, m, SUBNET_BATCH)]


def _collect(out: dict[str, Any], stats: list[dict[str, Any]], ref: int | None,
             statistic: str) -> None:
    """One timed batch's rows (probe first, taken out) into :func:`_measure_configs`'
    answer."""
    rows = [st for j, st in enumerate(stats) if j != ref]
    out["ms"] += [st[statistic] for st in rows]
    out["rel"] += [st["rel"] for st in rows]
    if ref is not None:
        out.setdefault("reference_rel", []).extend([stats[ref]["rel"]] * len(rows))
        out.setdefault("pairs", []).extend(trial_pairs(st, stats[ref]) for st in rows)


def trial_pairs(model: dict[str, Any], reference: dict[str, Any]) -> list[list[float]]:
    """A model's probe units and the reference subnet's, trial by trial, in one timed batch
    (``latency_ms`` dicts of :func:`deploy.ontarget.runtimes.time_interleaved`, which keep
    ``trial_rel`` and ``steady``): ``[[model, reference], ...]`` over the trials in which
    both were steady (every trial where there is none). Empty where either lacks trial
    units (an agent of an older ofa-edge, ``benchmark_model`` on adb) or their trials
    differ in number."""
    a, b = model.get("trial_rel"), reference.get("trial_rel")
    if not a or not b or len(a) != len(b):
        return []
    sa, sb = model.get("steady") or [True] * len(a), reference.get("steady") or [True] * len(b)
    both = [bool(x and y) for x, y in zip(sa, sb)]
    return [[float(x), float(y)] for x, y, k in zip(a, b, both if any(both) else [True] * len(a))
            if k]


def paired_at_reference(pairs: Sequence[Sequence[float]], reference_rel: float,
                        weight: float = 1.0) -> float:
    """One model's probe units brought to the state in which the reference subnet took
    ``reference_rel`` probe units, trial by trial: the median over ``pairs`` (its units and
    the reference's in the same trial, :func:`trial_pairs`, pooled over every timing of
    it) of ``model * (reference_rel / reference) ** weight``. Trial by trial, because a
    device whose state changes during a batch (a competitor switched on halfway) moves the
    whole subnets' units in the trials it slowed and not in the others, and a ratio of
    medians over the batch mixes the two states differently for the model and for the
    reference; pooled, because a median over every trial of every timing is steadier than
    the median of the timings' medians (``docs/benchmarks.md``, "Trial by trial").

    Raises:
        ValueError: no pair, or a non-positive value.
    """
    a = np.asarray(pairs, dtype=float)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != 2 or a.min() <= 0 or reference_rel <= 0:
        raise InputError("bringing probe units to a reference state trial by trial needs "
                         "positive pairs of the model's and the reference's units")
    return float(np.median(a[:, 0] * (reference_rel / a[:, 1]) ** weight))


def _timed_on(target: Target, paths: list[Path], runtime: str, threads: int, precision: str,
              protocol: TimingProtocol, desc: str, with_reference: bool = False
              ) -> dict[str, list[float]]:
    """The subnet models ``paths`` (the reference's last when ``with_reference``) timed on
    ``target`` beside the probe, :data:`SUBNET_BATCH` per request, the agent's progress
    shown here (:func:`deploy.targets.base.device_progress`); answers as
    :func:`_measure_configs`."""
    probed = ProbedTarget(target, runtime, precision)
    out: dict[str, list[float]] = {"ms": [], "rel": [], "probe_ms": []}
    plan = _batches(len(paths), with_reference)
    with device_progress(probed, desc):
        batches = [probed.bench_many([paths[j] for j in idx], threads, protocol)
                   for idx, _ in plan]
    for rows, (_, ref) in zip(batches, plan):
        _collect(out, [r["latency_ms"] for r in rows], ref, protocol.statistic)
        out["probe_ms"] += list(rows[0]["probe"]["trial_means"]) if rows else []
    return out


def _timed_here(rts: list[Runtime], xs: list[np.ndarray], runtime: str, threads: int,
                precision: str, protocol: TimingProtocol, desc: str,
                with_reference: bool = False) -> dict[str, list[float]]:
    """The loaded subnets ``rts`` (inputs ``xs``; the reference's last when
    ``with_reference``) timed in this process beside the probe, :data:`SUBNET_BATCH` per
    batch; answers as :func:`_measure_configs`."""
    prt, px = load_probe(runtime, threads, precision)
    out: dict[str, list[float]] = {"ms": [], "rel": [], "probe_ms": []}
    plan = _batches(len(rts), with_reference)
    with tqdm(total=sum(len(idx) for idx, _ in plan) * protocol.trials, leave=False,
              desc=f"{desc}: time ({protocol.trials} interleaved trials, probe)") as bar:
        for idx, ref in plan:
            head, *stats = time_interleaved([prt, *(rts[j] for j in idx)],
                                            [px, *(xs[j] for j in idx)], protocol,
                                            progress=bar.update)
            _collect(out, stats, ref, protocol.statistic)
            out["probe_ms"] += head["trial_means"]
    return out


def measure_subnets(table: LatencyTable, space: SearchSpace, cfgs: list[SubnetConfig],
                    target: Target | None = None, jobs: int = 1, desc: str = "measure",
                    protocol: TimingProtocol | None = None,
                    repeats: int = 1, fastest: float | None = None) -> dict[str, Any]:
    """Whole subnets measured beside the reference probe in ``table``'s context (runtime,
    threads, precision, protocol), on ``target`` (None: this machine, in process), with
    periodic weights (a latency does not depend on the values, :func:`periodic_weights`).
    ``repeats`` > 1: exported once, timed that many times one after the other, each
    subnet's median timing kept (:func:`deploy.probe.median_repeat`: its ``ms`` and ``rel``
    from the same timing; ``probe_ms`` of every timing), as the final measurement does
    (``deploy/validate.py``, ``REPEATS``). Each repeat is then timed again at most once when
    its probe moved beyond the bound (:data:`REPEAT_RETIME`), not up to ``retime`` times:
    the median over the repeats already drops one upset batch, and on this project's VM,
    whose probe often moves more than the bound within a few seconds, re-timing every repeat
    up to 3 times spent three quarters of a 12-subnet verification (83 s, 2026-12-06).
    ``fastest``: the device's fastest probe time known (ms, its speed states measured
    here); the repeats then wait for its fast state as :func:`repeated` says.

    A table with probe data also times its reference subnet in every batch
    (:func:`table_reference`): ``reference_rel`` holds its probe units beside each subnet,
    ``rel_probe`` each subnet's probe units as timed, and ``rel`` them brought to the
    state of the table's calibration where it recorded one, with the weight it recorded
    (:func:`at_reference`; else as timed).

    Returns ``{"ms", "rel", "probe_ms"}`` as :func:`_measure_configs` does, and for a
    table with probe data ``rel_probe``, ``reference_rel``, ``reference_seen``,
    ``reference_weight`` (the table's, else the one these timings show: :func:`repeated`)
    and ``pairs`` (pooled over the repeats, where the device gave trial units).

    Raises:
        ValueError: ``repeats`` outside 1-20.
        deploy.targets.TargetError: the device could not measure.
    """
    args = (space, cfgs, table.context["runtime"], int(table.context["threads"]))
    rest = (desc, target, table.context.get("precision", "fp32"), jobs)
    ref = table_reference(table, space) if table.probe else None
    recorded = table.reference.get("rel")
    weight = table.reference_weight if recorded else None
    m = repeated(lambda p, folder: _measure_configs(*args, p, *rest, models=folder,
                                                    reference=ref),
                 protocol or TimingProtocol.from_fields(table.protocol), repeats,
                 weight=weight, fastest=fastest)
    if ref is not None and m["rel"]:
        m["rel_probe"] = m["rel"]
        m["rel"] = (at_reference(m, recorded, m["reference_weight"]) if recorded
                    else list(m["rel"]))
    return m


def table_reference(table: LatencyTable, space: SearchSpace) -> SubnetConfig:
    """The reference subnet ``table``'s measurements are timed beside: the one its
    calibration recorded (``calibration.reference.config``), else
    :func:`deploy.lut.convert.reference_config` of its resolutions."""
    rec = table.reference.get("config")
    return SubnetConfig.from_dict(rec) if rec else reference_config(space, table.resolutions)


def at_reference(m: dict[str, list[float]], reference_rel: float,
                 weight: float = 1.0) -> list[float]:
    """Each subnet's probe units ``m["rel"]`` brought to the state in which the reference
    subnet took ``reference_rel`` probe units: ``rel * (reference_rel / m["reference_rel"])
    ** weight`` (the reference timed in the subnet's batch). ``weight`` is the share of the
    reference's movement the subnets follow (:func:`tracking_weight`, recorded by a table's
    calibration as ``calibration.reference.weight``; 1 where none was recorded). Whole
    cifar fp32 subnets moved alike when the device slowed them and not the probe: on this
    project's 2-core VM, 8 of them timed in 60 batches over 10 minutes moved together by
    4.1% (s.d. of a batch's mean offset, in probe units), by 1.6% against the reference
    subnet; int8 ones by 2.0% against either (``bench/reference_tracking.py``,
    ``docs/benchmarks.md``).

    Where ``m`` also holds ``pairs`` (each subnet's units and the reference's trial by
    trial, :func:`trial_pairs`, pooled over its timings by :func:`repeated`) for every
    subnet, each subnet is brought there trial by trial instead
    (:func:`paired_at_reference`): on this project's VM, for 100 cifar fp32 subnets timed
    three times, that ranked them against their table at Kendall tau 0.922 where the
    batch-level form gave 0.892 (drift harness on) and 0.906 (off), RMSPE 2.4% and 2.1%
    against 2.9% and 2.7% (``bench/trial_pairs.py``, ``docs/benchmarks.md``).

    Raises:
        ValueError: a measurement without ``reference_rel``, a non-positive value, or a
            ``weight`` outside 0-1.
    """
    ref = m.get("reference_rel")
    if not ref or len(ref) != len(m["rel"]) or reference_rel <= 0 or min(ref) <= 0:
        raise InputError("bringing probe units to a reference state needs the reference "
                         "subnet's positive probe units beside every subnet")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"a reference weight must be in 0-1, got {weight}")
    pairs = m.get("pairs")
    if pairs and len(pairs) == len(m["rel"]) and all(pairs):
        return [paired_at_reference(p, reference_rel, weight) for p in pairs]
    return [r * (reference_rel / q) ** weight for r, q in zip(m["rel"], ref)]


#: prior of :func:`tracking_weight`: the subnets follow all of the reference's movement
#: (weight 1, what cifar fp32 subnets did), with this standard deviation
WEIGHT_PRIOR_SD = 0.5


def tracking_weight(rel: Sequence[Sequence[float]], ref: Sequence[Sequence[float]]) -> float:
    """The share of the reference subnet's movement in probe units that the subnets follow,
    from one measurement's passes: ``rel[pass][subnet]`` the subnets' probe units and
    ``ref[pass][subnet]`` the reference's in the same batch. Each subnet's log units and
    its reference's are centred on their means over the passes; the weight is the slope of
    the one on the other through the origin (least squares over every subnet and pass),
    shrunk towards 1 as a normal prior of s.d. :data:`WEIGHT_PRIOR_SD` against the slope's
    own variance (the residual variance over the sum of squared reference offsets), and
    clipped to 0-1. 1 with fewer than two passes or nothing to estimate from.

    The slope is also the weight that brings the subnets' variance over the passes lowest:
    a reference timed in the same few trials carries noise of its own, which lowers it
    (errors in variables). Cifar fp32 subnets followed the reference (its correction
    halved their spread); int8 ones and digits ones follow the probe already, and a full
    correction only adds the reference's noise (``docs/latency.md``).
    """
    y, x = np.log(np.asarray(rel, dtype=float)), np.log(np.asarray(ref, dtype=float))
    if y.ndim != 2 or y.shape != x.shape or y.shape[0] < 2:
        return 1.0
    y, x = y - y.mean(axis=0), x - x.mean(axis=0)
    sxx, sxy = float((x * x).sum()), float((x * y).sum())
    dof = y.size - y.shape[1] - 1
    if dof < 1:
        return 1.0
    slope = sxy / sxx if sxx > 0 else 1.0
    shrink = float(((y - slope * x) ** 2).sum()) / dof / WEIGHT_PRIOR_SD ** 2
    if sxx + shrink <= 0:
        return 1.0
    return float(np.clip((sxy + shrink) / (sxx + shrink), 0.0, 1.0))


def repeated(measure: Callable[[TimingProtocol, Path | None], dict[str, list[float]]],
             protocol: TimingProtocol, repeats: int,
             models: Path | None = None, weight: float | None = 1.0,
             fastest: float | None = None) -> dict[str, Any]:
    """``measure(protocol, folder)`` (answers as :func:`_measure_configs`) run ``repeats``
    times one after the other, each model's median timing kept
    (:func:`deploy.probe.median_repeat`: its ``ms`` and ``rel`` from the same timing;
    ``probe_ms`` of every timing). Where the reference subnet was timed,
    ``reference_seen`` holds its probe units in every timing (beside each subnet, picked or
    not): the state of the measurement as a whole is their median, which the picked
    timings' ``reference_rel`` can miss (three picked from the same upset batch); the
    median is picked in units brought by the reference with ``weight`` (None: the weight
    these timings show, :func:`tracking_weight`, returned as ``reference_weight``), and
    each model's ``pairs`` (:func:`trial_pairs`) of every timing kept are pooled, for
    :func:`at_reference` to bring it there trial by trial. With
    ``repeats`` > 1 each timing is re-timed at most :data:`REPEAT_RETIME` times (see
    :func:`measure_subnets`). The models are exported
    once: into ``models`` when given, else into a temporary folder (a single timing gets
    ``models`` as it is, None included).

    ``fastest`` (ms: the device's fastest probe time known, from its speed states measured
    here) with ``repeats`` > 1: while fewer than ``repeats`` timings were at the device's
    fast state (:func:`deploy.probe.fast_state`, by each timing's probe median), up to
    :data:`deploy.probe.FAST_WAIT` more are timed, one at a time, for at most
    :data:`deploy.probe.FAST_WAIT_S` s (:func:`deploy.probe.wait_for_fast_state`), and the
    medians are taken
    over the timings at the fast state (over all where none was); ``fast_state`` says what
    was kept.

    Raises:
        ValueError: ``repeats`` outside 1-20.
    """
    if not 1 <= repeats <= 20:
        raise InputError(f"repeats must be in 1-20, got {repeats}")
    if repeats == 1:
        m = measure(protocol, models)
        if "reference_rel" not in m:
            return m
        return {**m, "reference_seen": list(m["reference_rel"]),
                "reference_weight": 1.0 if weight is None else weight}
    protocol = dataclasses.replace(protocol, retime=min(protocol.retime, REPEAT_RETIME))
    with tempfile.TemporaryDirectory() as tmp:  # exported once, timed `repeats` x
        runs = wait_for_fast_state(lambda: measure(protocol, models or Path(tmp)), repeats,
                                   _run_probe_ms, fastest)
    seen = [v for r in runs for v in r["probe_ms"]]  # the speed states of every timing
    runs, state = kept_at_fast_state(runs, _run_probe_ms, fastest)
    extra = {"fast_state": state} if state is not None else {}
    if not all("reference_rel" in r for r in runs):
        pick = median_repeat([r["rel"] for r in runs])
        return {**{key: [runs[k][key][i] for i, k in enumerate(pick)] for key in ("ms", "rel")},
                "probe_ms": seen, **extra}
    if weight is None:
        weight = tracking_weight([r["rel"] for r in runs], [r["reference_rel"] for r in runs])
    # the median by the units that hold: brought by the reference as far as it is followed
    pick = median_repeat([[a / b ** weight for a, b in zip(r["rel"], r["reference_rel"])]
                          for r in runs])
    pooled = ({"pairs": [[p for r in runs for p in r["pairs"][i]] for i in range(len(pick))]}
              if all(len(r.get("pairs") or []) == len(pick) for r in runs) else {})
    return {**{key: [runs[k][key][i] for i, k in enumerate(pick)]
               for key in ("ms", "rel", "reference_rel")},
            "probe_ms": seen, **pooled,
            # the state of every timing kept, not of the picked ones
            "reference_seen": [v for r in runs for v in r["reference_rel"]],
            "reference_weight": weight, **extra}


def _run_probe_ms(run: dict[str, Any]) -> float | None:
    """A timing's state: its probe median (ms; None without probe times)."""
    return float(np.median(run["probe_ms"])) if run.get("probe_ms") else None


def _context(runtime: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """This machine's context for the table (:func:`runtime_context` and the block layout)."""
    return {**runtime_context(runtime, threads, precision), "block_layout": block_layout(runtime)}
