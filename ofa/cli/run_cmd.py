"""``ofa run``: the whole job, step by step and resumable (see :mod:`ofa.pipeline`)."""

from __future__ import annotations

import argparse

from deploy.ontarget.runtimes import TimingProtocol
from ofa.cli.args import (
    CliError,
    add_target_args,
    choice_list,
    float_list,
    float_range,
    int_range,
)
from ofa.cli.export_cmd import format_names
from ofa.cli.train_cmd import add_training_args

NAME, HELP = "run", ("the whole job: train, predictor, table, search, export, measure, report "
                     "(resumable)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="demo", help="runs/<name>/")
    p.add_argument("--root", default="runs")
    p.add_argument("--supernet", help="reuse this trained or imported run folder (no "
                   "training; its space and dataset apply, --data overrides its data path)")
    add_training_args(p, deployed=True)
    p.add_argument("--samples", type=int_range(10, 1_000_000), default=None,
                   help="subnets measured for the accuracy predictor (>= 10; default 300, "
                   "100 on the embedded digits: see docs/cifar10.md)")
    p.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert"])
    p.add_argument("--budgets", type=float_list(0.0), help="latency budgets in ms, e.g. "
                   "5,8,12 (default: 3 spread between the smallest and largest subnet)")
    p.add_argument("--table", help="latency table to use instead of a shipped/built one")
    p.add_argument("--tables-dir", default=None, help="where to look for a table measured on "
                   "this machine (default: the tables shipped in the latency_tables package)")
    p.add_argument("--shortlist", type=int_range(1, 100), default=1,
                   help="per budget, measure this many subnets within the predictor's error "
                   "of the best prediction on the hold-out split and choose the most accurate "
                   "(default 1: the search's best, unmeasured; on CIFAR-10 8 gained nothing: "
                   "docs/cifar10.md)")
    p.add_argument("--speed", default="nominal", choices=["nominal", "sustained"],
                   help="the device speed a budget means: nominal (default: the probe's "
                   "median over the table's measurements) or sustained (its slow end, p90: "
                   "a throttled board or a busy phone); docs/latency.md")
    p.add_argument("--budget-candidates", type=int_range(0, 100), default=6,
                   help="per budget, measure this many candidates near it on the target and "
                   "return the most accurate one that meets the budget as measured (0: the "
                   "search's choice, unmeasured)")
    p.add_argument("--generations", type=int_range(1, 100_000), default=12)
    p.add_argument("--population", type=int_range(2, 100_000), default=100)
    p.add_argument("--lut-runs", type=int_range(1, 100_000), default=TimingProtocol.runs,
                   help="timed invokes per trial when a latency table is built")
    p.add_argument("--lut-calib", type=int_range(1, 10_000), default=10,
                   help="whole subnets for calibration")
    p.add_argument("--finetune-epochs", type=float_range(0, 100_000), default=0.0,
                   help="fine-tune every chosen subnet this many epochs with distillation "
                   "before export (0: no fine-tuning)")
    p.add_argument("--formats", type=choice_list(format_names, "format"),
                   default=["onnx-fp32", "tflite-fp32"],
                   help="exported per subnet (the runtime's own format is always included)")
    add_target_args(p, runs=30)  # 300 timed invokes per chosen subnet


def run_config(args: argparse.Namespace):
    """The :class:`~ofa.pipeline.RunConfig` of ``ofa run``'s arguments, one settings group
    per step."""
    from ofa.cli.args import deployed_precision_of, target_options
    from ofa.cli.train_cmd import train_config
    from ofa.pipeline import (
        DeploySettings,
        PredictorSettings,
        RunConfig,
        SearchSettings,
        TableSettings,
    )

    return RunConfig(
        name=args.name, root=args.root, supernet=args.supernet,
        train=train_config(args, deployed=True),
        predictor=PredictorSettings(samples=args.samples, recal_images=(
            args.recal_images or PredictorSettings.recal_images)),
        table=TableSettings(path=args.table, tables_dir=args.tables_dir,
                            protocol={"warmup": TimingProtocol.warmup, "runs": args.lut_runs,
                                      "trials": TimingProtocol.trials},
                            calib=args.lut_calib),
        search=SearchSettings(budgets=args.budgets, speed=args.speed,
                              population=args.population, generations=args.generations,
                              shortlist=args.shortlist,
                              budget_candidates=args.budget_candidates),
        deploy=DeploySettings(runtime=args.runtime, precision=deployed_precision_of(args),
                              threads=args.threads, target=args.target,
                              target_options=target_options(args), formats=args.formats,
                              bench_protocol={"warmup": args.warmup, "runs": args.runs,
                                              "trials": args.trials}),
        finetune_epochs=args.finetune_epochs, finetune_recal_images=args.recal_images)


def run(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError
    from ofa.pipeline import run_pipeline, summary_lines

    rc = run_config(args)
    try:
        rep = run_pipeline(rc)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    print()
    print("\n".join(summary_lines(rep)))
    print(f"report: {rc.folder / 'report.md'} (and report.json, pareto.png)")
    return 0
