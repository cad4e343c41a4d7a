"""``ofa finetune``: fine-tune a chosen subnet with distillation from the supernet."""

from __future__ import annotations

import argparse

from ofa.cli.args import SEED, add_compute_args, autocast_of, float_range, int_range, load_subnet

NAME, HELP = ("finetune", "fine-tune a chosen subnet after extraction (KD from the largest "
              "subnet, cosine lr, resumable)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder (trained or imported)")
    p.add_argument("--subnet", required=True, help="pick.json | search result (its best) | "
                   "OFA net.config | max | min")
    p.add_argument("--epochs", type=float_range(0, 100_000, lo_open=True), default=5.0)
    p.add_argument("--batch-size", type=int_range(1, 65_536), default=64)
    p.add_argument("--lr", type=float_range(0, 100, lo_open=True), default=0.24,
                   help="peak learning rate at batch 2048, scaled linearly to --batch-size")
    p.add_argument("--no-kd", action="store_true", help="labels only, no distillation")
    p.add_argument("--scratch", action="store_true", help="re-initialise the subnet's "
                   "weights first: the train-from-scratch baseline (use with --no-kd)")
    p.add_argument("--data", help="override the run's --data path")
    p.add_argument("--recal-images", type=int_range(1, 1_000_000), default=None,
                   help="training images for each BN recalibration (default: the run's)")
    p.add_argument("--seed", type=SEED, default=0)
    add_compute_args(p)
    p.add_argument("--ckpt-every", type=int_range(0), default=0,
                   help="steps between checkpoints (0 = every epoch)")
    p.add_argument("--max-steps", type=int_range(1), help="stop (after checkpointing) here")
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out")
    p.add_argument("--out", required=True, help="fine-tune folder")


def run(args: argparse.Namespace) -> int:
    from ofa.train.finetune import FinetuneConfig, finetune
    from ofa.train.run import load_run

    net, _, _ = load_run(args.checkpoint)
    sub = load_subnet(args.subnet, net.space, args.seed)
    info = finetune(FinetuneConfig(
        run=args.checkpoint, subnet=sub.to_dict(), out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, kd=not args.no_kd, scratch=args.scratch,
        seed=args.seed,
        data=args.data, device=args.device, autocast=autocast_of(args),
        ckpt_every=args.ckpt_every,
        max_steps=args.max_steps, recal_images=args.recal_images), resume=args.resume)
    if "stopped_at" in info:
        print(f"stopped at step {info['stopped_at']}; continue with --resume")
    else:
        print(f"{info['summary']}: top-1 {info['top1_before']:.2f}% -> {info['top1_after']:.2f}%"
              f" after {info['epochs']:g} epochs ({info['train_seconds']:.0f} s); wrote "
              f"{args.out}")
    return 0
