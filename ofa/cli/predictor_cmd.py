"""``ofa predictor build | import-ofa``: the accuracy predictor."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ofa.cli.args import SEED, add_compute_args, autocast_of, int_range

NAME, HELP = "predictor", "accuracy predictor: build from a trained run, or import OFA's"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="predictor_command", required=True)
    b = sub.add_parser("build", help="measure subnets (resumable) and fit the MLP")
    b.add_argument("--checkpoint", required=True, help="run folder")
    b.add_argument("--samples", type=int_range(10, 1_000_000), default=300,
                   help="subnets to measure (>= 10)")
    b.add_argument("--split", default="holdout", choices=["holdout", "test"])
    b.add_argument("--data", help="override the run's --data path")
    b.add_argument("--epochs", type=int_range(1, 100_000), default=300,
                   help="MLP training epochs")
    b.add_argument("--recal-images", type=int_range(1, 1_000_000),
                   help="BN-recalibration images per subnet (default: the run's)")
    b.add_argument("--seed", type=SEED, default=0)
    add_compute_args(b, workers=True)
    b.add_argument("--out", help="predictor path (default RUN/acc_predictor.safetensors)")
    b.add_argument("--json", action="store_true")
    i = sub.add_parser("import-ofa", help="convert OFA's published acc_predictor.pth once to "
                       "safetensors (searches then need no torch)")
    i.add_argument("pth", help="OFA's acc_predictor.pth")
    i.add_argument("--out", required=True, help="e.g. ofa_acc_predictor.safetensors")


def run(args: argparse.Namespace) -> int:
    if args.predictor_command == "import-ofa":
        from search.accuracy import import_ofa_predictor

        out = import_ofa_predictor(args.pth, args.out)
        print(f"wrote {out} (+ {out.with_suffix('.json').name}): OFA's mbv3-w1.2 predictor, "
              "resolutions 112..224 step 16")
        return 0
    return _build(args)


def _build(args: argparse.Namespace) -> int:
    from search.acc_dataset import build_accuracy_dataset, fit_and_score

    run_dir = Path(args.checkpoint)
    out = Path(args.out) if args.out else run_dir / "acc_predictor.safetensors"
    space, rows = build_accuracy_dataset(run_dir, out.with_name(out.stem + ".dataset.jsonl"),
                                         args.samples, seed=args.seed, split=args.split,
                                         data=args.data, recal_images=args.recal_images,
                                         progress=not args.json, device=args.device,
                                         autocast=autocast_of(args), workers=args.workers)
    pred, metrics = fit_and_score(space, rows, seed=args.seed, epochs=args.epochs)
    pred.metrics = metrics
    pred.save(out)
    if args.json:
        print(json.dumps({"predictor": str(out), **metrics}))
    else:
        print(f"wrote {out}: {len(rows)} subnets ({args.split} top-1 {metrics['acc_mean']:.2f}"
              f" ± {metrics['acc_std']:.2f}%); held-out RMSE {metrics['rmse']:.3f} points, "
              f"Kendall tau {metrics['kendall_tau']:.3f}")
    return 0
