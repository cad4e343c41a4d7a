"""How far one validation's measurements agree with themselves: test-retest of a table.

``ofa lut validate`` measures N seeded random subnets; run it twice on one table with the
same seed (the same subnets) and this script compares the two reports: the Kendall tau and
RMS log difference between the two measurements of each subnet (what the device's own
timing noise allows any predictor), and each report's tau against the table's predictions.
A prediction cannot rank the subnets better than the device repeats its own order.

    ofa lut validate T.json -n 100 --repeats 3 --out a.json --json   # the same command twice
    ofa lut validate T.json -n 100 --repeats 3 --out b.json --json
    python bench/validation_retest.py a.json b.json --name validation_retest_cifar

Writes ``bench/results/<--name>.json`` (with the date, commit and machine) and prints the
table. Reports in probe units compare ``measured_rel``, others ``measured_ms``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, run_facts, write_json  # noqa: E402

from search.metrics import relative_error_report  # noqa: E402


def _measured(report: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    key = "measured_rel" if report.get("unit") == "probe" else "measured_ms"
    pred = "calibrated" if key == "measured_rel" else "calibrated_ms"
    s = report["samples"]
    return ([json.dumps(x["config"], sort_keys=True) for x in s],
            np.array([x[key] for x in s]), np.array([x[pred] for x in s]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", help="a validation report (ofa lut validate --out)")
    ap.add_argument("second", help="another of the same table and subnets")
    ap.add_argument("--name", default="validation_retest",
                    help="the result's name under bench/results/")
    a = ap.parse_args()
    r1, r2 = (json.loads(Path(p).read_text()) for p in (a.first, a.second))
    k1, m1, p1 = _measured(r1)
    k2, m2, p2 = _measured(r2)
    if k1 != k2:
        print("validation_retest: the two reports measured different subnets (use the same "
              "table, -n and --seed)", file=sys.stderr)
        return 2
    retest = relative_error_report(m2, m1)  # the second measurement as a "prediction"
    rows = [{"compared": "second measurement vs first", "n": len(m1),
             "within_10pct": retest["within_10pct"], "within_5pct": retest["within_5pct"],
             "rmspe": round(retest["rmspe"], 2), "kendall_tau": round(retest["kendall_tau"], 3)}]
    for name, m, p in (("table vs first", m1, p1), ("table vs second", m2, p2),
                       ("table vs mean of both", np.sqrt(m1 * m2), p1)):
        e = relative_error_report(p, m)
        rows.append({"compared": name, "n": len(m), "within_10pct": e["within_10pct"],
                     "within_5pct": e["within_5pct"], "rmspe": round(e["rmspe"], 2),
                     "kendall_tau": round(e["kendall_tau"], 3)})
    print_table(rows)
    write_json(a.name, {**run_facts(), "reports": [a.first, a.second],
                        "table": r1.get("table"), "rows": rows,
                        "spread_log_sd": round(float(np.std(np.log(m1))), 4)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
