"""Inference runtimes behind one narrow interface, and the timing protocol. Torch-free.

A runtime loads a model file and runs it on numpy arrays. This module imports only numpy at
import time; each runtime imports its own engine when used, so the device agent on a
Raspberry Pi needs just numpy plus the one runtime it uses.

Timing protocol (:class:`TimingProtocol`, as nn-Meter and OFA's latency tables measure): warm
up, time only the invoke with a monotonic clock, many runs in several trials; report median,
p90, mean, std, min. Every timing in the project goes through :func:`time_interleaved`; the
host registers an eager-torch runtime (``deploy/torch_runtime.py``) into :data:`RUNTIMES`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.ontarget.errors import TargetInputError

__all__ = ["Runtime", "OnnxRuntime", "LiteRTRuntime", "RUNTIMES", "get_runtime", "times_files",
           "time_invoke", "time_interleaved", "RuntimeMissing", "stats_ms", "TimingProtocol",
           "runtime_for", "register_runtime", "probe_spread", "steady_trials"]


class RuntimeMissing(RuntimeError):
    """The runtime's Python package is not installed here."""


class Runtime:
    """Interface: ``load(path)`` (or ``load_bytes``), ``input_shape``, ``input_dtype``,
    ``run(x) -> logits``."""

    name = ""
    suffix = ""
    backend = ""
    #: True: times model files (exported, converted, sent to a target); False: times
    #: modules in this process (eager torch: nothing is exported, nothing leaves the host)
    files = True

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise TargetInputError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def version(self) -> str:
        raise NotImplementedError

    def load(self, path: str) -> None:
        raise NotImplementedError

    def load_bytes(self, data: bytes, name: str) -> None:
        """Load a model from its file's bytes (``name``: for messages), as :meth:`load`
        does from the file: a device session gets a batch's models inline and writes no
        files (writing and reading them back is seconds a batch on a small board).

        Raises:
            ValueError: empty or not a model of this runtime.
        """
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def input_dtype(self) -> Any:
        return np.float32

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def invoke(self) -> None:
        """Run once on the input already set (what the timer measures)."""
        raise NotImplementedError

    def set_input(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """A float NCHW input ``(1, C, H, W)`` -> this model's input: NHWC when the
        model wants it (an input already in the model's shape passes as it is), quantised
        with the input's scale/zero point for an int8 model."""
        n, c, h, w = x.shape
        if tuple(self.input_shape) != x.shape and tuple(self.input_shape) == (n, h, w, c):
            x = x.transpose(0, 2, 3, 1)
        scale, zero = self.input_quant()
        if np.issubdtype(np.dtype(self.input_dtype), np.integer) and scale > 0:
            info = np.iinfo(np.dtype(self.input_dtype))
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        return np.ascontiguousarray(x.astype(self.input_dtype))

    def input_quant(self) -> tuple[float, int]:
        """(scale, zero point) of a quantised input; (0, 0) for a float input."""
        return 0.0, 0

    def output_quant(self) -> tuple[float, int]:
        return 0.0, 0

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Float logits ``(N, classes)`` for normalised float images ``(N, 3, H, W)``, one
        invoke per image (exported models have batch 1)."""
        out = []
        scale, zero = self.output_quant()
        for i in range(len(x)):
            y = np.asarray(self.run(self.prepare(x[i:i + 1])), dtype=np.float32)
            out.append((y - zero) * scale if scale > 0 else y)
        return np.concatenate(out).reshape(len(x), -1)


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    if os.path.getsize(path) == 0:
        raise TargetInputError(f"model file {path} is empty")


class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU execution provider, ``intra_op_num_threads = threads``."""

    name, suffix, backend = "onnxruntime", ".onnx", "CPUExecutionProvider"

    def _ort(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("onnxruntime is not installed (pip install onnxruntime)") from None
        return ort

    def version(self) -> str:
        return self._ort().__version__

    def load(self, path: str) -> None:
        _check_file(path)
        self._load(path, path)

    def load_bytes(self, data: bytes, name: str) -> None:
        if not data:
            raise TargetInputError(f"model {name} is empty")
        self._load(data, name)

    def _load(self, model: str | bytes, name: str) -> None:
        ort = self._ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TargetInputError(f"{name}: onnxruntime cannot load it "
                             f"({str(exc).splitlines()[0][:160]})") from None
        self._in = self.sess.get_inputs()[0]
        self._feed: dict[str, np.ndarray] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) if isinstance(d, int) else 1 for d in self._in.shape)

    @property
    def input_dtype(self) -> Any:
        return np.uint8 if "uint8" in self._in.type else (
            np.int8 if "int8" in self._in.type else np.float32)

    def set_input(self, x: np.ndarray) -> None:
        self._feed = {self._in.name: x}

    def invoke(self) -> None:
        self._out = self.sess.run(None, self._feed)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.set_input(x)
        self.invoke()
        return self._out[0]


class LiteRTRuntime(Runtime):
    """TFLite interpreter from ai-edge-litert (XNNPACK delegate), tflite-runtime fallback."""

    name, suffix, backend = "litert", ".tflite", "XNNPACK"

    def _interp_cls(self):
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter, "ai-edge-litert"
        except ImportError:
            pass
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore

            return Interpreter, "tflite-runtime"
        except ImportError:
            raise RuntimeMissing("neither ai-edge-litert nor tflite-runtime is installed "
                                 "(pip install ai-edge-litert)") from None

    def version(self) -> str:
        _, pkg = self._interp_cls()
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{pkg} {version(pkg)}"
        except PackageNotFoundError:
            return pkg

    def load(self, path: str) -> None:
        _check_file(path)
        self._load({"model_path": path}, path)

    def load_bytes(self, data: bytes, name: str) -> None:
        if not data:
            raise TargetInputError(f"model {name} is empty")
        self._content = data  # the interpreter reads the flatbuffer in place
        self._load({"model_content": data}, name)

    def _load(self, source: dict[str, Any], name: str) -> None:
        cls, _ = self._interp_cls()
        try:
            self.interp = cls(**source, num_threads=self.threads)
            self.interp.allocate_tensors()
        except Exception as exc:
            raise TargetInputError(f"{name}: LiteRT cannot load it "
                             f"({str(exc).splitlines()[0][:160]})") from None
        self._in = self.interp.get_input_details()[0]
        self._out_d = self.interp.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._in["shape"])

    @property
    def input_dtype(self) -> Any:
        return self._in["dtype"]

    def input_quant(self) -> tuple[float, int]:
        scale, zero = self._in.get("quantization", (0.0, 0))
        return float(scale), int(zero)

    def output_quant(self) -> tuple[float, int]:
        scale, zero = self._out_d.get("quantization", (0.0, 0))
        return float(scale), int(zero)

    def set_input(self, x: np.ndarray) -> None:
        self.interp.set_tensor(self._in["index"], x)

    def invoke(self) -> None:
        self.interp.invoke()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.set_input(x)
        self.invoke()
        return self.interp.get_tensor(self._out_d["index"])


RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OnnxRuntime, "litert": LiteRTRuntime}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Add a runtime class to :data:`RUNTIMES` under ``cls.name`` (usable as a decorator)."""
    RUNTIMES[cls.name] = cls
    return cls


def times_files(name: str) -> bool:
    """Whether runtime ``name`` times exported model files (:attr:`Runtime.files`); an
    unknown name answers True (it is refused where it is looked up)."""
    cls = RUNTIMES.get(name)
    return True if cls is None else cls.files


def get_runtime(name: str, threads: int = 1) -> Runtime:
    """A runtime by name (``onnxruntime``, ``litert``; ``torch`` once the host registered it).

    Raises:
        ValueError: unknown name or ``threads < 1``.
    """
    if name not in RUNTIMES:
        raise TargetInputError(f"unknown runtime {name!r}; allowed: {sorted(RUNTIMES)}")
    return RUNTIMES[name](threads)


def runtime_for(model: str | os.PathLike) -> str:
    """The runtime that runs a model file, by suffix (``.onnx`` -> ``onnxruntime``,
    ``.tflite`` -> ``litert``).

    Raises:
        ValueError: a suffix no file-based runtime reads.
    """
    suffix = os.path.splitext(str(model))[1].lower()
    for name, cls in RUNTIMES.items():
        if cls.suffix and cls.suffix == suffix:
            return name
    known = sorted(c.suffix for c in RUNTIMES.values() if c.suffix)
    raise TargetInputError(f"{model}: unknown model type {suffix!r} (expected one of {known})")


@dataclass
class TimingProtocol:
    """How latency is timed: per trial ``warmup`` untimed then ``runs`` timed invokes,
    ``trials`` rounds; ``statistic`` (``median``) is the figure tables and reports use.

    The default, 10 short trials of 3 + 15 invokes (150 timed, 30 untimed), interleaves
    models finely (:func:`time_interleaved`): a drift of a shared machine's speed over
    seconds then reaches every model alike. On this project's x86 VM, two back-to-back
    measurements of the same 100 int8 subnets differ by 1.0-1.7% (relative s.d.) and rank
    them alike at Kendall tau 0.92-0.94 with it, against 2.0-4.6% and 0.82-0.89 with 3 trials
    of 10 + 50 (``bench/timing_protocol.py``, two runs).

    ``probe``: the first model of every timed batch is the reference probe
    (``deploy/probe.py``), timed in the same trials; each model's statistics then also
    carry ``rel``, its time in probe units, the median over trials of (its trial mean /
    the probe's trial mean around it). A model's trial during which the probe moved more
    than ``probe_bound`` (its timings just before and after differ by more, slower /
    faster) is left out of that median; a batch in which some model keeps fewer than half
    its trials is timed again, up to ``retime`` times, and the attempt whose worst model
    kept the most trials is kept (:func:`time_interleaved`, ``docs/latency.md``).

    Raises:
        ValueError: ``runs``/``trials`` below 1, ``warmup`` or ``retime`` below 0, or
            ``probe_bound`` not above 1.
    """

    warmup: int = 3
    runs: int = 15
    trials: int = 10
    statistic: str = "median"
    probe: bool = False
    probe_bound: float = 1.25
    retime: int = 3

    def __post_init__(self) -> None:
        for name, lo in (("warmup", 0), ("runs", 1), ("trials", 1), ("retime", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TargetInputError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.statistic not in ("median", "mean", "min", "p90"):
            raise TargetInputError(f"statistic {self.statistic!r}: use median, mean, min or p90")
        b = self.probe_bound
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 1.0 < b <= 10.0:
            raise TargetInputError(f"probe_bound must be a number in (1, 10], got {b!r}")

    def fields(self) -> dict[str, Any]:
        """What a timing request carries (``deploy/ontarget/agent.py``): everything but the
        statistic, which the caller reads."""
        return {"warmup": self.warmup, "runs": self.runs, "trials": self.trials,
                "probe": self.probe, "probe_bound": self.probe_bound, "retime": self.retime}

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> TimingProtocol:
        """The protocol of a request or a table's ``protocol`` record (missing keys take
        the defaults; unknown keys are ignored).

        Raises:
            ValueError: a field out of range.
        """
        known = {"warmup", "runs", "trials", "statistic", "probe", "probe_bound", "retime"}
        return cls(**{k: v for k, v in d.items() if k in known})


def stats_ms(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median": float(np.median(a)), "mean": float(a.mean()), "std": float(a.std()),
            "p90": float(np.percentile(a, 90)), "min": float(a.min()), "count": int(a.size)}


def time_invoke(rt: Runtime, x: np.ndarray, protocol: TimingProtocol | None = None
                ) -> dict[str, float]:
    """Time ``rt.invoke()`` on input ``x``: per trial ``warmup`` untimed then ``runs`` timed
    invokes; statistics (ms) over all timed invokes."""
    return time_interleaved([rt], [x], protocol)[0]


def _timed(rt: Runtime, p: TimingProtocol) -> list[float]:
    """One trial of one model: ``warmup`` untimed invokes, then ``runs`` timed ones (ms)."""
    for _ in range(p.warmup):
        rt.invoke()
    out = []
    for _ in range(p.runs):
        t = time.perf_counter()
        rt.invoke()
        out.append((time.perf_counter() - t) * 1e3)
    return out


PROBE_INTERVAL_S = 0.05  # the probe is timed again within a trial after this long ...
PROBE_SPACING = 10  # ... or after this many of its own trial's durations, if that is longer


def probe_interval_s(probe_trial_s: float) -> float:
    """How long (s) a trial runs other models before the probe is timed again: at least
    :data:`PROBE_INTERVAL_S`, and :data:`PROBE_SPACING` times the probe's last trial
    (``probe_trial_s``, s), so that on a slow device, where one probe trial takes longer
    than the fixed interval, the probe is not timed before every model, nor at a trial's
    start before it is due (:func:`_trials`). Its share of the timed work is then at most
    about 1 / (1 + 10) = 9%: on the emulated Pi (``tools/emulated_pi.py``, probe 26 ms, 32
    digits blocks of 0.3-18 ms), a spacing of 6 left 19% (one re-time per trial), a timing
    at every trial's start 12-16%, and the fixed 50 ms 78-83% (``docs/benchmarks.md``)."""
    return max(PROBE_INTERVAL_S, PROBE_SPACING * probe_trial_s)


def _trials(rts: Sequence[Runtime], p: TimingProtocol,
            progress: Callable[[], None] | None
            ) -> tuple[list[list[list[float]]], list[float], list[list[int]]]:
    """Every model's trials: ``times[model][trial]`` (ms per timed invoke). With a probe
    (``rts[0]``) also the probe's trial means in the order they were timed, ``samples``
    (means, not medians: see :func:`time_interleaved`), and for
    each other model and trial the index of the sample timed just before it, ``before``:
    the probe is timed at the start of every trial, again whenever
    :func:`probe_interval_s` passed since it was last timed (a trial of many large models),
    and once after the last trial, so every model's trial lies between two samples. On a
    slow device, where the interval is set by the probe's own trial (longer than
    :data:`PROBE_INTERVAL_S`), a trial's start skips the probe when it was timed less than
    the interval ago: its share of the timed work is then at most about 1 / (1 +
    :data:`PROBE_SPACING`), where one timing per trial cost the emulated Pi's digits build
    16% (a 26 ms probe beside 32 blocks of 0.3-22 ms, ``docs/benchmarks.md``)."""
    times: list[list[list[float]]] = [[] for _ in rts]
    samples: list[float] = []
    before: list[list[int]] = [[] for _ in rts]
    interval = PROBE_INTERVAL_S
    last = time.perf_counter()  # when the probe was last timed
    for _ in range(p.trials):
        for i, rt in enumerate(rts):
            t0 = time.perf_counter()
            if (p.probe and i == 0 and samples and interval > PROBE_INTERVAL_S
                    and t0 - last <= interval):
                continue  # a slow device: the probe is not due yet
            if p.probe and i > 0 and t0 - last > interval:
                samples.append(float(np.mean(_timed(rts[0], p))))
                last = time.perf_counter()
                interval = probe_interval_s(last - t0)
            times[i].append(_timed(rt, p))
            if p.probe and i == 0:
                samples.append(float(np.mean(times[0][-1])))
                last = time.perf_counter()
                interval = probe_interval_s(last - t0)
            before[i].append(len(samples) - 1)
            if progress is not None:
                progress()
    if p.probe:
        samples.append(float(np.mean(_timed(rts[0], p))))
    return times, samples, before


def probe_spread(trial_means: Sequence[float]) -> float:
    """How far the probe moved during a batch: its slowest trial mean over its fastest
    (1.0: it did not move)."""
    a = np.asarray(trial_means, dtype=np.float64)
    return float(a.max() / a.min()) if a.size and a.min() > 0 else float("inf")


def time_interleaved(rts: Sequence[Runtime], xs: Sequence[np.ndarray],
                     protocol: TimingProtocol | None = None,
                     progress: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Time several loaded models in rounds: trial ``t`` times every model (``warmup``
    untimed, then ``runs`` timed invokes) before trial ``t + 1`` starts.

    A machine whose speed drifts over minutes (a VM's neighbours, clocks) then shifts every
    model alike instead of whichever was timed in a slow minute, so the models' statistics
    (ms, one dict per model as :func:`time_invoke`) compare fairly. ``progress`` is called
    after each model's trial.

    With ``protocol.probe`` the first model is the reference probe: every dict also holds
    ``rel`` (the model's time in probe units: the median over trials of its trial mean
    over the mean of the probe's trial means timed just before and just after it, see
    :func:`_trials`; 1.0 for the probe; the units of every trial stay beside as
    ``trial_rel``, with ``steady``, see :func:`_probe_relative`) and the probe's dict holds
    ``trial_means`` (ms,
    every time the probe was timed, in order), ``spread`` (:func:`probe_spread`: the
    device's speed range during the batch), ``dropped`` (model trials left out of the
    medians, :func:`steady_trials`), ``retimed`` (how many times the batch was timed again
    because a model kept fewer than half its trials; the attempt whose worst model kept
    the most is kept) and ``share`` (the probe's part of the timed invokes' time, ~ retimes
    excluded).

    Why per trial: a model's trial is compared with the probe timed just before and just
    after it, so a change of the device's speed *between* trials cancels; only a trial
    during which the probe moved beyond ``protocol.probe_bound`` (the two timings around it
    differ by more) is unreliable, and it is dropped. A whole batch is timed again only when
    some model keeps fewer than half its trials (re-timing whenever the probe moved anywhere
    in a batch re-timed nearly every long batch on a drifting device, for the same accuracy:
    ``docs/benchmarks.md``).

    Why trial means: a device slowed by time-sharing (a VM's neighbours, a competing
    process, a board's other work) takes the core away in slices; a short invoke then runs
    either whole or not at all, so its *median* hardly moves while a longer one's does, and
    a ratio of medians changes with the models' sizes. The mean of a trial's invokes rises
    in proportion to the share of the core taken, whatever the invoke's length, as under a
    lower clock; the median over trials then drops the trials an outlier spoiled
    (``bench/drift.py`` measured both, ``docs/benchmarks.md``).

    Raises:
        ValueError: as many inputs as runtimes are needed; a probe needs a model.
    """
    p = protocol or TimingProtocol()
    if len(rts) != len(xs):
        raise TargetInputError(f"{len(rts)} runtimes but {len(xs)} inputs")
    if p.probe and not rts:
        raise TargetInputError("a probed batch needs the probe as its first model")
    for rt, x in zip(rts, xs):
        rt.set_input(x)
    if not p.probe:
        times = _trials(rts, p, progress)[0]
        return [stats_ms([v for trial in t for v in trial]) for t in times]
    (times, samples, before, steady), attempts = _steadiest(rts, p, progress)
    out = _probe_relative(times, samples, before, p.runs, steady)
    out[0].update(spread=probe_spread(samples), retimed=attempts,
                  dropped=int(sum((~k).sum() for k in steady[1:])))
    return out


def _steadiest(rts: Sequence[Runtime], p: TimingProtocol,
               progress: Callable[[], None] | None) -> tuple[tuple[Any, ...], int]:
    """The probed batch timed (:func:`_trials`) until every model keeps at least half its
    trials (:func:`steady_trials`), at most ``1 + p.retime`` times: the attempt whose worst
    model kept the most trials (then the smallest spread), with its steady masks, and how
    many times the batch was timed again."""
    best: tuple[tuple[int, float], tuple[Any, ...]] | None = None
    attempts = 0
    for attempts in range(1 + p.retime):  # noqa: B007 (read after)
        times, samples, before = _trials(rts, p, progress if attempts == 0 else None)
        steady = steady_trials(samples, before, p.probe_bound)
        kept = min((int(k.sum()) for k in steady[1:]), default=p.trials)
        score = (kept, -probe_spread(samples))
        if best is None or score > best[0]:
            best = (score, (times, samples, before, steady))
        if 2 * kept >= p.trials:
            break
    assert best is not None
    return best[1], attempts


def steady_trials(samples: Sequence[float], before: Sequence[Sequence[int]],
                  bound: float) -> list[np.ndarray]:
    """Per model (``before[i]``: the index of the probe sample timed just before each of its
    trials, :func:`_trials`), which trials the probe held still around: the sample before
    and the one after differ by at most ``bound`` (slower / faster). The probe's own row
    is all True."""
    s = np.asarray(samples, dtype=np.float64)
    out = [np.ones(len(before[0]), dtype=bool)] if before else []
    for b in before[1:]:
        k = np.asarray(b, dtype=np.int64)
        lo, hi = np.minimum(s[k], s[k + 1]), np.maximum(s[k], s[k + 1])
        out.append(hi <= bound * lo)
    return out


def _probe_relative(times: list[list[list[float]]], samples: list[float],
                    before: list[list[int]], runs: int,
                    steady: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Each model's statistics (ms) with ``rel``: per trial, its mean over the mean of
    the probe's trial means timed just before and after it, the median over its steady
    trials (``steady``, :func:`steady_trials`; all of them where none is steady;
    :func:`time_interleaved`); every trial's units and whether it was steady stay beside
    as ``trial_rel`` and ``steady`` (trial by trial, so that two models of the batch can be
    compared in the same trials: :func:`deploy.lut.measure.trial_pairs`). The probe's own
    dict (the first) gains ``rel`` 1.0,
    ``trial_means``, ``share`` (its part of the timed work) and ``timed_ms`` (that work,
    ms: the batch's weight in a build's share)."""
    out = []
    for i, (t, b) in enumerate(zip(times, before)):  # each trial against the probe around it
        st: dict[str, Any] = stats_ms([v for trial in t for v in trial])
        rels = np.array([np.mean(trial) * 2 / (samples[k] + samples[k + 1])
                         for trial, k in zip(t, b)])
        keep = steady[i] if steady is not None and steady[i].any() else slice(None)
        st["rel"] = float(np.median(rels[keep]))
        if i:
            st.update(trial_rel=rels.tolist(),
                      steady=(steady[i] if steady is not None
                              else np.ones(len(rels), dtype=bool)).tolist())
        out.append(st)
    models = sum(v for t in times[1:] for trial in t for v in trial)
    probe = sum(samples) * runs  # every probe timing: `runs` invokes of its sample's mean
    out[0].update(rel=1.0, trial_means=samples, share=probe / (models + probe),
                  timed_ms=models + probe)
    return out
