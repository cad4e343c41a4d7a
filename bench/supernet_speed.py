"""Supernet vs extracted static subnet: forward+backward time and extraction time.

Issue target: supernet fwd+bwd with a subnet active <= 1.15x the extracted static network
(batch 64, 32x32, mbv3-cifar); subnet extraction well under 100 ms.

    python bench/supernet_speed.py [--threads 2] [--runs 10]
    python bench/supernet_speed.py --autocast bf16 --channels-last    # as ofa train on a CPU
                                   # would with --autocast bf16 (auto picks fp32 there)
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms, print_table, write_json  # noqa: E402

from deploy.ontarget.facts import machine_facts  # noqa: E402
from ofa.device import autocast_context  # noqa: E402
from ofa.space import get_space  # noqa: E402
from ofa.supernet import OFAMobileNetV3  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--autocast", choices=["fp32", "bf16"], default="fp32",
                    help="autocast of the forward pass (ofa/device.py)")
    ap.add_argument("--channels-last", action="store_true",
                    help="NHWC weights and inputs, the trainer's CPU layout")
    args = ap.parse_args()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dev = torch.device("cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = get_space("mbv3-cifar")
    net = OFAMobileNetV3(space).train().to(memory_format=fmt)
    mid = space.config([5] * 20, [4] * 20, [3] * 5, 32)
    rows = []
    for label, cfg in (("largest", space.max_subnet(32)), ("mid (k5 e4 d3)", mid),
                       ("smallest", space.min_subnet(32))):
        net.set_active_subnet(cfg)
        sub = net.get_active_subnet().train().to(memory_format=fmt)
        x = torch.randn(args.batch, 3, cfg.r, cfg.r).to(memory_format=fmt)

        def step(m: torch.nn.Module, x: torch.Tensor = x) -> None:
            m.zero_grad(set_to_none=True)
            with autocast_context(dev, args.autocast):
                y = m(x)
            y.float().sum().backward()

        t_super = median_ms(lambda: step(net), args.runs)
        t_static = median_ms(lambda s=sub: step(s), args.runs)
        rows.append({"subnet": label, "MMACs": space.macs(cfg) / 1e6,
                     "supernet_ms": t_super, "static_ms": t_static,
                     "ratio": t_super / t_static})
    g = random.Random(0)
    ext = []
    for _ in range(20):
        net.sample_active_subnet(g)
        t = time.perf_counter()
        net.get_active_subnet()
        ext.append((time.perf_counter() - t) * 1e3)
    ext.sort()
    print_table(rows)
    print(f"subnet extraction: median {ext[len(ext) // 2]:.1f} ms, "
          f"max {ext[-1]:.1f} ms (20 random)")
    suffix = ("" if args.autocast == "fp32" else f"_{args.autocast}") + (
        "_nhwc" if args.channels_last else "")
    write_json("supernet_speed" + suffix, {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "cpu_model": machine_facts().get("cpu_model"),
        "autocast": args.autocast, "channels_last": args.channels_last,
        "batch": args.batch, "torch": torch.__version__, "rows": rows,
        "extraction_ms_median": ext[len(ext) // 2], "extraction_ms_max": ext[-1]})


if __name__ == "__main__":
    main()
