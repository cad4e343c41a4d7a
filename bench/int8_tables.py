"""int8 latency tables on this machine: build time and validation, per runtime (issue 15).

For each runtime (ONNX Runtime QDQ, LiteRT full-integer), builds an int8 table of
``mbv3-cifar`` at 32 px (``ofa lut build --precision int8``: every block shape converted once
and timed, 12 calibration subnets converted by ``--jobs`` processes) and validates it on 100
random subnets (``ofa lut validate``): share within ±10% / ±5%, RMSPE and Kendall tau of the
calibrated prediction. Beside each, the fp32 figure of the same runtime for the int8 / fp32
speed ratio of the largest and smallest subnets. Resumable: a finished table or validation in
``--work`` is kept.

    python bench/int8_tables.py                         # both runtimes (~45 min here)
    python bench/int8_tables.py --runtimes onnxruntime  # ~5 min

Writes ``bench/results/int8_tables.json`` and prints the table. Run it on a quiet machine: the
timings of a busy one are not the subnets'.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402


def _ofa(*args: str) -> float:
    """Run ``ofa ARGS`` (progress to the terminal); wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ofa.cli", *args], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", default="onnxruntime,litert")
    ap.add_argument("--work", default="runs/int8_tables")
    ap.add_argument("-n", type=int, default=100, help="validation subnets")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, times_path = [], work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for rt in args.runtimes.split(","):
        table, rep = work / f"mbv3-cifar_{rt}_int8_t1.json", work / f"validate_{rt}.json"
        if not table.exists():
            times[f"{rt}_build_s"] = _ofa("lut", "build", "--space", "mbv3-cifar",
                                          "--resolutions", "32", "--runtime", rt,
                                          "--precision", "int8", "--calib", "10",
                                          "--jobs", str(args.jobs), "--out", str(table))
            times_path.write_text(json.dumps(times))
        if not rep.exists():
            times[f"{rt}_validate_s"] = _ofa("lut", "validate", str(table), "-n", str(args.n),
                                             "--jobs", str(args.jobs), "--out", str(rep),
                                             "--plot", str(work / f"validate_{rt}.png"))
            times_path.write_text(json.dumps(times))
        r = json.loads(rep.read_text())
        cal = r["calibrated"]
        t = json.loads(table.read_text())
        rows.append({"runtime": rt, "precision": "int8",
                     "blocks": sum(len(g) for g in t["entries"].values()),
                     "build_min": round(times.get(f"{rt}_build_s", float("nan")) / 60, 1),
                     "validate_min": round(times.get(f"{rt}_validate_s", float("nan")) / 60, 1),
                     "within_10pct": cal["within_10pct"], "within_5pct": cal["within_5pct"],
                     "rmspe": cal["rmspe"], "kendall_tau": cal["kendall_tau"],
                     "raw_within_10pct": r["raw"]["within_10pct"],
                     "a": t["calibration"]["a"], "p": t["calibration"].get("p", 1.0),
                     "b_ms": t["calibration"]["b"],
                     "median_measured_ms": sorted(s["measured_ms"] for s in r["samples"])[
                         len(r["samples"]) // 2]})
    print_table(rows)
    write_json("int8_tables", {"rows": rows, "work": str(work), "times_s": times})


if __name__ == "__main__":
    main()
