"""How reproducible a latency measurement is, per timing protocol (issue 15).

100 seeded random ``mbv3-cifar`` subnets at 32 px, exported once as ONNX int8 (QDQ, as ``ofa
export`` writes them), loaded, and timed twice back to back in interleaved trials with each
protocol: 3 trials of 10 warm-up + 50 timed invokes (the old default) and 10 trials of 3 + 15
(the default since; the same 150 timed and 30 untimed invokes). For each: the relative
standard deviation of one measurement (from the two repeats' log ratio), Kendall tau between
the repeats (how well a measurement can rank these subnets at all: the ceiling of any latency
model's tau on them) and the tau of the shipped x86 int8 table's raw block sum against each
repeat.

    python bench/timing_protocol.py     # ~12 min here; run it on a quiet machine

Writes ``bench/results/timing_protocol.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {"3 x (10 + 50)": (10, 50, 3), "10 x (3 + 15)": (3, 15, 10)}


def main() -> None:
    from deploy.formats import get_format
    from deploy.lut.convert import _export_subnets
    from deploy.lut.measure import _random_input
    from deploy.ontarget.runtimes import TimingProtocol, get_runtime, time_interleaved
    from ofa.space import get_space
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--work", default="runs/timing_protocol")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    space = get_space("mbv3-cifar")
    g = random.Random(1234)
    cfgs = [space.sample(g, r=32) for _ in range(args.n)]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = [work / f"s{i}.onnx" for i in range(len(cfgs))]
    if not all(p.exists() for p in paths):  # converted once, kept for a rerun
        paths = _export_subnets(space, cfgs, get_format("onnx-int8"), work, "export",
                                args.jobs)
    rts, xs = [], []
    for c, p in zip(cfgs, paths):
        rt = get_runtime("onnxruntime", 1)
        rt.load(str(p))
        rts.append(rt)
        xs.append(_random_input(rt, (1, 3, c.r, c.r)))
    table = LatencyTable.load(ROOT / "latency_tables"
                              / "x86_64_mbv3-cifar_onnxruntime_int8_t1.json")
    raw = LatencyPredictor(table, space, calibrated=False).predict_many(cfgs)
    rows, data = [], {}
    for name, (warmup, runs, trials) in PROTOCOLS.items():
        p = TimingProtocol(warmup, runs, trials)
        reps = [np.array([s["median"] for s in time_interleaved(rts, xs, p)]) for _ in range(2)]
        data[name] = [r.tolist() for r in reps]
        rows.append({"protocol": name, "timed_invokes": runs * trials,
                     "rel_sd_pct": 100 * float(np.std(np.log(reps[0] / reps[1]))) / np.sqrt(2),
                     "tau_repeat": float(kendalltau(reps[0], reps[1])[0]),
                     "tau_table_rep1": float(kendalltau(raw, reps[0])[0]),
                     "tau_table_rep2": float(kendalltau(raw, reps[1])[0]),
                     "median_ms": float(np.median(reps[0]))})
        print_table(rows[-1:])
    print_table(rows)
    write_json("timing_protocol", {"rows": rows, "n": args.n, "medians_ms": data,
                                   "table": table.describe()})


if __name__ == "__main__":
    main()
