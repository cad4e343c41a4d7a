"""Calibration forms compared on measured tables: line, power law, power law + weights.

For each pair of a latency table and a validation report of it (``ofa lut validate --out``),
fits the calibration on the table's own calibration subnets (``calibration.fitted_on``)
three ways, the earlier straight line ``a * sum + b`` (relative error), the power law
``a * sum ** p`` and the power law with the weights term ``a * sum ** p + w * Mparams``
(:func:`deploy.lut.fit_calibration` with and without the subnets' parameters), and scores
them on the report's validation subnets (block sums and measurements as recorded, in the
table's unit, nothing measured again): share within ±10% / ±5%, RMSPE, Kendall tau, largest
error, the median error per third of the subnets by size, the correlation of the log errors
with the parameters, and the leave-one-out error on the calibration subnets. A last row per
table fits the weights form on the validation subnets themselves: the bound their own
measurement noise sets.

    python bench/calibration_fits.py                                 # the shipped tables
    python bench/calibration_fits.py --pair TABLE.json:REPORT.json   # any other (repeatable)

Writes ``bench/results/<--name>.json`` (default ``calibration_fits``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, run_facts, write_json  # noqa: E402

from deploy.lut import fit_calibration  # noqa: E402
from ofa.space import SearchSpace, SubnetConfig  # noqa: E402
from search.metrics import relative_error_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [(f"latency_tables/x86_64_mbv3-cifar_{n}_t1.json",
            f"bench/results/lut_validate_mbv3-cifar_{v}.json")
           for n, v in [("onnxruntime_fp32", "onnxruntime"), ("litert_fp32", "litert"),
                        ("onnxruntime_int8", "onnxruntime_int8"),
                        ("litert_int8", "litert_int8")]]


def _line(raw: np.ndarray, meas: np.ndarray, mparams: np.ndarray):
    a, b = np.polyfit(raw, meas, 1, w=1.0 / meas)  # the fit before 2026-11-26
    return lambda x, m: a * x + b


def _power(raw: np.ndarray, meas: np.ndarray, mparams: np.ndarray):
    c = fit_calibration(raw.tolist(), meas.tolist())
    return lambda x, m: c["a"] * x ** c["p"]


def _weights(raw: np.ndarray, meas: np.ndarray, mparams: np.ndarray):
    c = fit_calibration(raw.tolist(), meas.tolist(), mparams.tolist())
    return lambda x, m: c["a"] * x ** c["p"] + c["w"] * m


FITS = (("line a*sum+b", _line), ("power a*sum^p", _power),
        ("power+weights a*sum^p+w*Mparams", _weights))


def _score(name: str, fit, cal: tuple[np.ndarray, ...], val: tuple[np.ndarray, ...],
           loo: bool = True) -> dict:
    cal_raw, cal_meas, cal_m = cal
    raw, meas, mparams = val
    pred = fit(*cal)(raw, mparams)
    err = pred / meas - 1
    keep = [np.arange(len(cal_raw)) != i for i in range(len(cal_raw))] if loo else []
    left = [fit(cal_raw[k], cal_meas[k], cal_m[k])(cal_raw[i], cal_m[i]) / cal_meas[i] - 1
            for i, k in enumerate(keep)]
    thirds = np.array_split(np.argsort(raw), 3)
    rep = relative_error_report(pred, meas)
    return {"fit": name, "within_10pct": rep["within_10pct"],
            "within_5pct": rep["within_5pct"], "rmspe": round(rep["rmspe"], 2),
            "kendall_tau": round(rep["kendall_tau"], 3),
            "max_err_pct": round(float(np.abs(err).max()) * 100, 1),
            "median_err_by_size_pct": [round(float(np.median(err[t])) * 100, 1)
                                       for t in thirds],
            "err_vs_params_r": round(float(np.corrcoef(np.log(meas / pred), mparams)[0, 1]), 2),
            "loo_max_pct": round(float(np.max(np.abs(left))) * 100, 1) if left else None}


def _mparams(space: SearchSpace, rows: list[dict]) -> np.ndarray:
    return np.array([space.params(SubnetConfig.from_dict(r["config"])) / 1e6 for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", default=[],
                    help="TABLE.json:REPORT.json (default: the shipped tables)")
    ap.add_argument("--name", default="calibration_fits",
                    help="the result's name under bench/results/")
    args = ap.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pair] or [
        (str(ROOT / t), str(ROOT / r)) for t, r in SHIPPED]
    rows = []
    for tpath, rpath in pairs:
        t, rep = json.loads(Path(tpath).read_text()), json.loads(Path(rpath).read_text())
        space = SearchSpace.from_dict(t["space"])
        pts = t["calibration"]["fitted_on"]
        probe = "probe" in t  # a table in probe units: sums and measurements in them
        cal = (np.array([f.get("sum", f.get("sum_ms")) for f in pts]),
               np.array([f.get("measured", f.get("measured_ms")) for f in pts]),
               _mparams(space, pts))
        samples = rep["samples"]
        val = (np.array([s.get("raw", s.get("raw_ms")) for s in samples]),
               np.array([s["measured_rel"] if probe else s["measured_ms"] for s in samples]),
               _mparams(space, samples))
        c = t["context"]
        label = (f"{t['space']['preset']} @{','.join(map(str, t['resolutions']))} "
                 f"{c['runtime']} {c['precision']}"
                 f"{' (emulated Pi)' if (c.get('machine') or c['device']).get('emulated') else ''}"
                 f" [{Path(tpath).stem}]")
        for name, fit in FITS:
            rows.append({"table": label, "n": len(samples), **_score(name, fit, cal, val)})
        # what the same form reaches fitted on the validation subnets themselves: a bound
        # set by the measurements' own noise, not a calibration one could ship
        rows.append({"table": label, "n": len(samples), **_score(
            "power+weights fitted on these (bound)", _weights, val, val, loo=False)})
    print_table(rows)
    write_json(args.name, {**run_facts(), "rows": rows, "pairs": pairs})


if __name__ == "__main__":
    main()
