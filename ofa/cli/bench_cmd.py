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
    from deploy.ontarget.runtimes import TimingProtocol
    from deploy.targets import parse_target

    return (parse_target(args.target, **target_options(args)),
            TimingProtocol(args.warmup, args.runs, args.trials))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deploy.ontarget.agent import model_meta
    from deploy.ontarget.runtimes import runtime_for
    from deploy.probe import ProbedTarget
    from deploy.targets import TargetError

    target, protocol = target_and_protocol(args)
    try:
        runtime = runtime_for(args.model)
        precision = model_meta(Path(args.model)).get("precision", "fp32")
        probed = ProbedTarget(target, runtime, "int8" if precision == "int8" else "fp32")
        res = probed.bench(args.model, args.threads, protocol, data=args.data)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(res))
        return 0
    lat, probe = res["latency_ms"], res["probe"]
    print(f"{res['model']} on {target.name} ({res.get('runtime', runtime)}, {args.threads} "
          f"thread(s)): median {lat['median']:.3f} ms, min {lat['min']:.3f} ms; "
          f"{lat['rel']:.3f} probe units (the probe: {probe['mean']:.4f} ms, moved "
          f"{probe['spread']:.2f}x during the trials, {probe.get('dropped', 0)} trial(s) "
          f"dropped, timed again {probe['retimed']}x)")
    dev = res.get("machine") or {}
    if dev.get("emulated"):
        print(f"device: {dev.get('cpu_model')} on {dev['emulated']}: these timings measure the "
              "emulation, not the device")
    if "accuracy" in res:
        print(f"top-1 {res['accuracy']['top1']:.2f}% on {res['accuracy']['images']} images")
    return 0
