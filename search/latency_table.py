"""Latency lookup tables: format, loading with context checks, OFA YAML import. Numpy-only.

One JSON file per measurement context (see ``docs/formats.md``)::

    {"schema": "ofa-edge-latency-table", "version": 1,
     "context": {"machine": {...}, "runtime": "onnxruntime", "runtime_version": "1.31.1",
                 "backend": "CPUExecutionProvider", "threads": 1, "precision": "fp32",
                 "batch": 1},
     "space": {...SearchSpace.to_dict()...}, "resolutions": [32],
     "protocol": {"warmup": 10, "runs": 50, "trials": 3, "statistic": "median"},
     "overhead_ms": 0.01,
     "build": {"blocks": 96, "wall_s": 95.1, "timing_s": 88.0, "load_s": 4.2},  # optional
     "calibration": {"a": 1.0, "p": 1.0, "b": 0.0, "fit": "log-power",
                     "unit": "probe", "fitted_on": [{"config": ..., "sum": .., "measured": ..,
                                                      "measured_ms": ..}]},
     "probe": {"id": "probe-v1", "ms": {"median", "fastest", "slowest", "p90", "range",
                                        "batches"}, "measured": "build"},
     "overhead_rel": 0.05,
     "entries": {"<resolution>": {"<OFA-style key>": {"median": .., "mean": .., "std": ..,
                                                       "p90": .., "count": ..}}}}

Entries are grouped per input resolution like OFA's ``<r>_lookup_table.yaml`` files, since
some keys (the head's) are the same at every resolution but were measured separately.

Entry latencies are what the isolated layer measured, per-invoke overhead included; a network's
raw prediction is ``sum(max(entry - overhead, 0)) + overhead`` (one invoke), and the
calibrated one is ``a * raw ** p + b`` (:meth:`LatencyTable.calibrated`; block sums miss
fusion, cache effects and per-invoke overhead; nn-Meter, Zhang et al., MobiSys 2021).
Tables calibrated before the power law have no ``p`` (1: a straight line).

Probe units. A table built with the reference probe (``deploy/probe.py``) also records each
entry's ``rel`` (its time over the probe's, timed in the same trials), ``overhead_rel`` and
``probe``: the probe's id and its median time in every batch of the build, summarised as the
device's speed states (``median`` = nominal, ``fastest``, ``slowest``, ``p90`` = sustained).
Such a table predicts in probe units, where a change of the device's speed cancels out, its
calibration is fitted in probe units too, and a prediction becomes ms at a stated speed
(:meth:`LatencyTable.probe_ms`). Tables without ``probe`` predict in ms, as measured at the
speed of their build (loading one prints a one-line note).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofa.errors import InputError
from ofa.fileio import atomic_write_json
from ofa.space import SearchSpace, SubnetConfig

__all__ = ["SCHEMA", "LatencyTable", "TableError", "import_ofa_yaml", "SPEEDS"]

SPEEDS = {"nominal": "median", "sustained": "p90"}  # --speed -> the probe statistic used

SCHEMA = "ofa-edge-latency-table"
VERSION = 1
_CONTEXT_KEYS = ("machine", "runtime", "runtime_version", "backend", "threads", "precision",
                 "batch")


class TableError(InputError):
    """A corrupt, incomplete or mismatched latency table."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class LatencyTable:
    context: dict[str, Any]
    space: dict[str, Any]
    resolutions: list[int]
    entries: dict[str, dict[str, dict[str, float]]]
    protocol: dict[str, Any] = field(default_factory=dict)
    overhead_ms: float = 0.0
    calibration: dict[str, Any] = field(default_factory=lambda: {"a": 1.0, "b": 0.0,
                                                                 "fitted_on": []})
    source: str = ""
    statistic: str = "median"
    build: dict[str, Any] = field(default_factory=dict)  # where the build's time went (s)
    probe: dict[str, Any] = field(default_factory=dict)  # {"id", "ms": speed states, ...}
    overhead_rel: float = 0.0  # the per-invoke overhead in probe units

    # --- units ---------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        """``probe`` when entries and calibration are in probe units, else ``ms``."""
        return "probe" if self.probe else "ms"

    @property
    def overhead(self) -> float:
        """One invoke's overhead in the table's unit."""
        return self.overhead_rel if self.probe else self.overhead_ms

    @property
    def reference(self) -> dict[str, Any]:
        """The reference subnet's state its predictions state (``calibration.reference``:
        ``config``, ``rel`` in probe units, ``range``; ``docs/latency.md``), or ``{}``."""
        return self.calibration.get("reference") or {}

    @property
    def reference_weight(self) -> float:
        """The share of the reference subnet's movement its subnets follow
        (``calibration.reference.weight``, ``deploy.lut.measure.tracking_weight``); 1 for a
        table that recorded none (calibrated before the weight was estimated)."""
        return float(self.reference.get("weight", 1.0))

    def probe_ms(self, speed: str = "nominal") -> float:
        """ms per probe unit at ``speed``: ``nominal`` (the probe's median time over the
        build's batches, or over the measurements that verified the table on this device)
        or ``sustained`` (the slow end: 90% of the batches were at least this fast).
        1.0 for a table in ms.

        Raises:
            ValueError: an unknown speed.
        """
        if speed not in SPEEDS:
            raise InputError(f"speed {speed!r}: use {' or '.join(SPEEDS)}")
        return float(self.probe["ms"][SPEEDS[speed]]) if self.probe else 1.0

    def to_ms(self, value: Any, speed: str = "nominal") -> Any:
        """A latency in the table's unit (a number or an array) in ms at ``speed``."""
        return value * self.probe_ms(speed)

    def speed_text(self) -> str:
        """The device's speed states in one phrase (``''`` without probe data)."""
        if not self.probe:
            return ""
        m = self.probe["ms"]
        where = self.probe.get("measured", "build")
        return (f"probe {self.probe.get('id', '?')} {m['median']:.4f} ms nominal, "
                f"{m['fastest']:.4f}-{m['slowest']:.4f} ms over {m.get('batches', '?')} "
                f"batches ({m['slowest'] / m['fastest']:.2f}x), sustained (p90) "
                f"{m['p90']:.4f} ms; measured at {where}")

    # --- io ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "context": self.context,
                "space": self.space, "resolutions": self.resolutions,
                "protocol": self.protocol, "overhead_ms": self.overhead_ms,
                "calibration": self.calibration, "statistic": self.statistic,
                **({"build": self.build} if self.build else {}),
                **({"probe": self.probe, "overhead_rel": self.overhead_rel}
                   if self.probe else {}), "entries": self.entries}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, source: str = "table") -> LatencyTable:
        if not isinstance(d, dict):
            raise TableError(f"{source}: not a latency table (expected a JSON object)")
        if d.get("schema") != SCHEMA:
            raise TableError(f"{source}: not a latency table (schema {d.get('schema')!r})")
        if d.get("version") != VERSION:
            raise TableError(f"{source}: table version {d.get('version')} != {VERSION}")
        kinds = {"context": dict, "space": dict, "resolutions": list, "entries": dict}
        if isinstance(d.get("context"), dict) and "device" in d["context"] \
                and "machine" not in d["context"]:  # the measured machine's old key
            d = {**d, "context": {("machine" if k == "device" else k): v
                                  for k, v in d["context"].items()}}
        for k, kind in kinds.items():
            if not isinstance(d.get(k), kind):
                what = "object" if kind is dict else "list"
                raise TableError(f"{source}: field {k!r} must be a JSON {what}")
        _check_context_and_space(d, source)
        stat = d.get("statistic", "median")
        if stat not in ("median", "mean", "min", "p90"):
            raise TableError(f"{source}: statistic {stat!r} is not median, mean, min or p90")
        res = d["resolutions"]
        if not res or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in res):
            raise TableError(f"{source}: resolutions must be a non-empty list of pixel sizes")
        for r in res:
            if str(r) not in d["entries"]:
                raise TableError(f"{source}: no entries for resolution {r}")
        probe = d.get("probe") or {}
        _check_probe(probe, d.get("overhead_rel", 0.0), source)
        for r, group in d["entries"].items():
            if not isinstance(group, dict):
                raise TableError(f"{source}: entries[{r!r}] must be an object")
            for key, e in group.items():
                for k in (stat, "rel") if probe else (stat,):
                    v = e.get(k) if isinstance(e, dict) else None
                    if not _finite(v) or v <= 0:
                        raise TableError(f"{source}: entry {r}/{key!r}: {k} must be a "
                                         f"finite latency > 0, got {v!r}")
        cal = d.get("calibration") or {"a": 1.0, "b": 0.0, "fitted_on": []}
        _check_calibration(cal, source)
        ov = d.get("overhead_ms", 0.0)
        if not _finite(ov) or ov < 0:
            raise TableError(f"{source}: overhead_ms must be a finite number >= 0, got {ov!r}")
        return cls(context=d["context"], space=d["space"], resolutions=list(d["resolutions"]),
                   entries=d["entries"], protocol=d.get("protocol") or {},
                   overhead_ms=float(d.get("overhead_ms", 0.0)), calibration=cal,
                   source=source, statistic=stat,
                   build=d["build"] if isinstance(d.get("build"), dict) else {},
                   probe=probe, overhead_rel=float(d.get("overhead_rel", 0.0)))

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None,
             resolutions: list[int] | None = None, precision: str | None = None,
             runtime: str | None = None, threads: int | None = None) -> LatencyTable:
        """Read and check a table; the optional arguments are the caller's context.

        Raises:
            TableError: unreadable/corrupt file, or a context mismatch naming the field.
        """
        path = Path(path)
        if not path.exists():
            raise TableError(f"latency table {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TableError(f"latency table {path} is not valid JSON ({exc})") from None
        t = cls.from_dict(d, source=str(path))
        t.check(space=space, resolutions=resolutions, precision=precision, runtime=runtime,
                threads=threads)
        if not t.probe and str(path) not in _NOTED:
            _NOTED.add(str(path))
            print(f"note: {path} has no probe data: its ms hold at the speed of its build "
                  "only; rebuild it with `ofa lut build` to predict in probe units",
                  file=sys.stderr)
        return t

    # --- context -------------------------------------------------------------------------
    def check(self, space: SearchSpace | None = None, resolutions: list[int] | None = None,
              precision: str | None = None, runtime: str | None = None,
              threads: int | None = None) -> None:
        """Refuse a table measured in another context.

        Raises:
            TableError: naming the mismatching field and both values.
        """
        src = self.source or "table"
        if space is not None:
            mine = self.space
            theirs = space.to_dict()
            for k in ("preset", "num_classes", "width_mult"):
                if mine.get(k) != theirs.get(k):
                    raise TableError(f"{src}: table is for space {k}={mine.get(k)!r}, "
                                     f"not {theirs.get(k)!r}")
            for k in ("ks_list", "expand_list", "depth_list"):
                extra = set(theirs[k]) - set(mine.get(k, []))
                if extra:
                    raise TableError(f"{src}: table lacks {k} values {sorted(extra)}")
        for r in resolutions or []:
            if r not in self.resolutions:
                raise TableError(f"{src}: resolution {r} missing (table has {self.resolutions})")
        for name, want in (("precision", precision), ("runtime", runtime), ("threads", threads)):
            if want is not None and self.context.get(name) != want:
                raise TableError(f"{src}: table {name} is {self.context.get(name)!r}, "
                                 f"not {want!r}")

    def entry(self, r: int, key: str) -> float:
        """``key``'s latency at input resolution ``r`` in the table's unit: ``rel`` (probe
        units) for a table with probe data, else the statistic (ms).

        Raises:
            TableError: no such entry.
        """
        try:
            return float(self.entries[str(r)][key]["rel" if self.probe else self.statistic])
        except KeyError:
            raise TableError(f"{self.source or 'table'}: no entry for {key} at r={r}") from None

    def net(self, r: int, key: str) -> float:
        """``key``'s cost at resolution ``r`` without the per-invoke overhead its isolated
        measurement includes, in the table's unit, and never below 0: a block that takes
        no longer than an empty invoke (tiny blocks timed with few trials, where the two
        are within noise of each other) adds nothing, rather than subtracting from the
        subnet's other blocks, which could make a sum zero or negative.

        Raises:
            TableError: no such entry.
        """
        return max(self.entry(r, key) - self.overhead, 0.0)

    def predict_raw(self, space: SearchSpace, cfg: SubnetConfig) -> float:
        """Sum of the blocks' costs net of overhead (:meth:`net`), plus one invoke's overhead
        (the table's unit, :attr:`unit`)."""
        return sum(self.net(cfg.r, b.key()) for b in space.block_shapes(cfg)) + self.overhead

    def predict(self, space: SearchSpace, cfg: SubnetConfig, calibrated: bool = True,
                speed: str = "nominal") -> float:
        """One subnet's latency in ms at ``speed`` (:meth:`probe_ms`)."""
        raw = self.predict_raw(space, cfg)
        mparams = space.params(cfg) / 1e6 if self.calibration.get("w") else None
        val = (float(self.calibrated(np.asarray(raw), mparams)) * self.scale(cfg.r)
               if calibrated else raw)
        return float(self.to_ms(val, speed))

    def calibrated(self, raw: np.ndarray, mparams: Any = None) -> np.ndarray:
        """``a * raw ** p + b + w * mparams`` (the table's unit, any shape) with the table's
        calibration: ``raw`` block sums, ``mparams`` the subnets' parameters in millions
        (the weights a whole subnet reads, which its blocks timed alone found in a core's
        cache: ``deploy/lut/calibrate.py``, :func:`fit_calibration`). ``p`` = 1 and a
        straight line for tables fitted before the power law; ``w`` = 0 for tables fitted
        without the weights.

        Raises:
            TableError: the calibration has a weights term and ``mparams`` is None.
        """
        c = self.calibration
        out = float(c["a"]) * np.power(raw, float(c.get("p", 1.0))) + float(c["b"])
        w = float(c.get("w", 0.0))
        if w:
            if mparams is None:
                raise TableError(f"{self.source or 'table'}: its calibration has a weights "
                                 "term; the subnets' parameters are needed")
            out = out + w * np.asarray(mparams, dtype=np.float64)
        return out

    def scale(self, r: Any) -> Any:
        """The factor a verification on another device fitted (``deploy/verify.py``) at
        input resolution(s) ``r`` (an int or an int array): the calibration's
        ``resolution_scale`` for ``r``, else its ``scale``, else 1."""
        per = self.calibration.get("resolution_scale") or {}
        one = float(self.calibration.get("scale", 1.0))
        if not per:
            return np.full(np.shape(r), one) if np.ndim(r) else one
        look = np.vectorize(lambda x: float(per.get(str(int(x)), per.get(int(x), one))))
        return look(r) if np.ndim(r) else float(look(r))

    def calibration_text(self) -> str:
        """The calibration in one short phrase, e.g. ``a=0.970 p=1.084 b=0.000 ms``."""
        c = self.calibration
        text = f"a={float(c['a']):.3f} p={float(c.get('p', 1.0)):.3f} b={float(c['b']):.3f} ms"
        return text + (f" w={float(c['w']):.3f}/Mparams" if c.get("w") else "")

    def describe(self) -> str:
        c = self.context
        dev = c["machine"].get("name", "?") if isinstance(c["machine"], dict) \
            else c["machine"]
        if isinstance(c["machine"], dict) and c["machine"].get("emulated"):
            dev += " (EMULATED: timings are not the device's)"
        return (f"{dev} / {c['runtime']} {c['runtime_version']} / {c['backend']} / "
                f"{c['threads']} thread(s) / {c['precision']} / batch {c['batch']}")


_NOTED: set[str] = set()  # tables already noted as lacking probe data (once per path)


def _check_probe(probe: Any, overhead_rel: Any, source: str) -> None:
    """A table's ``probe`` record: ``{}`` or an object with ``id`` and ``ms`` speed states.

    Raises:
        TableError: naming the malformed field.
    """
    if not isinstance(probe, dict):
        raise TableError(f"{source}: field 'probe' must be a JSON object")
    if not probe:
        return
    ms = probe.get("ms")
    if not isinstance(probe.get("id"), str) or not isinstance(ms, dict):
        raise TableError(f"{source}: probe needs 'id' and 'ms' (its speed states)")
    for k in ("median", "fastest", "slowest", "p90"):
        if not _finite(ms.get(k)) or ms[k] <= 0:
            raise TableError(f"{source}: probe.ms.{k} must be a finite time > 0 ms, "
                             f"got {ms.get(k)!r}")
    if not _finite(overhead_rel) or overhead_rel < 0:
        raise TableError(f"{source}: overhead_rel must be a finite number >= 0, "
                         f"got {overhead_rel!r}")


def _check_complete(path: Path, r: int, group: dict[str, Any], space: SearchSpace) -> None:
    """Every layer group ``space`` can have at ``r`` must be in ``group``.

    Raises:
        TableError: a resolution outside the space, or missing keys (a truncated file, or
            tables of another space than ``--space``).
    """
    if r not in space.resolutions:
        raise TableError(f"{path}: resolution {r} is not one of space {space.name}'s")
    missing = [s.key() for s in space.all_block_shapes([r]) if s.key() not in group]
    if missing:
        raise TableError(f"{path}: {len(missing)} block shape(s) of space {space.name} missing "
                         f"(e.g. {missing[0]}): a truncated file, or tables of another space "
                         "(--space)")


def import_ofa_yaml(folder: str | Path, space: SearchSpace, device: str = "Samsung Note10"
                    ) -> LatencyTable:
    """Convert OFA's ``<r>_lookup_table.yaml`` files (e.g. the Note10 tables) to this format.

    OFA keys are kept as they are (they are this format's keys); each entry's ``mean`` becomes
    the statistic (OFA published means), overhead 0 and identity calibration, so predictions
    equal OFA's sums of the YAML entries.

    Raises:
        TableError: no tables in ``folder``, an unreadable file, or one that lacks block
            shapes of ``space`` (truncated, or measured for another space).
    """
    import yaml

    folder = Path(folder)
    files = sorted(folder.glob("*_lookup_table.yaml"))
    if not files:
        raise TableError(f"{folder}: no '<resolution>_lookup_table.yaml' files found")
    entries: dict[str, dict[str, dict[str, float]]] = {}
    resolutions = []
    for f in files:
        try:
            r = int(f.name.split("_")[0])
            d = yaml.safe_load(f.read_text())
        except (ValueError, yaml.YAMLError) as exc:
            raise TableError(f"{f}: cannot read OFA table ({exc})") from None
        if not isinstance(d, dict):
            raise TableError(f"{f}: not an OFA lookup table")
        resolutions.append(r)
        group = entries.setdefault(str(r), {})
        for key, v in d.items():
            if not isinstance(v, dict) or "mean" not in v:
                raise TableError(f"{f}: entry {key!r} lacks 'mean'")
            group[key] = {"median": float(v["mean"]), "mean": float(v["mean"]),
                            "std": float(v.get("std", 0.0)), "p90": None,
                            "count": int(v.get("count", 0))}
        _check_complete(f, r, group, space)
    ctx = {"machine": {"name": device}, "runtime": "tflite (OFA published)",
           "runtime_version": "unknown", "backend": "CPU", "threads": 1, "precision": "fp32",
           "batch": 1}
    t = LatencyTable(context=ctx, space=space.to_dict(), resolutions=sorted(resolutions),
                     entries=entries, protocol={"statistic": "mean", "source": str(folder)},
                     statistic="median", source=str(folder))
    return t


def _check_context_and_space(d: dict[str, Any], source: str) -> None:
    """A table's ``context`` (every key, the machine's facts an object, threads >= 1) and
    ``space`` (a space ofa-edge has).

    Raises:
        TableError: naming the field.
    """
    missing = [k for k in _CONTEXT_KEYS if k not in d["context"]]
    if missing:
        raise TableError(f"{source}: context lacks {missing}")
    if not isinstance(d["context"]["machine"], dict):
        raise TableError(f"{source}: context.machine must be an object")
    threads = d["context"]["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TableError(f"{source}: context.threads must be an integer >= 1")
    try:
        SearchSpace.from_dict(d["space"])
    except ValueError as exc:
        raise TableError(f"{source}: {exc}") from None


def _check_calibration(cal: Any, source: str) -> None:
    """``{"a" > 0, "b", "p" in (0, 4]}``, all finite.

    Raises:
        TableError: naming the bad value.
    """
    a, b, pw = ((cal.get("a"), cal.get("b"), cal.get("p", 1.0)) if isinstance(cal, dict)
                else (None, None, None))
    if not (_finite(a) and _finite(b) and a > 0):
        raise TableError(f"{source}: calibration needs finite 'a' > 0 and 'b' (got "
                         f"a={a!r}, b={b!r})")
    if not (_finite(pw) and 0 < pw <= 4):
        raise TableError(f"{source}: calibration exponent 'p' must be in (0, 4], got {pw!r}")
