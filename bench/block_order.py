"""Whole subnets against the sums of their blocks, all timed in one window (issue 15).

How well can ``a * sum ** p`` (the table's calibration) predict a whole subnet from its
blocks when nothing drifts in between? This script converts everything first, then times, in
one process on this machine and within seconds:

- ``whole``: the exported subnets (interleaved trials, as calibration and ``ofa deploy``);
- ``alone``: the sum of each subnet's blocks, timed in interleaved trials (a block's invokes
  back to back, as a latency table times them);
- ``round-robin``: the sum of the same blocks timed one invoke of each in turn (every block's
  weights evicted by the others' between two of its invokes, as inside a network). Tried in
  2026-11-26 as a way to time a table's blocks and rejected: the result depends on how many
  blocks take turns (all ~200 blocks here: whole / sum 0.49-0.94; an exploratory run over
  each subnet's own blocks: 0.98-1.12; a table built with batches of 32: 82% of 100 subnets
  within ±10%).

The fit is scored on the printed rows (``fit`` in the JSON: ``a``, ``p``, the largest error
and the leave-one-out largest error).

Subnets: ``--random`` seeded random ones plus ``--corner`` ones with every stage at full
depth and the largest resolution (the corner a latency budget search ends in), with the same
random weights the table builder uses. The blocks of all subnets are timed together.

    python bench/block_order.py --runtime litert
    python bench/block_order.py --runtime onnxruntime --random 4 --corner 3

Prints one row per subnet and writes ``bench/results/block_order_<runtime>.json``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

from deploy.export import converter_pool  # noqa: E402
from deploy.formats import format_for  # noqa: E402
from deploy.lut import convert as lut  # noqa: E402
from deploy.lut import fit_calibration  # noqa: E402
from deploy.lut import measure as lut_measure  # noqa: E402
from deploy.ontarget.facts import machine_facts  # noqa: E402
from deploy.ontarget.runtimes import (  # noqa: E402
    TimingProtocol,
    get_runtime,
    stats_ms,
    time_interleaved,
)
from ofa.space import SubnetConfig, get_space  # noqa: E402


def _subnets(space, n_random: int, n_corner: int, seed: int) -> list[SubnetConfig]:
    g = random.Random(seed)
    r_max, d_max = max(space.resolutions), max(space.depth_list)
    out = [space.sample(g, r=g.choice(space.resolutions)) for _ in range(n_random)]
    for _ in range(n_corner):
        c = space.sample(g, r=r_max)
        out.append(space.validate(SubnetConfig(c.ks, c.e, [d_max] * len(c.d), r_max)))
    return out


def _round_robin(rts, xs, rounds: int, warmup: int = 3) -> list[float]:
    """Median ms of each model timed one invoke of each in turn, ``rounds`` timed rounds."""
    for rt, x in zip(rts, xs):
        rt.set_input(x)
    for _ in range(warmup):
        for rt in rts:
            rt.invoke()
    times: list[list[float]] = [[] for _ in rts]
    for _ in range(rounds):
        for rt, out in zip(rts, times):
            t = time.perf_counter()
            rt.invoke()
            out.append((time.perf_counter() - t) * 1e3)
    return [stats_ms(t)["median"] for t in times]


def _fit(alone: np.ndarray, whole: np.ndarray) -> dict:
    c = fit_calibration(alone.tolist(), whole.tolist())
    err = c["a"] * alone ** c["p"] / whole - 1
    loo = []
    for i in range(len(whole)):
        m = np.arange(len(whole)) != i
        ci = fit_calibration(alone[m].tolist(), whole[m].tolist())
        loo.append(ci["a"] * alone[i] ** ci["p"] / whole[i] - 1)
    return {"a": c["a"], "p": c["p"], "max_err_pct": float(np.abs(err).max() * 100),
            "loo_max_err_pct": float(np.abs(loo).max() * 100)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default="litert", choices=["litert", "onnxruntime"])
    ap.add_argument("--space", default="mbv3-digits")
    ap.add_argument("--random", type=int, default=8)
    ap.add_argument("--corner", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    space = get_space(a.space)
    cfgs = _subnets(space, a.random, a.corner, a.seed)
    fmt = format_for(a.runtime, "fp32")
    suffix = fmt.suffix
    shapes = [space.block_shapes(c) for c in cfgs]
    blocks = {}  # (resolution, key) -> shape; a block shape is converted once
    for c, ss in zip(cfgs, shapes):
        for s in ss:
            blocks.setdefault((c.r, s.key()), s)
    keys = list(blocks)
    tmp = Path(tempfile.mkdtemp())
    sub_paths = [str(tmp / f"s{i}{suffix}") for i in range(len(cfgs))]
    blk_paths = [str(tmp / f"b{i}{suffix}") for i in range(len(keys))]
    print(f"{len(cfgs)} subnets, {len(keys)} blocks: converting with {a.jobs} process(es)")
    with converter_pool(a.jobs) as run:
        list(run(lut._export_subnet, [space.to_dict()] * len(cfgs), [c.to_dict() for c in cfgs],
                 range(len(cfgs)), [fmt] * len(cfgs), sub_paths))
        list(run(lut._export_block, [blocks[k] for k in keys], [fmt] * len(keys), blk_paths))

    def load(path: str, shape: tuple[int, ...]):
        rt = get_runtime(a.runtime, 1)
        rt.load(path)
        return rt, lut_measure._random_input(rt, shape)

    whole = [load(p, (1, 3, c.r, c.r)) for p, c in zip(sub_paths, cfgs)]
    blk = [load(p, (1, blocks[k].in_ch, blocks[k].in_size, blocks[k].in_size))
           for p, k in zip(blk_paths, keys)]
    proto = TimingProtocol()
    w = time_interleaved([r for r, _ in whole], [x for _, x in whole], proto)
    alone = time_interleaved([r for r, _ in blk], [x for _, x in blk], proto)
    rr = _round_robin([r for r, _ in blk], [x for _, x in blk], proto.runs * proto.trials)
    alone_ms = {k: st["median"] for k, st in zip(keys, alone)}
    rr_ms = dict(zip(keys, rr))
    rows = []
    for i, (c, ss, st) in enumerate(zip(cfgs, shapes, w)):
        ks = [(c.r, s.key()) for s in ss]
        sa, sr = sum(alone_ms[k] for k in ks), sum(rr_ms[k] for k in ks)
        rows.append({"subnet": "corner" if i >= a.random else "random",
                     "config": c.summary(), "whole_ms": st["median"], "alone_sum_ms": sa,
                     "rr_sum_ms": sr, "whole/alone": st["median"] / sa,
                     "whole/rr": st["median"] / sr})
    print_table([{k: v for k, v in r.items() if k != "config"} for r in rows])
    summary = {f"{k}_{f}": float(fn([r[k] for r in rows]))
               for k in ("whole/alone", "whole/rr")
               for f, fn in (("min", np.min), ("max", np.max),
                             ("spread", lambda v: np.max(v) / np.min(v)))}
    fit = _fit(np.array([r["alone_sum_ms"] for r in rows]), np.array([r["whole_ms"] for r in rows]))
    print(summary)
    print(f"a * sum ** p on the blocks timed alone: a={fit['a']:.3f} p={fit['p']:.3f}, largest "
          f"error {fit['max_err_pct']:.1f}%, leave-one-out {fit['loo_max_err_pct']:.1f}%")
    write_json(f"block_order_{a.runtime}", {"runtime": a.runtime, "space": a.space,
                                            "machine": machine_facts(), "rows": rows,
                                            "summary": summary, "fit": fit})


if __name__ == "__main__":
    main()
