"""Calibration forms compared on measured tables: straight line vs power law (issue 15).

For each pair of a latency table and a validation report of it (``ofa lut validate --out``),
fits the calibration on the table's own calibration subnets (``calibration.fitted_on``) two
ways, the earlier straight line ``a * sum + b`` (relative error) and the power law
``a * sum ** p`` of :func:`deploy.lut.fit_calibration`, and scores both on the report's
validation subnets (block sums and measured ms as recorded, nothing measured again): share
within ±10% / ±5%, RMSPE, Kendall tau, largest error, and the median error per third of the
subnets by size. Also the leave-one-out error on the calibration subnets.

    python bench/calibration_fits.py                                 # the shipped tables
    python bench/calibration_fits.py --pair TABLE.json:REPORT.json   # any other (repeatable)

Writes ``bench/results/calibration_fits.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

from deploy.lut import fit_calibration  # noqa: E402
from search.metrics import relative_error_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [(f"latency_tables/x86_64_mbv3-cifar_{n}_t1.json",
            f"bench/results/lut_validate_mbv3-cifar_{v}.json")
           for n, v in [("onnxruntime_fp32", "onnxruntime"), ("litert_fp32", "litert"),
                        ("onnxruntime_int8", "onnxruntime_int8"),
                        ("litert_int8", "litert_int8")]]


def _line(raw: np.ndarray, meas: np.ndarray):
    a, b = np.polyfit(raw, meas, 1, w=1.0 / meas)  # the fit before 2026-11-26
    return lambda x: a * x + b


def _power(raw: np.ndarray, meas: np.ndarray):
    c = fit_calibration(raw.tolist(), meas.tolist())
    return lambda x: c["a"] * x ** c["p"]


def _score(name: str, fit, cal_raw, cal_meas, raw, meas) -> dict:
    pred = fit(cal_raw, cal_meas)(raw)
    err = pred / meas - 1
    loo = [fit(np.delete(cal_raw, i), np.delete(cal_meas, i))(cal_raw[i]) / cal_meas[i] - 1
           for i in range(len(cal_raw))]
    thirds = np.array_split(np.argsort(raw), 3)
    rep = relative_error_report(pred, meas)
    return {"fit": name, "within_10pct": rep["within_10pct"],
            "within_5pct": rep["within_5pct"], "rmspe": round(rep["rmspe"], 2),
            "kendall_tau": round(rep["kendall_tau"], 3),
            "max_err_pct": round(float(np.abs(err).max()) * 100, 1),
            "median_err_by_size_pct": [round(float(np.median(err[t])) * 100, 1)
                                       for t in thirds],
            "loo_max_pct": round(float(np.max(np.abs(loo))) * 100, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", default=[],
                    help="TABLE.json:REPORT.json (default: the shipped tables)")
    args = ap.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pair] or [
        (str(ROOT / t), str(ROOT / r)) for t, r in SHIPPED]
    rows = []
    for tpath, rpath in pairs:
        t, rep = json.loads(Path(tpath).read_text()), json.loads(Path(rpath).read_text())
        pts = t["calibration"]["fitted_on"]
        cal_raw = np.array([f["sum_ms"] for f in pts])
        cal_meas = np.array([f["measured_ms"] for f in pts])
        raw = np.array([s["raw_ms"] for s in rep["samples"]])
        meas = np.array([s["measured_ms"] for s in rep["samples"]])
        c = t["context"]
        label = (f"{t['space']['preset']} @{','.join(map(str, t['resolutions']))} "
                 f"{c['runtime']} {c['precision']}"
                 f"{' (emulated Pi)' if (c.get('machine') or c['device']).get('emulated') else ''}")
        for name, fit in (("line a*sum+b", _line), ("power a*sum^p", _power)):
            rows.append({"table": label, "n": len(meas),
                         **_score(name, fit, cal_raw, cal_meas, raw, meas)})
    print_table(rows)
    write_json("calibration_fits", {"rows": rows, "pairs": pairs})


if __name__ == "__main__":
    main()
