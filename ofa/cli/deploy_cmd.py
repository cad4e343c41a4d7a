"""``ofa deploy RESULT``: export a search result's subnets, measure them on the target and
compare predicted with measured latency."""

from __future__ import annotations

import argparse
import json
import sys

from ofa.cli.args import CliError, add_target_args, choice_list, default_jobs, int_range
from ofa.cli.bench_cmd import target_and_protocol
from ofa.cli.export_cmd import format_names

NAME, HELP = ("deploy", "export a search result's subnets, measure them on the target, "
              "compare predicted and measured latency")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("result", help="search result JSON (ofa search --out)")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="measure the runtime's model at this precision (the search's table's)")
    p.add_argument("--formats", type=choice_list(format_names, "format"),
                   default=["onnx-fp32", "tflite-fp32"])
    p.add_argument("--out", required=True)
    add_target_args(p)
    p.add_argument("--jobs", type=int_range(1, 256), default=default_jobs(),
                   help="processes exporting the subnets before any is timed (default: the "
                   f"cores, {default_jobs()} here)")
    p.add_argument("--table", help="the latency table the search predicted with (default: "
                   "the one its result names); verified on the target before its predictions "
                   "are compared (kept, adapted or, failing both, left out with a note)")
    p.add_argument("--speed", default=None, choices=["nominal", "sustained"],
                   help="the device speed budgets and ms mean (default: the search's)")
    p.add_argument("--verify-subnets", type=int_range(4, 1000), default=12,
                   help="subnets measured on the target to verify the table")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError
    from deploy.validate import markdown_table, validate_subnets, write_validation
    from ofa.fileio import read_json
    from search.evolution import result_rows

    result = read_json(args.result, "search result")
    rows = result_rows(result, args.result)
    speed = args.speed or result.get("speed", "nominal")
    table_path = args.table or result.get("table")
    table = _load_table(table_path, args) if table_path else None
    target, protocol = target_and_protocol(args)
    try:
        target.check()  # before minutes of export
        if table is not None:
            table = _verified(table, args, target, speed, rows)
        else:
            print(f"note: {args.result} names no latency table: its predicted ms were not "
                  f"checked on {args.target} (pass --table)", file=sys.stderr)
        out = validate_subnets(args.checkpoint, rows, args.out, target, runtime=args.runtime,
                               threads=args.threads, protocol=protocol,
                               formats=tuple(args.formats), progress=not args.json,
                               precision=args.precision, jobs=args.jobs,
                               ms_per_unit=table.probe_ms(speed) if table and table.probe
                               else None,
                               speed={"speed": speed,
                                      "states": table.probe.get("ms") if table else None},
                               table=table)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    write_validation(out, args.out, f"{args.result} on {args.target}")
    print(json.dumps(out) if args.json else markdown_table(out))
    if not args.json:
        for line in _budget_lines(out):
            print(line)
    return 0


def _load_table(path: str, args: argparse.Namespace):
    from ofa.train.run import load_run
    from search.latency_table import LatencyTable

    space = load_run(args.checkpoint)[0].space
    return LatencyTable.load(path, space=space, runtime=args.runtime, threads=args.threads,
                             precision=args.precision)


def _verified(table, args: argparse.Namespace, target, speed: str, rows: list[dict]):
    """``table`` verified on the target (:func:`deploy.verify.verify_table`) unless it was
    built or verified there; the rows' predictions redone with it at ``speed``. Returns the
    table to convert measurements with, or None when it must be rebuilt (its predictions
    are then dropped, with a note)."""
    from deploy.targets import LocalTarget
    from deploy.verify import verify_table
    from ofa.space import SearchSpace, SubnetConfig
    from search.latency import LatencyPredictor

    space = SearchSpace.from_dict(table.space)
    here = isinstance(target, LocalTarget)
    where = "this machine" if here else target.name
    built_there = (table.probe.get("measured") == where
                   or (not here and table.context.get("target") == target.name))
    if not built_there:
        v = verify_table(table, space, k=args.verify_subnets, target=None if here else target,
                         jobs=args.jobs, where=where)
        print(v.line())
        if v.action == "rebuild":
            print(f"note: predicted ms dropped: build a table on {args.target} with "
                  "`ofa lut build --target ...`", file=sys.stderr)
            for r in rows:
                r["latency_ms"] = None
            return None
        table = v.table
    lat = LatencyPredictor(table, space, speed=speed)
    pred = lat.predict_many([SubnetConfig.from_dict(r["config"]) for r in rows])
    for r, p in zip(rows, pred):
        r["latency_ms"] = float(p)
    return table


def _budget_lines(out: list[dict]) -> list[str]:
    """Per budget of the result: the most accurate subnet measured within it, with
    :data:`deploy.budget.MARGIN` to spare."""
    from deploy.budget import MARGIN, choose_measured_budget, margin_pct

    lines = []
    for b in sorted({r["budget_ms"] for r in out if r.get("budget_ms")}):
        rows = [{**r, "acc": r.get("predicted_acc") or 0.0} for r in out]
        pick = choose_measured_budget(b, rows)
        lines.append(f"budget {b:g} ms: " + (
            f"{pick['label']} measured {pick['measured_ms']:.3f} ms "
            f"({margin_pct(b, pick['measured_ms']):+.1f}% margin)" if pick else
            f"no subnet of the result measured {100 * MARGIN:.0f}% or more under it"))
    return lines
