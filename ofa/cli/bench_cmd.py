"""``ofa bench MODEL``: measure an exported model on a target (this machine, SSH, adb)."""

from __future__ import annotations

import argparse
import json

from ofa.cli.args import CliError, add_target_args, target_options

NAME, HELP = "bench", "measure a model on a target (local, ssh://, adb)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".onnx or .tflite (a bundle's model file)")
    add_target_args(p)
    p.add_argument("--data", help="eval .npz / image folder: also report top-1")
    p.add_argument("--json", action="store_true")


def target_and_protocol(args: argparse.Namespace):
    """The target and timing protocol given by :func:`ofa.cli.args.add_target_args`."""
    from deploy.device.runtimes import TimingProtocol
    from deploy.targets import parse_target

    return (parse_target(args.target, **target_options(args)),
            TimingProtocol(args.warmup, args.runs, args.trials))


def run(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError

    target, protocol = target_and_protocol(args)
    try:
        res = target.bench(args.model, args.threads, protocol, data=args.data)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['model']} on {res['target']} ({res['runtime']}, {res['threads']} thread(s)): "
          f"median {res['median']:.3f} ms, min {res['min']:.3f} ms over {res['runs']} runs")
    dev = res.get("device") or {}
    if dev.get("emulated"):
        print(f"device: {dev.get('cpu_model')} on {dev['emulated']}: these timings measure the "
              "emulation, not the device")
    if "accuracy" in res:
        print(f"top-1 {res['accuracy']['top1']:.2f}% on {res['accuracy']['images']} images")
    return 0
