"""An Android phone over adb: TFLite's ``benchmark_model`` (a user-supplied binary for the
phone's ABI) pushed to ``/data/local/tmp`` and its output parsed. Torch-free."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from deploy.targets.base import OneBatchAtATime, TargetError

__all__ = ["AdbTarget", "parse_benchmark_model"]


_TIMINGS = re.compile(r"count=(\d+) first=(\S+) curr=(\S+) min=(\S+) max=(\S+) avg=(\S+) "
                      r"std=(\S+)(?: p5=(\S+) median=(\S+) p95=(\S+))?")
_SUMMARY = re.compile(r"Inference timings in us: Init: (\S+), First inference: (\S+), "
                      r"Warmup \(avg\): (\S+), Inference \(avg\): (\S+)")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Parse TFLite ``benchmark_model`` output into the agent's schema (ms).

    Uses the last ``count=... first=... avg=... std=...`` line (the timed runs, after the
    warm-up line) and the ``Inference timings in us`` summary.

    Raises:
        TargetError: no timing lines in ``text``.
    """
    rows = _TIMINGS.findall(text)
    summary = _SUMMARY.search(text)
    if not rows or not summary:
        tail = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise TargetError(f"benchmark_model printed no timings (last line: {tail})")
    count, first, _, lo, hi, avg, std, p5, median, p95 = rows[-1]
    init, first_inf, warm, inf = (float(v) for v in summary.groups())
    med = float(median) if median else float(avg)
    lat = {"median": med / 1e3, "mean": float(avg) / 1e3, "std": float(std) / 1e3,
           "min": float(lo) / 1e3, "max": float(hi) / 1e3, "count": int(count),
           "p90": None}
    if p95:
        lat["p95"] = float(p95) / 1e3
    return {"latency_ms": lat, "median": lat["median"], "p90": None, "min": lat["min"],
            "runs": int(count), "inference_avg_ms": inf / 1e3, "init_ms": init / 1e3,
            "first_inference_ms": first_inf / 1e3, "warmup_avg_ms": warm / 1e3}


class AdbTarget(OneBatchAtATime):
    """An Android phone: TFLite ``benchmark_model`` (user-supplied binary) over adb."""

    remote = "/data/local/tmp/ofa-edge"

    def __init__(self, serial: str | None = None, benchmark_binary: str | None = None,
                 xnnpack: bool = True, adb: str = "adb") -> None:
        self.serial, self.binary, self.xnnpack, self.adb = serial, benchmark_binary, xnnpack, adb
        self.name = f"adb:{serial}" if serial else "adb"
        self._binary_pushed = False  # once a session, not once a model (a table: hundreds)
        self._pushed: dict[str, tuple] = {}  # remote name -> (file, size, mtime) pushed there

    def _adb(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [self.adb, *(["-s", self.serial] if self.serial else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise TargetError("adb not found: install Android platform-tools and put adb on "
                              "PATH") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[-1]
            if "no devices" in msg or "not found" in msg or "unauthorized" in msg:
                raise TargetError(f"{self.name}: {msg} (check `adb devices` and authorise "
                                  "USB debugging)")
            raise TargetError(f"{self.name}: adb {args[0]} failed: {msg}")
        return proc

    def check(self) -> None:
        """A benchmark binary is given and the phone answers ``adb get-state``.

        Raises:
            TargetError: no binary, adb missing, no (authorised) device.
        """
        if not self.binary or not Path(self.binary).is_file():
            raise TargetError("adb target needs --benchmark-binary PATH: the TFLite "
                              "benchmark_model for the phone's ABI (android_aarch64)")
        self._adb("get-state")

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        protocol = protocol or TimingProtocol()
        model = Path(model)
        if model.suffix != ".tflite":
            raise TargetError(f"{self.name}: benchmark_model runs .tflite models, not {model}")
        if not model.is_file():
            raise TargetError(f"model file {model} does not exist")
        if not self.binary or not Path(self.binary).is_file():
            raise TargetError("adb target needs --benchmark-binary PATH: the TFLite "
                              "benchmark_model for the phone's ABI (android_aarch64)")
        if not self._binary_pushed:
            self._adb("shell", "mkdir", "-p", self.remote)
            self._adb("push", self.binary, f"{self.remote}/benchmark_model")
            self._adb("shell", "chmod", "755", f"{self.remote}/benchmark_model")
            self._binary_pushed = True
        st = model.stat()
        # named by its path here too: bundles' files are all model.tflite, and a model timed
        # again (the final measurement's repeats) is not pushed again
        name = hashlib.sha1(str(model.resolve()).encode()).hexdigest()[:8] + "-" + model.name
        if self._pushed.get(name) != (str(model), st.st_size, st.st_mtime_ns):
            self._adb("push", str(model), f"{self.remote}/{name}")
            self._pushed[name] = (str(model), st.st_size, st.st_mtime_ns)
        proc = self._adb("shell", f"{self.remote}/benchmark_model",
                         f"--graph={self.remote}/{name}", f"--num_threads={threads}",
                         f"--use_xnnpack={'true' if self.xnnpack else 'false'}",
                         f"--warmup_runs={protocol.warmup}",
                         f"--num_runs={protocol.runs * protocol.trials}")
        res = parse_benchmark_model(proc.stdout + proc.stderr)
        res.update({"schema": "ofa-edge-agent", "version": 1, "model": model.name,
                    "model_bytes": model.stat().st_size, "runtime": "tflite benchmark_model",
                    "backend": "XNNPACK" if self.xnnpack else "CPU", "threads": threads,
                    "warmup": protocol.warmup, "trials": 1, "target": self.name,
                    "machine": {"name": self.name}})
        return res

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """One ``benchmark_model`` run per model (it times one graph per process).

        With ``protocol.probe`` the first model is the reference probe (``deploy/probe.py``),
        which cannot share trials with the others here: it is timed before the first model
        and after every model, each model's ``rel`` is its median over the mean of the
        probe's medians just before and after it, and a model whose two probes differ by
        more than ``protocol.probe_bound`` is timed again (up to ``protocol.retime`` times,
        keeping the steadiest). The probe's row carries ``trial_means`` (every probe
        timing), ``spread`` and ``retimed``, as the agent's."""
        protocol = protocol or TimingProtocol()
        if not protocol.probe:
            return [self.bench(m, threads, protocol) for m in models]
        probe, *rest = models
        first = self.bench(probe, threads, protocol)
        samples = [first["latency_ms"]["median"]]
        rows, retimed = [], 0
        for m in rest:
            best = None
            for attempt in range(1 + protocol.retime):
                row = self.bench(m, threads, protocol)
                after = self.bench(probe, threads, protocol)["latency_ms"]["median"]
                spread = max(samples[-1], after) / min(samples[-1], after)
                if best is None or spread < best[0]:
                    best = (spread, row, samples[-1], after)
                samples.append(after)
                retimed += attempt > 0
                if spread <= protocol.probe_bound:
                    break
            assert best is not None
            _, row, before, after = best
            row["latency_ms"]["rel"] = row["latency_ms"]["median"] * 2 / (before + after)
            rows.append(row)
        lat = first["latency_ms"]
        a = sorted(samples)
        lat.update(rel=1.0, median=a[len(a) // 2], mean=sum(a) / len(a), trial_means=samples,
                   spread=max(samples) / min(samples), retimed=retimed)
        return [first, *rows]

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """None per model: ``benchmark_model`` times a graph and checks no accuracy (the
        exported file's top-1 on this machine is in its bundle, ``deploy/bundle.py``)."""
        return [None] * len(models)

    def start(self, runtime: str) -> None:
        """Nothing to start: ``benchmark_model`` runs once per model."""
