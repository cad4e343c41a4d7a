"""Bring a table's measurements to its reference state batch by batch, or trial by trial?

Times the ``-n`` random subnets that ``ofa lut validate`` draws for a table (seed 1234)
beside the probe and the table's reference subnet, ``--passes`` times one after the other,
as a validation does (``deploy.lut.measure._measure_configs``: batches of 16, interleaved
trials), under the drift harness (``bench/drift.py``, ``--factor``; 1: none), on core
``--core``. Each pass keeps every subnet's probe units as timed, the reference's in its batch
and both trial by trial (``pairs``, ``deploy.lut.measure.trial_pairs``). The subnets are then
brought to the table's reference state (``calibration.reference``, with its weight) three
ways and scored against the table's calibrated predictions:

- ``batch``: each pass's units times ``(state / the reference's units in the batch) **
  weight``, the median over the first three passes (the form before trial pairs);
- ``trial``: the same trial by trial in each pass (``paired_at_reference``), the median over
  the first three passes;
- ``pooled``: trial by trial over the trials of the first three passes pooled (what
  ``deploy.lut.measure.at_reference`` does with a repeated measurement's ``pairs``).

Also each way's test-retest: passes 1-2 against passes 3-4, combined the same way (Kendall
tau and RMSPE between two measurements: what limits any table's score).

    python bench/trial_pairs.py --table T.json --factor 1.5 --passes 4 --name trial_pairs_on

Prints a table and writes ``bench/results/<name>.json`` (date, commit, machine); ``--work``
keeps each pass, so a stopped run continues with the passes it lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import print_table, run_facts, write_json  # noqa: E402


def timed_passes(a: argparse.Namespace, work: Path) -> list[dict]:
    """``a.passes`` measurements of the validation's subnets (kept in ``work``)."""
    from bench.drift import harness
    from deploy.lut.measure import _measure_configs, table_reference
    from deploy.ontarget.runtimes import TimingProtocol
    from ofa.space import SearchSpace
    from search.latency_table import LatencyTable

    table = LatencyTable.load(a.table)
    space = SearchSpace.from_dict(table.space)
    g = random.Random(1234)
    cfgs = [space.sample(g, r=g.choice(table.resolutions)) for _ in range(a.n)]
    ref = table_reference(table, space)
    protocol = TimingProtocol.from_fields(table.protocol)
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    done = sorted(work.glob("pass*.json"))
    out = [json.loads(p.read_text()) for p in done]
    if len(out) >= a.passes:
        return out[:a.passes]
    os.sched_setaffinity(0, {a.core})
    with harness(a.factor, a.core, a.seed) as info:
        for i in range(len(out), a.passes):
            m = _measure_configs(space, cfgs, table.context["runtime"],
                                 int(table.context["threads"]), protocol, f"pass {i}",
                                 precision=table.context.get("precision", "fp32"),
                                 models=models, reference=ref)
            m["harness"] = info
            (work / f"pass{i}.json").write_text(json.dumps(m))
            out.append(m)
            print(f"pass {i} done", flush=True)
    return out


def combined(passes: list[dict], way: str, state: float, weight: float) -> np.ndarray:
    """The subnets' units at the reference state from ``passes`` combined ``way``, by
    ``deploy.lut.at_reference`` itself (its batch form where it is given no pairs)."""
    from deploy.lut import at_reference

    if way == "pooled":
        n = len(passes[0]["rel"])
        pooled = {**passes[0], "pairs": [[p for m in passes for p in m["pairs"][i]]
                                         for i in range(n)]}
        return np.asarray(at_reference(pooled, state, weight))
    each = [at_reference(m if way == "trial" else {k: m[k] for k in ("rel", "reference_rel")},
                         state, weight) for m in passes]
    return np.median(np.array(each), axis=0)


def scores(a: np.ndarray, b: np.ndarray) -> dict:
    """``a`` against ``b``: within ±5/±10%, RMSPE (%), Kendall tau
    (``search.metrics.relative_error_report``)."""
    from search.metrics import relative_error_report

    return {k: round(v, 3) for k, v in relative_error_report(a, b).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", required=True, help="a table with probe data and a reference")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--passes", type=int, default=4, help="at least 4")
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--work", default="/tmp/ofa-trial-pairs")
    ap.add_argument("--name", default="trial_pairs")
    a = ap.parse_args()
    if a.passes < 4 or not 4 <= a.n <= 1000 or not 1.0 <= a.factor <= 4.0:
        ap.error("--passes needs at least 4, -n 4-1000, --factor 1-4")
    from ofa.space import SearchSpace
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    table = LatencyTable.load(a.table)
    if not table.reference.get("rel"):
        ap.error(f"{a.table}: the table records no reference state (calibrate it first)")
    passes = timed_passes(a, Path(a.work))
    space = SearchSpace.from_dict(table.space)
    g = random.Random(1234)
    cfgs = [space.sample(g, r=g.choice(table.resolutions)) for _ in range(a.n)]
    pred = np.asarray(LatencyPredictor(table, space, calibrated=True).units_many(cfgs))
    state, weight = float(table.reference["rel"]), float(table.reference_weight)
    rows = []
    for way in ("batch", "trial", "pooled"):
        rows.append({"way": way, **{f"table_{k}": v for k, v in
                                    scores(pred, combined(passes[:3], way, state,
                                                          weight)).items()},
                     **{f"retest_{k}": v for k, v in
                        scores(combined(passes[2:4], way, state, weight),
                               combined(passes[:2], way, state, weight)).items()}})
    print_table([{k: r[k] for k in ("way", "table_within_10pct", "table_rmspe",
                                    "table_kendall_tau", "retest_rmspe",
                                    "retest_kendall_tau")} for r in rows])
    write_json(a.name, {**run_facts(), "args": vars(a), "table": a.table,
                        "reference": {"state": state, "weight": weight},
                        "harness": passes[0].get("harness"),
                        "probe_range": float(max(v for m in passes for v in m["probe_ms"])
                                             / min(v for m in passes for v in m["probe_ms"])),
                        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
