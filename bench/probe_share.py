"""The probe's share of the timed work on a device: one batch of block models timed there
beside the probe (``deploy.probe.ProbedTarget``, the default timing protocol), as a latency
table's build times them, and the probe's part of the timed invokes' time.

    python tools/emulated_pi.py start          # prints the --target arguments
    python bench/probe_share.py --target ssh://root@127.0.0.1:2222 \\
        --python /opt/ofa-venv/bin/python --identity ... --known-hosts ... \\
        --models BUILD.json.models -n 32 \\
        --name probe_share_pi

``--models``: a folder of ONNX models (a build's block models, ``<table>.models``); the
first ``-n`` in name order are timed. Prints a table and writes
``bench/results/<name>.json`` (date, commit, machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import add_ssh_target_args, print_table, run_facts, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ssh_target_args(ap)
    ap.add_argument("--models", required=True)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--name", required=True)
    a = ap.parse_args()
    from deploy.ontarget.runtimes import PROBE_SPACING, TimingProtocol
    from deploy.probe import ProbedTarget
    from deploy.targets import parse_target
    from deploy.targets.base import device_progress

    files = sorted(Path(a.models).rglob("*.onnx"))[:a.n]
    if len(files) < a.n:
        raise SystemExit(f"{a.models}: {len(files)} ONNX models, -n asks for {a.n}")
    target = parse_target(a.target, python=a.python, identity=a.identity,
                          known_hosts=a.known_hosts)
    probed = ProbedTarget(target, "onnxruntime")
    t0 = time.perf_counter()
    try:
        with device_progress(probed, "probe share"):
            rows = probed.bench_many(files, 1, TimingProtocol())
    finally:
        target.close()
    p = rows[0]["probe"]
    row = {"models": len(files), "probe_ms": p["median"],
           "models_ms_sum": sum(r["latency_ms"]["median"] for r in rows),
           "probe_timings": len(p["trial_means"]), "share": p["share"],
           "retimed": p["retimed"], "spread": p["spread"], "spacing": PROBE_SPACING,
           "wall_s": time.perf_counter() - t0}
    print_table([row])
    write_json(a.name, {**run_facts(), "args": vars(a), "rows": [row],
                             "machine_timed": rows[0].get("machine")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
