"""``ofa space NAME``: describe a search-space preset (torch-free)."""

from __future__ import annotations

import argparse
import json

from ofa.cli.args import float_range, int_range
from ofa.space import describe, get_space, preset_names

NAME, HELP = "space", "describe a search-space preset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=preset_names(), metavar="NAME",
                   help=f"preset: {', '.join(preset_names())}")
    p.add_argument("--num-classes", type=int_range(1, 100_000))
    p.add_argument("--width-mult", type=float_range(0, 10, lo_open=True))
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _human(n: float) -> str:
    return f"{n / 1e6:.1f} M"


def run(args: argparse.Namespace) -> int:
    kw = {k: v for k, v in (("num_classes", args.num_classes), ("width_mult", args.width_mult))
          if v is not None}
    info = describe(get_space(args.name, **kw))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"search space {info['name']}  (width x{info['width_mult']}, "
          f"{info['num_classes']} classes)")
    print(f"  widths       {info['widths']}")
    n = len(info["strides"]) - 2
    print(f"  strides      {info['strides']}  (stem, first block, stages 1-{n})")
    print(f"  kernel       {info['ks_list']}")
    print(f"  expand       {info['expand_list']}")
    fixed = "".join(f"; stage {s} fixed at {d}" for s, d in info["fixed_depths"].items())
    print(f"  depth        {info['depth_list']}{fixed}")
    rs = info["resolutions"]
    print(f"  resolution   {rs[0]}..{rs[-1]} ({len(rs)} values)")
    print(f"  subnets      {info['num_subnets_per_resolution']} per resolution, "
          f"{info['num_subnets_total']} in all (1e{info['log10_num_subnets']:.1f})")
    for k, v in info["extremes"].items():
        print(f"  {k:<14} {_human(v['macs'])}MACs  {_human(v['params'])}params")
    return 0
