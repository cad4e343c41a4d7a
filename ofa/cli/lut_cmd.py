"""``ofa lut build | calibrate | import-ofa | validate | verify``: latency lookup tables."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from ofa.cli.args import (
    SEED,
    CliError,
    add_target_conn_args,
    default_jobs,
    int_list,
    int_range,
    target_options,
)
from ofa.space import preset_names

NAME, HELP = "lut", "latency lookup tables: build, calibrate, import-ofa, validate, verify"
RUNTIMES = ("onnxruntime", "litert", "torch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lut_command", required=True)
    for add in (_add_build, _add_calibrate, _add_import_ofa, _add_validate, _add_verify):
        add(sub)


def _add_build(sub: Any) -> None:
    b = sub.add_parser("build", help="measure a table on this machine or a device (resumable)")
    b.add_argument("--space", default="mbv3-cifar", choices=preset_names())
    b.add_argument("--num-classes", type=int_range(1, 100_000))
    b.add_argument("--resolutions", type=int_list(8, 4096),
                   help="comma list (default: all of the space's)")
    b.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES)
    b.add_argument("--threads", type=int_range(1, 256), default=1)
    b.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="int8: blocks and subnets as `ofa export` writes int8 models (ONNX QDQ, "
                   "full-integer TFLite)")
    b.add_argument("--warmup", type=int_range(0, 100_000), default=TimingProtocol.warmup)
    b.add_argument("--runs", type=int_range(1, 100_000), default=TimingProtocol.runs)
    b.add_argument("--trials", type=int_range(1, 1000), default=TimingProtocol.trials)
    b.add_argument("--calib", type=int_range(0, 10_000), default=10,
                   help="whole subnets for calibration (0 = none)")
    b.add_argument("--calib-repeats", type=int_range(1, 20), default=3,
                   help="passes timing the calibration subnets, each subnet's median kept "
                   "(one pass sees the device in one speed state)")
    b.add_argument("--batch", type=int_range(1, 10_000), default=32,
                   help="blocks timed together in interleaved trials (the partial table is "
                   "saved after each batch): per request to the agent on a --target "
                   "device; here, every model is converted by --jobs first, then the "
                   "batches are timed back to back")
    b.add_argument("--out", required=True)
    b.add_argument("--no-prefetch", action="store_true",
                   help="on an SSH --target, load each batch only after the one before is "
                   "timed (default: the next batch loads on a spare device core meanwhile)")
    _jobs(b)
    add_target_conn_args(b)


def _add_calibrate(sub: Any) -> None:
    c = sub.add_parser("calibrate", help="refit a table's calibration a*sum^p + w*Mparams "
                       "on whole subnets measured here (e.g. a shipped table on another "
                       "machine of its type)")
    c.add_argument("table")
    c.add_argument("--calib", type=int_range(1, 10_000), default=10,
                   help="random subnets (+ largest, smallest)")
    c.add_argument("--repeats", type=int_range(1, 20), default=3,
                   help="passes timing the calibration subnets, each subnet's median kept")
    c.add_argument("--seed", type=SEED, default=0)
    c.add_argument("--out", help="where to write the recalibrated table (default: in place)")
    c.add_argument("--force", action="store_true", help="calibrate a table measured on "
                   "another CPU model (its block ratios need not hold here)")
    c.add_argument("--refit", action="store_true", help="measure nothing: refit on the "
                   "subnets the table was calibrated on (its fitted_on; e.g. a table "
                   "calibrated with an earlier, straight-line fit)")
    _jobs(c)
    add_target_conn_args(c)


def _add_import_ofa(sub: Any) -> None:
    i = sub.add_parser("import-ofa", help="convert OFA's <r>_lookup_table.yaml files")
    i.add_argument("dir")
    i.add_argument("--out", required=True)
    i.add_argument("--space", default="mbv3-w1.2", choices=preset_names())
    i.add_argument("--machine", "--device", dest="machine", default="Samsung Note10",
                   help="the measured machine's name, for the table's context")


def _add_validate(sub: Any) -> None:
    v = sub.add_parser("validate", help="measure random subnets against a table")
    v.add_argument("table")
    v.add_argument("-n", type=int_range(2, 100_000), default=100)
    v.add_argument("--seed", type=SEED, default=1234)
    v.add_argument("--repeats", type=int_range(1, 20), default=1,
                   help="time each subnet this many times and keep its median (default 1)")
    v.add_argument("--plot", help="scatter plot PNG path")
    v.add_argument("--out", help="write the report JSON here")
    v.add_argument("--json", action="store_true")
    v.add_argument("--force", action="store_true", help="validate a table of another CPU model")
    _jobs(v)
    add_target_conn_args(v)


def _add_verify(sub: Any) -> None:
    f = sub.add_parser("verify", help="check a table on this machine or a --target device "
                       "with subnets measured beside the probe: keep, adapt or rebuild it")
    f.add_argument("table")
    f.add_argument("-k", type=int_range(4, 10_000), default=12,
                   help="subnets measured (half fit, half test)")
    f.add_argument("--seed", type=SEED, default=4321)
    f.add_argument("--out", help="where to write the kept or adapted table (default: not "
                   "written)")
    f.add_argument("--json", action="store_true")
    _jobs(f)
    add_target_conn_args(f)


def _jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int_range(1, 256), default=default_jobs(),
                   help="processes converting models (blocks built here, whole subnets) "
                   f"before they are timed (default: the cores, {default_jobs()} here)")


def run(args: argparse.Namespace) -> int:
    from ofa.space import get_space
    from search.latency_table import import_ofa_yaml

    if args.lut_command == "import-ofa":
        table = import_ofa_yaml(args.dir, get_space(args.space), device=args.machine)
        table.save(args.out)
        n = sum(len(g) for g in table.entries.values())
        print(f"wrote {args.out}: {n} entries, resolutions {table.resolutions}")
        return 0
    from deploy.targets import TargetError, parse_target

    # local: timed in this process; a device: blocks exported here, timed there by the agent
    target = (None if args.target == "local"
              else parse_target(args.target, **target_options(args)))
    try:
        return {"build": _build, "calibrate": _calibrate, "validate": _validate,
                "verify": _verify}[args.lut_command](args, target)
    except TargetError as exc:
        raise CliError(str(exc)) from None


def _build(args: argparse.Namespace, target) -> int:
    from deploy.targets import start_in_background

    if target is not None:
        if args.no_prefetch and hasattr(target, "prefetch"):
            target.prefetch = False
        start_in_background(target, args.runtime)  # the device starts while torch imports
    from deploy.lut import build_table
    from deploy.ontarget.runtimes import TimingProtocol
    from ofa.space import get_space

    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    space = get_space(args.space, **kw)
    res = args.resolutions or list(space.resolutions)
    t = build_table(space, res, args.runtime, args.out, threads=args.threads,
                    protocol=TimingProtocol(args.warmup, args.runs, args.trials),
                    calib=args.calib, target=target, batch=args.batch,
                    precision=args.precision, jobs=args.jobs,
                    calib_repeats=args.calib_repeats)
    n = sum(len(g) for g in t.entries.values())
    print(f"wrote {args.out}: {n} entries ({t.describe()}); calibration "
          f"{t.calibration_text()}")
    return 0


def _table_and_space(args: argparse.Namespace, target):
    """The table of ``args.table`` and its space. A table measured on another CPU model
    than this machine is measured all the same, with a one-line note: the subnets are timed
    beside the probe, so the report says how well the table holds here (the CPU model
    string alone decides nothing; ``ofa lut verify`` keeps, adapts or rebuilds).
    """
    from deploy.ontarget.facts import machine_facts
    from ofa.space import SearchSpace
    from search.latency_table import LatencyTable

    table = LatencyTable.load(args.table)
    dev = table.context.get("machine")
    theirs = dev.get("cpu_model") if isinstance(dev, dict) else None
    mine = machine_facts()["cpu_model"]
    if target is None and theirs != mine:
        print(f"note: {args.table} was measured on {theirs or 'an unknown CPU'}, this machine "
              f"is {mine}: measuring it here all the same", file=sys.stderr)
    return table, SearchSpace.from_dict(table.space)


def _calibrate(args: argparse.Namespace, target) -> int:
    from deploy.lut import calibrate, refit_calibration
    from search.latency_table import LatencyTable

    if args.refit:
        table = LatencyTable.load(args.table)
        old = table.calibration_text()
        try:
            refit_calibration(table)
        except ValueError as exc:
            raise CliError(f"{args.table}: {exc}") from None
    else:
        table, space = _table_and_space(args, target)
        old = table.calibration_text()
        calibrate(table, space, args.calib, seed=args.seed, target=target, jobs=args.jobs,
                  repeats=args.repeats)
    out = args.out or args.table
    table.save(out)
    print(f"wrote {out}: calibration {old} -> {table.calibration_text()} "
          f"({len(table.calibration['fitted_on'])} subnets)")
    return 0


def _validate(args: argparse.Namespace, target) -> int:
    from deploy.lut import validate_table
    from ofa.fileio import atomic_write_json

    table, space = _table_and_space(args, target)
    rep = validate_table(table, space, n=args.n, seed=args.seed, plot=args.plot, target=target,
                         jobs=args.jobs, repeats=args.repeats)
    if args.out:
        atomic_write_json(args.out, rep)
    if args.json:
        print(json.dumps({k: v for k, v in rep.items() if k != "samples"}))
        return 0
    print(f"{rep['context']}: {rep['n']} random subnets measured end to end beside the probe")
    print(f"{'':34}{'±5%':>8}{'±10%':>8}{'RMSPE':>8}{'tau':>8}")
    unit = "probe units" if rep["unit"] == "probe" else "ms"
    rows = [(f"raw block sum ({unit})", rep["raw"]),
            ("probe-relative (calibrated)", rep["relative"]),
            *([("  without the reference subnet", rep["relative_probe"])]
              if rep["speed"].get("reference_now_vs_table") else []),
            ("absolute ms at the table's speed", rep["absolute"])]
    for name, m in rows:
        if m is not None:
            print(f"{name:34}{m['within_5pct']:7.1f}%{m['within_10pct']:7.1f}%"
                  f"{m['rmspe']:7.2f}%{m['kendall_tau']:8.3f}")
    print(speed_line(rep["speed"]))
    return 0


def _verify(args: argparse.Namespace, target) -> int:
    from deploy.verify import verify_table

    table, space = _table_and_space(args, target)
    v = verify_table(table, space, k=args.k, seed=args.seed, target=target, jobs=args.jobs,
                     where="this machine" if target is None else target.name)
    if args.out and v.action != "rebuild":
        v.table.save(args.out)
    if args.json:
        print(json.dumps({**v.details, "out": args.out if v.action != "rebuild" else None}))
        return 0
    print(v.line())
    if v.action != "rebuild" and v.table.probe:
        print(v.table.speed_text())
    return 0


def speed_line(speed: dict) -> str:
    """One line: the device's speed (the probe's median ms) during a measurement, beside
    the table's."""
    now = speed["now"]
    line = (f"device speed now: probe {now['median']:.4f} ms median, {now['fastest']:.4f}-"
            f"{now['slowest']:.4f} ms ({now['range']:.2f}x)")
    if speed.get("table"):
        line += (f"; the table's build: {speed['table']['median']:.4f} ms "
                 f"({speed['now_vs_table']:.2f}x slower now)" if speed["now_vs_table"] >= 1
                 else f"; the table's build: {speed['table']['median']:.4f} ms "
                 f"({1 / speed['now_vs_table']:.2f}x faster now)")
    if speed.get("reference_now_vs_table"):
        line += (f"; reference subnet {speed['reference_now_vs_table']:.3f}x its "
                 "calibration's probe units")
        if speed.get("reference_weight") is not None:
            line += f", followed with weight {speed['reference_weight']:.2f}"
    return line
