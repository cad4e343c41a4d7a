"""How steady is one batch of the final measurement, and which estimator of probe units is?

``ofa run``'s last step (``deploy/validate.py``) times the chosen subnets' exported models
beside the reference probe. Under the drift harness it once timed one model and its identical
copy, in the same interleaved trials, 6.7 and 8.2 probe units apart, and in another run put
all three subnets 10-25% slower than the measured-budget step had a minute before
(``docs/benchmarks.md``). This script takes a finished run folder whose final measurement
timed three subnets (``validation.json``, ``models/``), loads those models (one network
twice if the run chose it for two budgets), and the same configs exported with periodic
weights (as a table's calibration and the measured budget time them), and times them in
``--reps`` batches of
interleaved trials per case: harness off and on (``bench/drift.py``), 15 or 30 timed invokes
per trial, the probe timed with the models' invokes or 4x as many. For every batch it keeps
the raw trials and compares four estimators of a model's probe units:

- ``median_ratio``: the median over trials of (trial mean / mean of the probe's trial means
  just before and after), what ``deploy/ontarget/runtimes.py`` computes;
- ``ratio_of_sums``: the sum of the trial means over the sum of those probe means;
- ``global``: the mean trial mean over the mean of every probe sample of the batch;
- ``trimmed``: the mean of the per-trial ratios between their 20th and 80th percentiles.

Reported per case and estimator: the relative s.d. of a model's value between batches (mean
over the models), the mean difference between a model and its identical copy in the same
batch, and between the trained model and its periodic-weight export.

    python bench/final_measurement.py --run RUN_FOLDER [--reps 8] [--core 0]

Writes ``bench/results/final_measurement.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import print_table, run_facts, write_json  # noqa: E402

CASES = ((15, 1), (30, 1), (15, 4), (30, 4))  # (timed invokes per trial, probe's multiple)


def _models(run: Path, work: Path) -> tuple[list[str], list[str]]:
    """The run's final models (trained weights), then its first two configs with periodic
    weights; their names."""
    from deploy.formats import get_format
    from deploy.lut.convert import _export_subnets
    from ofa.space import SearchSpace, SubnetConfig

    v = json.loads((run / "validation.json").read_text())["subnets"]
    space = SearchSpace.from_dict(json.loads((run / "latency_table.json").read_text())["space"])
    cfgs = [SubnetConfig.from_dict(r["config"]) for r in v[:2]]
    periodic = _export_subnets(space, cfgs, get_format("onnx-fp32"), work, "periodic", 1)
    names = [f"{r['label']} trained" for r in v] + [f"{r['label']} periodic" for r in v[:2]]
    return [r["model"] for r in v] + [str(p) for p in periodic], names


def _batch(rts: list, runs: int, probe_mult: int) -> dict:
    """One batch of 10 interleaved trials (3 warm-up + ``runs`` invokes per model), the
    probe first in every trial, between models once 50 ms passed, and after the last."""
    from deploy.ontarget.runtimes import PROBE_INTERVAL_S, TimingProtocol, _timed

    p = TimingProtocol(3, runs, 10)
    pp = TimingProtocol(3, runs * probe_mult, 10)
    times: list[list[float]] = [[] for _ in rts[1:]]
    samples: list[float] = []
    before: list[list[int]] = [[] for _ in rts[1:]]
    for _ in range(p.trials):
        samples.append(float(np.mean(_timed(rts[0], pp))))
        last = time.perf_counter()
        for i, rt in enumerate(rts[1:]):
            if time.perf_counter() - last > PROBE_INTERVAL_S:
                samples.append(float(np.mean(_timed(rts[0], pp))))
                last = time.perf_counter()
            times[i].append(float(np.mean(_timed(rt, p))))
            before[i].append(len(samples) - 1)
    samples.append(float(np.mean(_timed(rts[0], pp))))
    return {"trial_means": times, "probe": samples, "before": before}


def estimates(batch: dict) -> dict[str, list[float]]:
    """Each model's probe units from one batch, by each estimator (module docstring)."""
    s = np.asarray(batch["probe"])
    out: dict[str, list[float]] = {"median_ratio": [], "ratio_of_sums": [], "global": [],
                                   "trimmed": []}
    for m, b in zip(batch["trial_means"], batch["before"]):
        m, b = np.asarray(m), np.asarray(b)
        around = (s[b] + s[b + 1]) / 2
        q = m / around
        lo, hi = np.percentile(q, [20, 80])
        out["median_ratio"].append(float(np.median(q)))
        out["ratio_of_sums"].append(float(m.sum() / around.sum()))
        out["global"].append(float(m.mean() / s.mean()))
        out["trimmed"].append(float(q[(q >= lo) & (q <= hi)].mean()))
    return out


def summarise(batches: list[dict], same: tuple[int, int] | None) -> list[dict]:
    """Per estimator: between-batch relative s.d. (mean over models, %), |copy / model - 1|
    (%, when the run timed one model twice), |trained / periodic - 1| of the first model."""
    rows = []
    for est in ("median_ratio", "ratio_of_sums", "global", "trimmed"):
        v = np.array([estimates(b)[est] for b in batches])  # batches x models
        row = {"estimator": est, "between_batches_sd_pct": float((v.std(0) / v.mean(0)).mean()
                                                                  * 100)}
        if same:
            row["copy_diff_pct"] = float(np.abs(v[:, same[1]] / v[:, same[0]] - 1).mean() * 100)
        n = v.shape[1]
        row["trained_vs_periodic_pct"] = float(np.abs(v[:, 0] / v[:, n - 2] - 1).mean() * 100)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="an ofa run folder (validation.json, models/)")
    ap.add_argument("--reps", type=int, default=8, help="batches per case (2-100)")
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--work", default="/tmp/ofa-final-measurement")
    a = ap.parse_args()
    if not 2 <= a.reps <= 100:
        ap.error(f"--reps must be in 2-100, got {a.reps}")
    from drift import harness

    from deploy.ontarget.runtimes import get_runtime
    from deploy.probe import load_probe

    os.sched_setaffinity(0, {a.core})
    paths, names = _models(Path(a.run), Path(a.work))
    v = json.loads((Path(a.run) / "validation.json").read_text())["subnets"]
    nets = [r["summary"] for r in v]  # the active network (configs may differ in unused genes)
    same = next(((i, j) for i in range(len(nets)) for j in range(i + 1, len(nets))
                 if nets[i] == nets[j]), None)
    prt, px = load_probe("onnxruntime", 1, "fp32")
    rts, xs = [prt], [px]
    for p in paths:
        rt = get_runtime("onnxruntime", 1)
        rt.load(p)
        rts.append(rt)
        xs.append(rt.prepare(np.random.default_rng(0).standard_normal(rt.input_shape)
                             .astype(np.float32)))
    for rt, x in zip(rts, xs):
        rt.set_input(x)
    table, raw = [], []
    for on in (False, True):
        with harness(1.5 if on else 1.0, a.core, 11, 4.0) as info:
            for runs, mult in CASES:
                batches = [_batch(rts, runs, mult) for _ in range(a.reps)]
                raw.append({"harness": on, "runs": runs, "probe_mult": mult,
                            "batches": batches})
                for row in summarise(batches, same):
                    table.append({"harness": "on" if on else "off", "runs": runs,
                                  "probe_x": mult, **row})
                print(f"harness {'on' if on else 'off'}, {runs} runs, probe x{mult}: done",
                      flush=True)
        harness_info = info
    print_table(table)
    write_json("final_measurement", {**run_facts(), "run": a.run, "models": names,
                                     "same_model": same, "harness": harness_info,
                                     "rows": table, "raw": raw})


if __name__ == "__main__":
    main()
