"""``ofa eval``: top-1 of one subnet of a trained supernet after BN recalibration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ofa.cli.args import SEED, add_compute_args, autocast_of, load_subnet

NAME, HELP = "eval", "top-1 of a subnet after BN recalibration"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint file or a "
                   "fine-tune folder (then --subnet is not used)")
    p.add_argument("--subnet", default="max", help="max | min | random | a JSON file")
    p.add_argument("--split", default="test", choices=["test", "holdout"])
    p.add_argument("--data", help="override the run's --data path")
    p.add_argument("--seed", type=SEED, default=0)
    add_compute_args(p, workers=True)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ofa.data import load_dataset
    from ofa.device import resolve_device
    from ofa.evaluate import evaluate, subnet_accuracy
    from ofa.train.finetune import FINETUNE_JSON, load_finetuned
    from ofa.train.run import load_run

    device = resolve_device(args.device)  # before anything is read
    finetuned = (Path(args.checkpoint) / FINETUNE_JSON).exists()
    if finetuned:  # its own trained BN statistics: no recalibration
        model, sub_cfg, info = load_finetuned(args.checkpoint)
        net, cfg, _ = load_run(info["source_run"])
    else:
        net, cfg, _ = load_run(args.checkpoint)
        sub_cfg = load_subnet(args.subnet, net.space, args.seed)
    data = load_dataset(cfg.dataset, args.data or cfg.data, holdout=cfg.holdout, seed=cfg.seed)
    if finetuned:
        acc = evaluate(model.to(device), data, args.split, sub_cfg.r, autocast=autocast_of(args),
                       workers=args.workers)
    else:
        acc = subnet_accuracy(net.to(device), sub_cfg, data, args.split, cfg.recal_images,
                              autocast=autocast_of(args), workers=args.workers)
    res = {"subnet": sub_cfg.to_dict(), "summary": sub_cfg.summary(), "split": args.split,
           "top1": acc, "macs": net.space.macs(sub_cfg), "params": net.space.params(sub_cfg)}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{sub_cfg.summary()}: top-1 {acc:.2f}% on {args.split} "
              f"({res['macs'] / 1e6:.1f} M MACs, {res['params'] / 1e6:.2f} M params)")
    return 0
