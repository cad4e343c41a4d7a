"""Where a latency-table build on a device spends its time (issue 15): the emulated Pi.

Builds the ``mbv3-digits`` table at 12 px (96 blocks, onnxruntime, the default protocol: 10
trials of 3 warm-up + 15 timed invokes per block, no calibration) on an SSH target with ``ofa
lut build --target ... --batch B`` for each ``--batches`` value, and reads the table's
``build`` record: the wall time of the device loop, the session start the loop waited for
(login, agent start, runtime import; once per build, begun in the background when the
command starts), the device waiting for the host's export, model loading on the device (all
of it, and the part not hidden behind the timing of the batch before: with prefetching, the
default, a second agent process loads batch i+1 while the first times batch i), the agent's
timed trials (warm-up included) and the rest (requests and answers going over).
Overhead = (loop wall - timed trials) / timed trials; the issue's target is <= 10%.
``--prefetch on,off`` builds each table both ways, and compares their entries (the median
ratio of off to on, and Kendall's tau): the loading beside the timing must not change what is
timed. Each finished table in ``--work`` is kept (a rerun skips it).

    python tools/emulated_pi.py start
    python bench/device_overhead.py $(python tools/emulated_pi.py args)

Writes ``bench/results/device_overhead.json`` (``--name``) and prints the table. Under
emulation the times measure the emulator, not a Pi: this is a test of the method's overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_ssh_target_args, print_table, write_json  # noqa: E402


@cache  # the same 97 exports for every batch size
def _model_bytes(space_name: str, r: int, precision: str) -> tuple[int, int]:
    """Bytes of the 96 exported block models (and the overhead model) a build sends: as
    files, and zlib-compressed as the SSH target sends them."""
    import tempfile
    import zlib

    from deploy.formats import format_for
    from deploy.lut.convert import _export, _export_block, _Overhead
    from ofa.space import get_space

    space = get_space(space_name, resolutions=[r])
    fmt = format_for("onnxruntime", precision)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [_export(_Overhead(), (1, 8, 1, 1), fmt, Path(tmp) / "overhead.onnx")]
        paths += [Path(_export_block(s, fmt, f"{tmp}/b{j}.onnx"))
                  for j, s in enumerate(space.all_block_shapes([r]))]
        data = [p.read_bytes() for p in paths]
        return sum(map(len, data)), sum(len(zlib.compress(d)) for d in data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ssh_target_args(ap)
    ap.add_argument("--batches", default="32,96")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--tables", default="mbv3-digits@12",
                    help="space@resolution, comma-separated (e.g. mbv3-digits@12,mbv3-cifar@32)")
    ap.add_argument("--only", help="extra runs as space@res:precision:batch, comma-separated "
                    "(e.g. mbv3-cifar@32:int8:32)")
    ap.add_argument("--prefetch", default="on", help="on, off or on,off (both, compared)")
    ap.add_argument("--work", default="runs/device_overhead")
    ap.add_argument("--name", default="device_overhead",
                    help="results file: bench/results/NAME.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    login = ["--target", args.target, "--python", args.python]
    login += ["--identity", args.identity] if args.identity else []
    login += ["--known-hosts", args.known_hosts] if args.known_hosts else []
    rows = []
    modes = args.prefetch.split(",")
    if not set(modes) <= {"on", "off"}:
        ap.error("--prefetch: on, off or on,off")
    runs = [(t, p, int(b), m) for t in args.tables.split(",")
            for p in args.precisions.split(",") for b in args.batches.split(",") for m in modes]
    for extra in (args.only.split(",") if args.only else []):
        t, p, b = extra.split(":")
        runs += [(t, p, int(b), m) for m in modes]
    tables = {}
    for table, precision, b, mode in runs:
        space_name, r = table.split("@")
        tag = "" if mode == "on" else "_noprefetch"
        out = work / f"{space_name.removeprefix('mbv3-')}{r}_{precision}_batch{b}{tag}.json"
        side = out.with_suffix(".command.json")  # the command's wall time, kept for reruns
        wall = json.loads(side.read_text())["command_s"] if side.exists() else None
        if not out.exists():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ofa.cli", "lut", "build", "--space",
                            space_name, "--resolutions", r, "--runtime", "onnxruntime",
                            "--precision", precision, "--calib", "0", "--batch", str(b),
                            "--out", str(out), *login,
                            *(["--no-prefetch"] if mode == "off" else [])], check=True)
            wall = time.perf_counter() - t0
            side.write_text(json.dumps({"command_s": wall}))
        t = json.loads(out.read_text())
        tables[(table, precision, b, mode)] = t["entries"][r]
        raw, packed = _model_bytes(space_name, int(r), precision)
        bd = t["build"]
        dev = t["context"].get("machine") or t["context"]["device"]
        timed = bd["timing_s"]
        # tables built before prefetching: their whole loading was in the way
        exposed = bd.get("load_wait_s", bd.get("load_s", 0.0))
        parts = {k: bd.get(f"{k}_s", 0.0) for k in ("start", "wait")}
        row = {"table": table, "precision": precision, "batch": b, "prefetch": mode,
               "blocks": bd["blocks"], "model_MB": round(raw / 1e6, 1),
               "MB_sent": round(packed / 1e6, 2), "command_s": wall,
               "device_loop_s": bd["wall_s"], **{f"{k}_s": v for k, v in parts.items()},
               "load_s": bd.get("load_s"), "load_exposed_s": exposed,
               "timed_trials_s": timed,
               "requests_s": bd["wall_s"] - timed - exposed - sum(parts.values()),
               "overhead_pct": 100 * (bd["wall_s"] - timed) / timed,
               "after_start_pct": 100 * (bd["wall_s"] - parts["start"] - timed) / timed,
               "device": f"{dev.get('cpu_model')} ({dev.get('emulated') or 'native'})"}
        other = tables.get((table, precision, b, "on"))
        if mode == "off" and other is not None:  # what prefetching changed in the entries
            keys = sorted(other)
            on = np.array([other[k]["median"] for k in keys])
            off = np.array([tables[(table, precision, b, mode)][k]["median"] for k in keys])
            row["off_on_median_ratio"] = float(np.median(off / on))
            row["kendall_tau"] = float(kendalltau(off, on).statistic)
        rows.append(row)
    print_table(rows)
    write_json(args.name, {"rows": rows, "target": args.target,
                                   "protocol": "10 trials x (3 warm-up + 15 timed)"})


if __name__ == "__main__":
    main()
