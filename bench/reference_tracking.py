"""Does a reference subnet follow what moves whole subnets and not the probe?

Exports ``-n`` seeded random subnets of a space (periodic weights, the table's runtime and
precision) and the space's reference subnet (``deploy.lut.convert.reference_config``), then
times them in ``--processes`` fresh processes one after the other (``--gap`` s apart), each
``--batches`` batches of interleaved trials beside the small probe, as a table's
validation does (``deploy.ontarget.runtimes.time_interleaved``, ``TimingProtocol(probe=True)``).

For every batch it takes each subnet's probe units over that subnet's mean over all batches:
the batch's mean of those is the *offset* that the device put on whole subnets in that
batch, against the probe. The same against the reference subnet timed in the same batch
(its units divided out). Reported: the s.d. of the batch offsets and of single entries
(log scale, ~ relative), both ways, and each subnet's slope against the probe offset (1:
moves with the others). A reference that follows the offset leaves a small s.d.

    python bench/reference_tracking.py --space mbv3-cifar --resolution 32 \\
        --processes 20 --batches 3 --gap 25 --name reference_tracking_cifar_fp32

Run it pinned to one core (``taskset -c 0``) with nothing else busy. Prints a table and
writes ``bench/results/<name>.json`` (date, commit, machine); the folder ``--work`` keeps the
models and each process's batches, so a stopped run continues with the processes it lacks.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import print_table, run_facts, write_json  # noqa: E402


def export(a: argparse.Namespace, work: Path) -> list[Path]:
    """The subnets' and the reference's model files (existing ones kept)."""
    from deploy.formats import format_for
    from deploy.lut.convert import _export, _subnet, reference_config
    from ofa.space import get_space

    space = get_space(a.space)
    g = random.Random(a.seed)
    cfgs = [space.sample(g, r=a.resolution) for _ in range(a.n)]
    cfgs.append(reference_config(space, [a.resolution]))
    fmt = format_for(a.runtime, a.precision)
    paths = [work / f"m{i:02d}{fmt.suffix}" for i in range(len(cfgs))]
    for i, (c, p) in enumerate(zip(cfgs, paths)):
        if not p.is_file():
            _export(_subnet(space, c, i), (1, 3, c.r, c.r), fmt, p)
    return paths


def time_once(a: argparse.Namespace, paths: list[Path]) -> list[dict]:
    """``--batches`` batches of the models beside the probe, in this process."""
    from deploy.ontarget.runtimes import TimingProtocol, get_runtime, time_interleaved
    from deploy.probe import load_probe

    prt, px = load_probe(a.runtime, 1, a.precision)
    rts, xs = [], []
    for p in paths:
        rt = get_runtime(a.runtime, 1)
        rt.load(str(p))
        rts.append(rt)
        shape = (1, 3, a.resolution, a.resolution)
        xs.append(rt.prepare(np.random.default_rng(0).standard_normal(shape)
                             .astype(np.float32)))
    out = []
    for _ in range(a.batches):
        head, *stats = time_interleaved([prt, *rts], [px, *xs], TimingProtocol(probe=True))
        out.append({"rel": [s["rel"] for s in stats], "ms": [s["median"] for s in stats],
                    "probe_ms": float(np.median(head["trial_means"]))})
        time.sleep(1.0)
    return out


def analyse(batches: list[dict]) -> dict:
    """Offsets of whole subnets against the probe and against the reference (the last
    model), as the module docstring says."""
    lr = np.log(np.array([b["rel"] for b in batches]))  # batch x model
    subnets, ref = lr[:, :-1], lr[:, -1:]
    out = {"batches": len(batches), "subnets": subnets.shape[1],
           "subnet_ms": [float(np.median([b["ms"][j] for b in batches]))
                         for j in range(subnets.shape[1])]}
    for name, units in (("probe", subnets), ("reference", subnets - ref)):
        dev = units - units.mean(0)
        out[name] = {"batch_offset_sd": float(dev.mean(1).std()), "entry_sd": float(dev.std()),
                     "offset_range": [float(np.exp(dev.mean(1).min())),
                                      float(np.exp(dev.mean(1).max()))]}
    off = (subnets - subnets.mean(0)).mean(1)
    out["slopes"] = [float(np.polyfit(off, subnets[:, j] - subnets[:, j].mean(), 1)[0])
                     for j in range(subnets.shape[1])]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv3-cifar")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--gap", type=float, default=25.0, help="seconds between processes")
    ap.add_argument("--work", default="/tmp/ofa-reference-tracking")
    ap.add_argument("--name", required=True)
    ap.add_argument("--_once", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = export(a, work)
    if a._once:  # one fresh process's batches, as JSON on stdout
        print(json.dumps(time_once(a, paths)))
        return 0
    for i in range(a.processes):
        done = work / f"p{i:02d}.json"
        if done.is_file():
            continue
        got = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--_once"],
                             capture_output=True, text=True, check=True).stdout
        done.write_text(got.strip().splitlines()[-1])
        print(f"process {i + 1}/{a.processes} timed", flush=True)
        time.sleep(a.gap)
    batches = [b for i in range(a.processes)
               for b in json.loads((work / f"p{i:02d}.json").read_text())]
    res = analyse(batches)
    print_table([{"against": k, "batch offset s.d.": f"{100 * res[k]['batch_offset_sd']:.1f}%",
                  "entry s.d.": f"{100 * res[k]['entry_sd']:.1f}%",
                  "offset range": "{:.3f}-{:.3f}".format(*res[k]["offset_range"])}
                 for k in ("probe", "reference")])
    print("slopes against the probe offset:", " ".join(f"{s:.2f}" for s in res["slopes"]))
    write_json(a.name, {**run_facts(), "args": {k: v for k, v in vars(a).items()
                                                if not k.startswith("_")}, **res,
                        "model_bytes": [p.stat().st_size for p in paths]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
