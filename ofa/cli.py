"""The one command-line entry point, ``ofa``.

Each sub-command parses its arguments and hands plain values to the module that does the
work; heavy imports happen inside the handlers so ``ofa --help`` is instant. Any expected
failure (bad config, corrupt file, unreachable device) ends with one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


def _human(n: float) -> str:
    return f"{n / 1e6:.1f} M"


@command("space")
def cmd_space(args: argparse.Namespace) -> int:
    from ofa.space import describe, get_space

    kw = {}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.width_mult is not None:
        kw["width_mult"] = args.width_mult
    info = describe(get_space(args.name, **kw))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"search space {info['name']}  (width x{info['width_mult']}, "
          f"{info['num_classes']} classes)")
    print(f"  widths       {info['widths']}")
    print(f"  strides      {info['strides']}  (stem, first block, stages 1-5)")
    print(f"  kernel       {info['ks_list']}")
    print(f"  expand       {info['expand_list']}")
    print(f"  depth        {info['depth_list']}")
    rs = info["resolutions"]
    print(f"  resolution   {rs[0]}..{rs[-1]} ({len(rs)} values)")
    print(f"  subnets      {info['num_subnets_per_resolution']} per resolution, "
          f"{info['num_subnets_total']} in all (1e{info['log10_num_subnets']:.1f})")
    for k, v in info["extremes"].items():
        print(f"  {k:<14} {_human(v['macs'])}MACs  {_human(v['params'])}params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ofa.space import preset_names

    p = argparse.ArgumentParser(prog="ofa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("space", help="describe a search-space preset")
    s.add_argument("name", help=f"preset: {', '.join(preset_names())}")
    s.add_argument("--num-classes", type=int)
    s.add_argument("--width-mult", type=float)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("train", help="train a supernet once (progressive shrinking or DεpS)")
    _train_args(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--max-steps", type=int, help="stop (after checkpointing) at this step")

    e = sub.add_parser("eval", help="top-1 of a subnet after BN recalibration")
    e.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    e.add_argument("--subnet", default="max", help="max | min | random | a JSON file")
    e.add_argument("--split", default="test", choices=["test", "holdout"])
    e.add_argument("--data", help="override the run's --data path")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")

    lut = sub.add_parser("lut", help="latency lookup tables: build, calibrate, import-ofa, "
                         "validate")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    b = lsub.add_parser("build", help="measure a table on this machine (resumable)")
    b.add_argument("--space", default="mbv3-cifar")
    b.add_argument("--num-classes", type=int)
    b.add_argument("--resolutions", help="comma list (default: all of the space's)")
    b.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert", "torch"])
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--trials", type=int, default=3)
    b.add_argument("--calib", type=int, default=10, help="whole subnets for calibration")
    b.add_argument("--out", required=True)
    _device_args(b)
    c = lsub.add_parser("calibrate", help="refit a table's a*sum+b on whole subnets measured "
                        "here (e.g. a shipped table on another machine of its type)")
    c.add_argument("table")
    c.add_argument("--calib", type=int, default=10, help="random subnets (+ largest, smallest)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="where to write the recalibrated table (default: in place)")
    _device_args(c)
    i = lsub.add_parser("import-ofa", help="convert OFA's <r>_lookup_table.yaml files")
    i.add_argument("dir")
    i.add_argument("--out", required=True)
    i.add_argument("--space", default="mbv3-w1.2")
    i.add_argument("--device", default="Samsung Note10")
    v = lsub.add_parser("validate", help="measure random subnets against a table")
    v.add_argument("table")
    v.add_argument("-n", type=int, default=100)
    v.add_argument("--seed", type=int, default=1234)
    v.add_argument("--plot", help="scatter plot PNG path")
    v.add_argument("--out", help="write the report JSON here")
    v.add_argument("--json", action="store_true")
    _device_args(v)

    pr = sub.add_parser("predictor", help="accuracy predictor: build from a trained run")
    psub = pr.add_subparsers(dest="predictor_command", required=True)
    pb = psub.add_parser("build", help="measure subnets (resumable) and fit the MLP")
    pb.add_argument("--checkpoint", required=True, help="run folder")
    pb.add_argument("--samples", type=int, default=300, help="subnets to measure")
    pb.add_argument("--split", default="holdout", choices=["holdout", "test"])
    pb.add_argument("--data", help="override the run's --data path")
    pb.add_argument("--epochs", type=int, default=300, help="MLP training epochs")
    pb.add_argument("--recal-images", type=int, help="BN-recalibration images per subnet "
                    "(default: the run's)")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--out", help="predictor path (default RUN/acc_predictor.safetensors)")
    pb.add_argument("--json", action="store_true")

    q = sub.add_parser("search", help="best subnets for a budget, or the Pareto front")
    q.add_argument("--space", default="mbv3-cifar")
    q.add_argument("--num-classes", type=int)
    q.add_argument("--predictor", required=True,
                   help="accuracy predictor (.safetensors of ours, or OFA's .pth)")
    q.add_argument("--table", help="latency lookup table JSON")
    q.add_argument("--latency-ms", type=float)
    q.add_argument("--macs", type=float, help="MACs budget (absolute)")
    q.add_argument("--params", type=float, help="parameter budget (absolute)")
    q.add_argument("--size-bytes", type=float, help="fp32 model size budget")
    q.add_argument("--pareto", action="store_true", help="return the accuracy/latency front")
    q.add_argument("--objective", default="latency_ms", choices=["latency_ms", "macs", "params"])
    q.add_argument("--population", type=int, default=100)
    q.add_argument("--generations", type=int, default=15)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--storage", help="Optuna storage URL or journal file (resumable)")
    q.add_argument("--study-name", default="ofa-search")
    q.add_argument("--out", help="write the result JSON here")
    q.add_argument("--json", action="store_true")
    rn = sub.add_parser("run", help="the whole job: train, predictor, table, search, export, "
                        "measure, report (resumable)")
    rn.add_argument("--name", default="demo", help="runs/<name>/")
    rn.add_argument("--root", default="runs")
    rn.add_argument("--dataset", default="digits")
    rn.add_argument("--data", help=".npz file / dataset folder / ImageFolder tree")
    rn.add_argument("--space", default="mbv3-digits")
    rn.add_argument("--resolutions", help="override the space's resolutions, e.g. 12,16")
    rn.add_argument("--schedule", default="deps")
    rn.add_argument("--epochs", type=float, help="total epochs (default: the schedule's "
                    "short_run setting, deps 14, ps 24)")
    rn.add_argument("--batch-size", type=int, default=64)
    rn.add_argument("--lr-scale", type=float, help="multiplies every phase's lr (default: the "
                    "schedule's short_run setting, deps 1, ps 3)")
    rn.add_argument("--samples", type=int, default=100, help="subnets for the predictor")
    rn.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert"])
    rn.add_argument("--budgets", help="latency budgets in ms, e.g. 5,8,12 (default: 3 spread "
                    "between the smallest and largest subnet)")
    rn.add_argument("--table", help="latency table to use instead of a shipped/built one")
    rn.add_argument("--tables-dir", default=None, help="where to look for a table measured on "
                    "this machine (default: the shipped latency_tables/)")
    rn.add_argument("--generations", type=int, default=15)
    rn.add_argument("--population", type=int, default=100)
    rn.add_argument("--lut-runs", type=int, default=50)
    rn.add_argument("--lut-calib", type=int, default=10, help="whole subnets for calibration")
    rn.add_argument("--formats", default="onnx-fp32,tflite-fp32", help="exported per subnet "
                    "(the runtime's own format is always included)")
    rn.add_argument("--seed", type=int, default=0)
    rn.add_argument("--device", default="cuda" if _cuda() else "cpu")
    _target_args(rn, runs=100)

    x = sub.add_parser("export", help="subnet -> ONNX/TFLite (fp32, int8) + model.json + parity")
    x.add_argument("--checkpoint", required=True, help="run folder")
    x.add_argument("--subnet", default="max", help="max | min | random | JSON config or "
                   "search result")
    x.add_argument("--formats", default="onnx-fp32,onnx-int8,tflite-fp32,tflite-int8")
    x.add_argument("--nhwc", action="store_true", help="NHWC input for TFLite models")
    x.add_argument("--data", help="override the run's --data path")
    x.add_argument("--calib-images", type=int, default=128, help="int8 representative set")
    x.add_argument("--parity-images", type=int, default=500)
    x.add_argument("--out", required=True, help="bundle folder")
    x.add_argument("--json", action="store_true")

    bn = sub.add_parser("bench", help="measure a model on a target (local, ssh://, adb)")
    bn.add_argument("model", help=".onnx or .tflite (a bundle's model file)")
    _target_args(bn)
    bn.add_argument("--data", help="eval .npz / image folder: also report top-1")
    bn.add_argument("--json", action="store_true")

    dp = sub.add_parser("deploy", help="export a search result's subnets, measure them on the "
                        "target, compare predicted and measured latency")
    dp.add_argument("result", help="search result JSON (ofa search --out)")
    dp.add_argument("--checkpoint", required=True, help="run folder")
    dp.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert"])
    dp.add_argument("--formats", default="onnx-fp32,tflite-fp32")
    dp.add_argument("--out", required=True)
    _target_args(dp)
    dp.add_argument("--json", action="store_true")
    return p


def _target_args(p: argparse.ArgumentParser, runs: int = 50) -> None:
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=runs, help="timed invokes per trial")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--trials", type=int, default=3)
    _device_args(p)


def _device_args(p: argparse.ArgumentParser) -> None:
    """Where to measure: ``--target`` and the SSH/adb connection options."""
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | "
                   "adb[:serial]")
    p.add_argument("--python", default="python3", help="interpreter on an SSH device")
    p.add_argument("--insecure", action="store_true", help="SSH: skip host-key checking")
    p.add_argument("--known-hosts", help="SSH: known_hosts file to check against")
    p.add_argument("--identity", help="SSH: private key file")
    p.add_argument("--benchmark-binary", help="adb: TFLite benchmark_model for the phone")


def _target_options(args: argparse.Namespace) -> dict:
    """The ``parse_target`` keyword arguments given by :func:`_target_args`'s flags."""
    return {"python": args.python, "insecure": args.insecure, "known_hosts": args.known_hosts,
            "identity": args.identity, "benchmark_binary": args.benchmark_binary}


def _target(args: argparse.Namespace):
    from deploy.runtimes import Protocol
    from deploy.targets import parse_target

    t = parse_target(args.target, **_target_options(args))
    return t, Protocol(args.warmup, args.runs, args.trials)


def _train_args(t: argparse.ArgumentParser) -> None:
    from ofa import DATASETS

    t.add_argument("--space", default="mbv3-digits", help="search-space preset")
    t.add_argument("--dataset", default="digits", choices=DATASETS)
    t.add_argument("--data", help=".npz file, dataset folder or ImageFolder tree")
    t.add_argument("--schedule", default="deps", help="ps | deps | path to a schedule YAML")
    t.add_argument("--epochs", type=float, help="total epochs over all phases (default: the "
                   "schedule's short_run setting, deps 14, ps 24)")
    t.add_argument("--batch-size", type=int, default=64, help="global batch size")
    t.add_argument("--lr-scale", type=float, help="multiplies every phase's lr (default: the "
                   "schedule's short_run setting, deps 1, ps 3)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/demo")
    t.add_argument("--ckpt-every", type=int, default=0, help="steps between checkpoints "
                   "(0 = every epoch)")
    t.add_argument("--eval-images", type=int, default=500, help="test images for the "
                   "smallest/largest top-1 at the end of each phase (0 = skip)")
    t.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t.add_argument("--resolutions", help="override the space's resolutions, e.g. 16,20")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def train_config(args: argparse.Namespace):
    from ofa.train.trainer import TrainConfig

    over = {}
    if getattr(args, "resolutions", None):
        over["resolutions"] = [int(v) for v in args.resolutions.split(",")]
    return TrainConfig(out=args.out, space=args.space, space_overrides=over,
                       dataset=args.dataset, data=args.data, schedule=args.schedule,
                       epochs=args.epochs, batch_size=args.batch_size, lr_scale=args.lr_scale,
                       seed=args.seed, ckpt_every=args.ckpt_every, device=args.device,
                       eval_images=args.eval_images, max_steps=args.max_steps)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from ofa.train.trainer import train

    info = train(train_config(args), resume=args.resume)
    if "stopped_at" in info:
        print(f"stopped at step {info['stopped_at']}; continue with --resume")
    else:
        print(f"trained {info['global_steps']} steps; weights in {args.out}")
    return 0


def load_subnet_arg(value: str, space, seed: int = 0):
    """``max`` | ``min`` | ``random`` | path to a JSON subnet config (or search result)."""
    import random
    from pathlib import Path

    from ofa.fileio import read_json
    from ofa.space import SubnetConfig

    if value == "max":
        return space.max_subnet()
    if value == "min":
        return space.min_subnet()
    if value == "random":
        return space.sample(random.Random(seed))
    data = read_json(Path(value), "subnet config")
    if isinstance(data, dict) and "config" in data:
        data = data["config"]
    return space.validate(SubnetConfig.from_dict(data))


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from ofa.data import load_dataset
    from ofa.evaluate import subnet_accuracy
    from ofa.train.trainer import load_run

    net, cfg, _ = load_run(args.checkpoint)
    data = load_dataset(cfg.dataset, args.data or cfg.data, holdout=cfg.holdout, seed=cfg.seed)
    sub_cfg = load_subnet_arg(args.subnet, net.space, args.seed)
    acc = subnet_accuracy(net, sub_cfg, data, args.split, cfg.recal_images)
    res = {"subnet": sub_cfg.to_dict(), "summary": sub_cfg.summary(), "split": args.split,
           "top1": acc, "macs": net.space.macs(sub_cfg), "params": net.space.params(sub_cfg)}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{sub_cfg.summary()}: top-1 {acc:.2f}% on {args.split} "
              f"({res['macs'] / 1e6:.1f} M MACs, {res['params'] / 1e6:.2f} M params)")
    return 0


def _space_from_table(table):
    from ofa.space import SearchSpace

    return SearchSpace.from_dict(table.space)


@command("lut")
def cmd_lut(args: argparse.Namespace) -> int:
    from ofa.space import get_space
    from search.latency_table import import_ofa_yaml

    if args.lut_command == "import-ofa":
        space = get_space(args.space)
        table = import_ofa_yaml(args.dir, space, device=args.device)
        table.save(args.out)
        print(f"wrote {args.out}: {len(table.entries)} entries, resolutions {table.resolutions}")
        return 0
    from deploy.targets import TargetError, parse_target

    # local: timed in this process; a device: blocks exported here, timed there by the agent
    target = (None if args.target == "local"
              else parse_target(args.target, **_target_options(args)))
    try:
        return _lut_measure(args, target)
    except TargetError as exc:
        raise CliError(str(exc)) from None


def _lut_measure(args: argparse.Namespace, target) -> int:
    """``ofa lut build|calibrate|validate`` (on ``target``, None = in this process)."""
    from deploy.lut import build_table, calibrate, validate_table
    from deploy.runtimes import Protocol
    from ofa.fileio import atomic_write_json
    from ofa.space import get_space
    from search.latency_table import LatencyTable

    if args.lut_command == "build":
        kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
        space = get_space(args.space, **kw)
        res = ([int(r) for r in args.resolutions.split(",")] if args.resolutions
               else list(space.resolutions))
        t = build_table(space, res, args.runtime, args.out, threads=args.threads,
                        protocol=Protocol(args.warmup, args.runs, args.trials),
                        calib=args.calib, target=target)
        n = sum(len(g) for g in t.entries.values())
        print(f"wrote {args.out}: {n} entries ({t.describe()}); calibration "
              f"a={t.calibration['a']:.3f} b={t.calibration['b']:.3f} ms")
        return 0
    table = LatencyTable.load(args.table)
    if args.lut_command == "calibrate":
        old = dict(table.calibration)
        calibrate(table, _space_from_table(table), args.calib, seed=args.seed, target=target)
        out = args.out or args.table
        table.save(out)
        print(f"wrote {out}: calibration a={old.get('a', 1):.3f} b={old.get('b', 0):.3f} -> "
              f"a={table.calibration['a']:.3f} b={table.calibration['b']:.3f} ms "
              f"({len(table.calibration['fitted_on'])} subnets)")
        return 0
    rep = validate_table(table, _space_from_table(table), n=args.n, seed=args.seed,
                         plot=args.plot, target=target)
    if args.out:
        atomic_write_json(args.out, rep)
    if args.json:
        print(json.dumps({k: v for k, v in rep.items() if k != "samples"}))
        return 0
    print(f"{rep['context']}: {rep['n']} random subnets measured end to end")
    print(f"{'':12}{'±5%':>8}{'±10%':>8}{'RMSPE':>8}{'tau':>8}")
    for k in ("raw", "calibrated"):
        m = rep[k]
        print(f"{k:12}{m['within_5pct']:7.1f}%{m['within_10pct']:7.1f}%{m['rmspe']:7.2f}%"
              f"{m['kendall_tau']:8.3f}")
    return 0


@command("predictor")
def cmd_predictor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.acc_dataset import build_accuracy_dataset, fit_and_score

    run = Path(args.checkpoint)
    out = Path(args.out) if args.out else run / "acc_predictor.safetensors"
    space, rows = build_accuracy_dataset(run, out.with_name(out.stem + ".dataset.jsonl"),
                                  args.samples, seed=args.seed, split=args.split,
                                  data=args.data, recal_images=args.recal_images,
                                  progress=not args.json)
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


@command("search")
def cmd_search(args: argparse.Namespace) -> int:
    from ofa.fileio import atomic_write_json
    from ofa.space import get_space
    from search.accuracy import load_accuracy_predictor
    from search.evolution import Budget, run_search
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    space = get_space(args.space, **kw)
    lat = None
    if args.table:
        table = LatencyTable.load(args.table, space=space)
        space = space.with_choices(resolutions=tuple(
            r for r in space.resolutions if r in table.resolutions))
        lat = LatencyPredictor(table, space)
    acc = load_accuracy_predictor(args.predictor, space)
    budget = Budget(args.latency_ms, args.macs, args.params, args.size_bytes)
    res = run_search(space, acc, lat, budget, pareto=args.pareto, objective=args.objective,
                     population=args.population, generations=args.generations, seed=args.seed,
                     storage=args.storage, study_name=args.study_name,
                     progress=not args.json)
    if args.out:
        atomic_write_json(args.out, res)
    if args.json:
        print(json.dumps(res))
        return 0
    rows = res.get("front", res["best"])
    print(f"{'acc%':>7} {'lat ms':>8} {'MMACs':>7} {'Mparams':>8}  subnet")
    for r in rows:
        print(f"{r['acc']:7.2f} {r.get('latency_ms', float('nan')):8.2f} {r['macs'] / 1e6:7.1f} "
              f"{r['params'] / 1e6:8.2f}  {r['summary']}")
    return 0


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from deploy.pipeline import RunConfig, run_pipeline, summary_lines
    from deploy.targets import TargetError

    rc = RunConfig(
        name=args.name, root=args.root, dataset=args.dataset, data=args.data, space=args.space,
        resolutions=[int(v) for v in args.resolutions.split(",")] if args.resolutions else None,
        schedule=args.schedule, epochs=args.epochs, batch_size=args.batch_size,
        lr_scale=args.lr_scale, seed=args.seed,
        samples=args.samples, runtime=args.runtime, threads=args.threads, target=args.target,
        target_options=_target_options(args), table=args.table,
        **({"tables_dir": args.tables_dir} if args.tables_dir else {}),
        budgets=[float(v) for v in args.budgets.split(",")] if args.budgets else None,
        population=args.population, generations=args.generations, device=args.device,
        lut_protocol={"warmup": 10, "runs": args.lut_runs, "trials": 3},
        lut_calib=args.lut_calib, formats=[f for f in args.formats.split(",") if f],
        bench_protocol={"warmup": args.warmup, "runs": args.runs, "trials": args.trials})
    try:
        rep = run_pipeline(rc)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    print()
    print("\n".join(summary_lines(rep)))
    print(f"report: {rc.folder / 'report.md'} (and report.json, pareto.png)")
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from deploy.bundle import export_subnet
    from ofa.train.trainer import load_run

    net, _, _ = load_run(args.checkpoint)
    cfg = load_subnet_arg(args.subnet, net.space)
    rep = export_subnet(args.checkpoint, cfg, args.out,
                        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
                        nhwc=args.nhwc, data=args.data, calib_images=args.calib_images,
                        parity_images=args.parity_images, progress=not args.json)
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


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError

    target, protocol = _target(args)
    try:
        res = target.bench(args.model, args.threads, protocol, data=args.data)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['model']} on {res['target']} ({res['runtime']}, {res['threads']} thread(s)): "
          f"median {res['median']:.3f} ms, min {res['min']:.3f} ms over {res['runs']} runs")
    if "accuracy" in res:
        print(f"top-1 {res['accuracy']['top1']:.2f}% on {res['accuracy']['images']} images")
    return 0


@command("deploy")
def cmd_deploy(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError
    from deploy.validate import markdown_table, validate_subnets, write_validation
    from ofa.fileio import read_json

    res = read_json(args.result, "search result")
    rows = res.get("front") or res.get("best") if isinstance(res, dict) else None
    if not rows:
        raise CliError(f"{args.result}: no subnets (expected 'best' or 'front' rows)")
    target, protocol = _target(args)
    try:
        out = validate_subnets(args.checkpoint, rows, args.out, target, runtime=args.runtime,
                               threads=args.threads, protocol=protocol,
                               formats=tuple(f for f in args.formats.split(",") if f),
                               progress=not args.json)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    write_validation(out, args.out, f"{args.result} on {args.target}")
    if args.json:
        print(json.dumps(out))
    else:
        print(markdown_table(out))
    return 0


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ofa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ofa {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
