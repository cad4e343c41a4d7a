"""``ofa export``: one subnet -> ONNX/TFLite (fp32, int8) bundle with a parity report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ofa.cli.args import choice_list, int_range, load_subnet

NAME, HELP = "export", "subnet -> ONNX/TFLite (fp32, int8) + model.json + parity"


def format_names() -> list[str]:
    from deploy.formats import FORMATS

    return list(FORMATS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, or a fine-tune folder "
                   "(ofa finetune --out; its subnet is exported, --subnet is not used)")
    p.add_argument("--subnet", default="max", help="max | min | random | JSON config or "
                   "search result")
    p.add_argument("--formats", type=choice_list(format_names, "format"),
                   default=format_names(), help=f"comma list of {', '.join(format_names())}")
    p.add_argument("--nhwc", action="store_true", help="NHWC input for TFLite models")
    p.add_argument("--data", help="override the run's --data path")
    p.add_argument("--calib-images", type=int_range(1, 100_000), default=128,
                   help="int8 representative set")
    p.add_argument("--parity-images", type=int_range(1, 1_000_000), default=500)
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from deploy.bundle import export_subnet
    from ofa.train.finetune import FINETUNE_JSON, load_finetuned
    from ofa.train.run import load_run

    run, model = args.checkpoint, None
    if (Path(run) / FINETUNE_JSON).exists():  # a fine-tuned subnet: export it as it is
        model, cfg, info = load_finetuned(run)
        run = info["source_run"]
    else:
        net, _, _ = load_run(run)
        cfg = load_subnet(args.subnet, net.space)
    rep = export_subnet(run, cfg, args.out, formats=args.formats, nhwc=args.nhwc,
                        data=args.data, calib_images=args.calib_images,
                        parity_images=args.parity_images, progress=not args.json, model=model)
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{rep['summary']}: supernet subnet top-1 {rep['supernet_top1']:.2f}% on "
          f"{rep['parity_images']} test images; wrote {args.out}")
    print(f"{'format':<12}{'KB':>8}{'top-1 %':>9}{'agree %':>9}{'max|diff|':>11}")
    for k, m in rep["models"].items():
        print(f"{k:<12}{m['bytes'] / 1024:8.0f}{m['top1']:9.2f}{m['top1_agreement']:9.2f}"
              f"{m['max_abs_diff']:11.2e}")
    return 0
