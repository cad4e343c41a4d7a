"""The reference probe: one fixed small network timed beside every measurement.

A device's speed changes in steps (a Raspberry Pi that throttles when hot, a phone's
governor, a VM sharing its cores): a time in ms is only true of the minute it was taken in.
Timed in the same interleaved trials as the models of a batch, the probe turns each of
their times into a ratio that the device's speed cancels from, *probe units*
(:class:`deploy.ontarget.runtimes.TimingProtocol`, ``probe``). Latency tables keep their
entries in probe units and the probe's own times over the build (the device's speed
states), and convert to ms at a stated speed (:meth:`search.latency_table.LatencyTable.
probe_ms`); see ``docs/latency.md``.

The probe is the same network everywhere (:data:`PROBE_ID`), exported in the runtime and
precision of what it is timed with: a 3x3 stem and two inverted-residual blocks (one with a
shortcut) at 24 px, the operations of the subnets it is compared with, small enough that
its share of a table build's timed work stays low (``bench/drift.py`` reports it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from deploy.formats import format_for
from deploy.ontarget.runtimes import Runtime, TimingProtocol, get_runtime
from deploy.targets import Target
from deploy.torch_runtime import TorchRuntime
from ofa.errors import InputError

__all__ = ["PROBE_ID", "PROBE_INPUT", "probe_module", "probe_file", "load_probe",
           "ProbedTarget", "probe_summary", "median_repeat", "combine_repeats", "fast_state",
           "wait_for_fast_state", "kept_at_fast_state", "fast_state_text", "fastest_ms",
           "FAST_BOUND", "FAST_WAIT", "FAST_WAIT_S"]

T = TypeVar("T")

PROBE_ID = "probe-v1"  # change the name whenever the network below changes
PROBE_INPUT = (1, 3, 24, 24)  # NCHW


class _Probe(nn.Module):
    """``(1, 3, 24, 24)`` -> ``(1, 10)``: stem conv 3->16 (h-swish), an inverted residual
    16 -> 64 (dw 5x5) -> 24, stride 2, and 24 -> 72 (dw 3x3) -> 24 with a shortcut; pool,
    linear."""

    def __init__(self) -> None:
        super().__init__()

        def cbn(i: int, o: int, k: int, s: int = 1, g: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)]

        self.stem = nn.Sequential(*cbn(3, 16, 3), nn.Hardswish())
        self.b1 = nn.Sequential(*cbn(16, 64, 1), nn.ReLU(), *cbn(64, 64, 5, 2, 64), nn.ReLU(),
                                *cbn(64, 24, 1))
        self.b2 = nn.Sequential(*cbn(24, 72, 1), nn.Hardswish(), *cbn(72, 72, 3, 1, 72),
                                nn.Hardswish(), *cbn(72, 24, 1))
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(self.stem(x))
        y = y + self.b2(y)
        return self.head(y.mean((2, 3)))


def probe_module() -> nn.Module:
    """The probe network (eval mode, seeded weights: every export of it is the same)."""
    g = torch.Generator().manual_seed(20261206)
    net = _Probe()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def _cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ofa-edge" / "probe" / torch.__version__


def probe_file(runtime: str, precision: str = "fp32", folder: str | Path | None = None
               ) -> Path:
    """The probe exported for ``runtime`` at ``precision`` (the file ``ofa export`` writes
    for them, ``deploy/formats.py``), in ``folder`` (default: the user's cache,
    ``~/.cache/ofa-edge/probe/<torch version>/``); an existing file is reused, a new one is
    written atomically.

    Raises:
        ValueError: a runtime without a file format (torch) or a precision it lacks.
    """
    fmt = format_for(runtime, precision)
    folder = Path(folder) if folder is not None else _cache()
    path = folder / f"{PROBE_ID}-{fmt.name}{fmt.suffix}"
    if not path.exists():
        calib = None
        if precision == "int8":
            calib = np.random.default_rng(0).standard_normal(
                (8, *PROBE_INPUT[1:])).astype(np.float32)
        fmt.export(probe_module(), PROBE_INPUT, path, calib=calib)  # written atomically
    return path


def load_probe(runtime: str, threads: int, precision: str = "fp32",
               folder: str | Path | None = None) -> tuple[Runtime, np.ndarray]:
    """The probe loaded in ``runtime`` in this process and a seeded input in its layout and
    type: the first model of a batch timed here with ``TimingProtocol(probe=True)``."""
    rt = get_runtime(runtime, threads)
    if isinstance(rt, TorchRuntime):
        rt.load_module(probe_module(), PROBE_INPUT)
    else:
        rt.load(str(probe_file(runtime, precision, folder)))
    x = np.random.default_rng(0).standard_normal(PROBE_INPUT).astype(np.float32)
    return rt, rt.prepare(x)


def probe_summary(batch_ms: Iterable[float]) -> dict[str, float]:
    """The device's speed states seen over a measurement, from the probe's median time (ms)
    of each batch: ``median`` (nominal), ``fastest``, ``slowest``, ``p90`` (90% of the
    batches were at least this fast: the sustained speed, ``--speed sustained``), and
    ``range`` (slowest / fastest).

    Raises:
        ValueError: no batch, or a time that is not positive.
    """
    a = np.asarray(list(batch_ms), dtype=np.float64)
    if not a.size or (a <= 0).any() or not np.isfinite(a).all():
        raise InputError("the probe's speed needs one positive time per batch")
    return {"median": float(np.median(a)), "fastest": float(a.min()),
            "slowest": float(a.max()), "p90": float(np.percentile(a, 90)),
            "range": float(a.max() / a.min()), "batches": int(a.size)}


#: a timing whose probe ran within this factor of the device's fastest state is at the fast
#: state (:func:`fast_state`): the drift harness slows the probe by 1.5x or more
#: (``bench/drift.py``), while batches timed in one state differ by a few per cent
FAST_BOUND = 1.2

#: a repeated measurement that waits for the fast state times at most this many timings
#: more, one at a time: on this project's VM a batch of a few digits subnets takes about a
#: second, and the drift harness switches its competitor at random times about every 4 s,
#: so the wait finds the fast state in most measurements; a device that stays slow costs
#: these timings and keeps all of them
FAST_WAIT = 6

#: ... and waits no longer than this (s): on a board whose batch of subnets takes minutes
#: (12 subnets at 224 px on a Raspberry Pi 4, about 0.1 s an invoke), the wait would cost
#: more than the measurement
FAST_WAIT_S = 30.0


def fastest_ms(probe: dict[str, Any]) -> float | None:
    """The device's fastest probe time (ms) in a latency table's probe record
    (``LatencyTable.probe``: ``ms.fastest`` of :func:`probe_summary`, over its build or the
    verification on this device), the fast state :func:`fast_state` compares with; None
    without one."""
    fast = (probe or {}).get("ms", {}).get("fastest")
    return float(fast) if fast else None


def fast_state(probe_ms: Sequence[float | None], fastest: float | None
               ) -> dict[str, Any] | None:
    """Which of several timings of the same models were taken at the device's fast state:
    ``probe_ms`` is each timing's probe median (ms), ``fastest`` the device's fastest
    probe time known (ms, its speed states measured here: :func:`probe_summary`); a timing
    faster still lowers it. A timing within :data:`FAST_BOUND` of it is at the fast state.
    None where that cannot be said (no ``fastest``, or a timing without probe times).

    Returns ``{"fastest_ms", "bound", "batches", "at_fast", "probe_ms", "at"}`` (``at``: one
    bool per timing).

    Why: a device slowed by time-sharing (a neighbour taking the core in slices) does not
    slow every model as it slows the probe, and in its slow state a large subnet's probe
    units move by 10-20% from batch to batch: under the drift harness, 20 px digits
    subnets read 12.2-16.6 units in five batches timed with the probe 1.65x slower, and the
    four ``ofa run`` subnets of 45 (fifteen runs) that came out more than 10% slower than
    predicted were all finally measured while the probe ran 1.54-1.74x slower than its
    fastest state (``docs/benchmarks.md``). A clock
    slowed alike for every cycle (a throttled board) moves no probe units: there a timing at
    any state is as good, and waiting for the fast state only costs time.
    """
    if not fastest or fastest <= 0 or not probe_ms or any(p is None for p in probe_ms):
        return None
    ms = [float(p) for p in probe_ms if p is not None]
    fast = min([float(fastest), *ms])
    at = [p <= FAST_BOUND * fast for p in ms]
    return {"fastest_ms": fast, "bound": FAST_BOUND, "batches": len(ms),
            "at_fast": int(sum(at)), "probe_ms": ms, "at": at}


def fast_state_text(state: dict[str, Any], what: str = "timings") -> str:
    """A :func:`fast_state` in words: how many ``what`` were timed, how many at the fast
    state, its bound and probe time, and what was kept."""
    return (f"{state['batches']} {what} timed, {state['at_fast']} of them at the device's fast "
            f"state (the probe within {state['bound']:g}x of {state['fastest_ms']:.4f} ms)"
            + (", those kept" if state["at_fast"] else "; none was, all kept"))


def wait_for_fast_state(time_one: Callable[[], T], n: int,
                        probe_ms: Callable[[T], float | None], fastest: float | None,
                        clock: Callable[[], float] = time.perf_counter) -> list[T]:
    """``n`` timings of the same models, one after the other (``time_one()`` each), and
    more while fewer than ``n`` of them are at the device's fast state (:func:`fast_state`;
    ``probe_ms`` gives a timing's probe median, ms): at most :data:`FAST_WAIT` more, and
    none that would take the wait past :data:`FAST_WAIT_S` seconds (by the last timing's
    duration), so a slow device whose one batch takes minutes is not kept waiting. No more
    where the state is unknown."""
    start = clock()
    timings = [time_one() for _ in range(n)]
    each, waited = (clock() - start) / max(n, 1), 0.0
    for _ in range(FAST_WAIT):
        state = fast_state([probe_ms(t) for t in timings], fastest)
        if state is None or state["at_fast"] >= n or waited + each > FAST_WAIT_S:
            break
        t0 = clock()
        timings.append(time_one())
        each = clock() - t0
        waited += each
    return timings


def kept_at_fast_state(timings: Sequence[T], probe_ms: Callable[[T], float | None],
                       fastest: float | None) -> tuple[list[T], dict[str, Any] | None]:
    """The timings taken at the device's fast state (:func:`fast_state`; all of them where
    none was) and the state without its ``at`` list (None, all kept: the state is
    unknown)."""
    state = fast_state([probe_ms(t) for t in timings], fastest)
    if state is None:
        return list(timings), None
    at = state.pop("at")
    return ([t for t, a in zip(timings, at) if a] if any(at) else list(timings)), state


def median_repeat(values: Sequence[Sequence[float]]) -> list[int]:
    """``values[repeat][model]``, one row per timing of the same models: for each model, the
    index of the repeat whose value is its median (the upper one of an even count). A
    measurement repeated keeps, per model, that whole repeat (its ms, probe units and probe
    times agree with each other), so one batch that the device's speed upset moves no
    model's result.

    Raises:
        ValueError: no repeat, or repeats of different lengths.
    """
    if not values or len({len(v) for v in values}) != 1:
        raise InputError("repeated timings need one or more repeats of the same models")
    return [sorted(range(len(values)), key=lambda k: float(values[k][m]))[len(values) // 2]
            for m in range(len(values[0]))]


def combine_repeats(batches: Sequence[Sequence[dict[str, Any]]],
                    statistic: str) -> list[dict[str, Any]]:
    """``batches[repeat][model]``, rows of the same models timed one batch after another
    (:meth:`ProbedTarget.bench_many`), as one row per model: the row of its median repeat
    (:func:`median_repeat`, by ``rel``; by ``statistic`` where the target gives no probe
    units) with every repeat's value added to ``latency_ms`` as ``rel_repeats`` (or
    ``<statistic>_repeats``). A single batch is returned as it is.

    Raises:
        ValueError: no batch, or batches of different lengths.
    """
    if len(batches) == 1:
        return list(batches[0])
    key = ("rel" if all("rel" in r["latency_ms"] for b in batches for r in b)
           else statistic)
    values = [[float(r["latency_ms"][key]) for r in b] for b in batches]
    out = []
    for m, k in enumerate(median_repeat(values)):
        row = dict(batches[k][m])
        row["latency_ms"] = {**row["latency_ms"], f"{key}_repeats": [v[m] for v in values]}
        out.append(row)
    return out


class ProbedTarget:
    """A :class:`deploy.targets.Target` whose every timed batch carries the probe: the probe
    file goes first, the protocol says so (``probe=True``), and the probe's row is taken out
    of the answer again. Each row's ``latency_ms`` gains ``rel`` (probe units) and each row
    gets ``probe``: the batch's probe statistics (``trial_means``, ``spread``,
    ``retimed``). ``bench`` and ``top1`` pass through (a single model, an accuracy run).
    """

    def __init__(self, target: Target, runtime: str, precision: str = "fp32",
                 folder: str | Path | None = None) -> None:
        if isinstance(target, ProbedTarget):  # one probe per batch, not one per wrapping
            target = target.target
        self.target, self.name = target, target.name
        self.probe = probe_file(runtime, precision, folder)

    def __getattr__(self, item: str) -> Any:  # check, start, top1, close, ...
        return getattr(self.target, item)

    def _protocol(self, protocol: TimingProtocol | None) -> TimingProtocol:
        return dataclasses.replace(protocol or TimingProtocol(), probe=True)

    def _split(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        head, *rows = rows
        probe = {k: v for k, v in head["latency_ms"].items()}
        for r in rows:
            r["probe"] = probe
        return rows

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        """The target's answer for ``model`` (with ``data``: its top-1 too), its latency
        taken beside the probe."""
        res = self.target.bench(model, threads, protocol, data) if data else {}
        row = self.bench_many([Path(model)], threads, protocol)[0]
        return {**row, **{k: v for k, v in res.items() if k == "accuracy"}}

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None, repeats: int = 1
                   ) -> list[dict[str, Any]]:
        """One row per model, timed in interleaved trials beside the probe. ``repeats`` > 1:
        the batch is timed that many times, one after the other, and each model keeps the
        row of its median repeat (:func:`median_repeat`, by ``rel``; by the protocol's
        statistic where the target gives no probe units) with every repeat's value added
        to ``latency_ms`` as ``rel_repeats`` (or ``<statistic>_repeats``).

        Raises:
            ValueError: ``repeats`` outside 1-20.
            deploy.targets.TargetError: the target could not measure.
        """
        if not 1 <= repeats <= 20:
            raise InputError(f"repeats must be in 1-20, got {repeats}")
        probed = self._protocol(protocol)
        batches = [self._split(self.target.bench_many([self.probe, *map(Path, models)],
                                                      threads, probed))
                   for _ in range(repeats)]
        return combine_repeats(batches, probed.statistic)

    def bench_batches(self, batches: Iterable[list[Path]], threads: int = 1,
                      protocol: TimingProtocol | None = None
                      ) -> Iterator[list[dict[str, Any]]]:
        probed = ([self.probe, *map(Path, b)] for b in batches)
        for rows in self.target.bench_batches(probed, threads, self._protocol(protocol)):
            yield self._split(rows)
