"""``ofa train``: train a supernet once (progressive shrinking or DεpS), resumable."""

from __future__ import annotations

import argparse

from ofa import DATASETS
from ofa.cli.args import SEED, add_compute_args, autocast_of, float_range, int_list, int_range
from ofa.space import preset_names

NAME, HELP = "train", "train a supernet once (progressive shrinking or DεpS)"


def add_training_args(p: argparse.ArgumentParser, deployed: bool = False) -> None:
    """The options ``ofa train`` and ``ofa run`` share (``deployed``: ``--precision
    fp32|int8`` of the deployed models too, see :func:`ofa.cli.args.add_compute_args`)."""
    p.add_argument("--space", default="mbv3-digits", choices=preset_names(),
                   help="search-space preset")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data", help=".npz file, dataset folder or ImageFolder tree")
    p.add_argument("--schedule", default="deps", help="ps | deps | path to a schedule YAML")
    p.add_argument("--epochs", type=float_range(0, 100_000, lo_open=True),
                   help="total epochs over all phases (default: the schedule's short_run "
                   "setting, deps 14, ps 24)")
    p.add_argument("--batch-size", type=int_range(1, 65_536), default=64,
                   help="global batch size")
    p.add_argument("--lr-scale", type=float_range(0, 1000, lo_open=True),
                   help="multiplies every phase's lr (default: the schedule's short_run "
                   "setting, deps 1, ps 3)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resolutions", type=int_list(8, 4096),
                   help="override the space's resolutions, e.g. 16,20")
    p.add_argument("--recal-images", type=int_range(1, 1_000_000), default=None,
                   help="training images for each BN recalibration of a subnet (evaluated, "
                   "fine-tuned or exported; default 2000, and 500 per subnet measured for "
                   "`ofa run`'s accuracy predictor)")
    add_compute_args(p, workers=True, deployed=deployed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_args(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--ckpt-every", type=int_range(0), default=0,
                   help="steps between checkpoints (0 = every epoch)")
    p.add_argument("--eval-images", type=int_range(0), default=500,
                   help="test images for the smallest/largest top-1 at the end of each phase "
                   "(0 = skip)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--max-steps", type=int_range(1), help="stop (after checkpointing) at "
                   "this step")


def train_config(args: argparse.Namespace, deployed: bool = False):
    """The :class:`~ofa.train.run.TrainConfig` of the training options
    (:func:`add_training_args`); the options only ``ofa train`` has (``--out``,
    ``--ckpt-every``, ``--eval-images``, ``--max-steps``) keep TrainConfig's defaults where
    they are absent (``ofa run``, ``deployed``: its ``--precision`` is the deployed
    models', :func:`~ofa.cli.args.autocast_of`).

    Raises:
        ValueError: an unknown schedule (checked here, before any data is read).
    """
    from ofa.train.run import TrainConfig

    own = {k: getattr(args, k) for k in ("out", "ckpt_every", "eval_images", "max_steps")
           if hasattr(args, k)}
    if args.recal_images is not None:
        own["recal_images"] = args.recal_images
    over = {"resolutions": args.resolutions} if args.resolutions else {}
    return TrainConfig(space=args.space, space_overrides=over, dataset=args.dataset,
                       data=args.data, schedule=args.schedule, epochs=args.epochs,
                       batch_size=args.batch_size, lr_scale=args.lr_scale, seed=args.seed,
                       device=args.device, autocast=autocast_of(args, deployed),
                       workers=args.workers, **own)


def run(args: argparse.Namespace) -> int:
    from ofa.train.trainer import train

    info = train(train_config(args), resume=args.resume)
    if "stopped_at" in info:
        print(f"stopped at step {info['stopped_at']}; continue with --resume")
    else:
        print(f"trained {info['global_steps']} steps; weights in {args.out}")
    return 0
