"""``ofa deploy RESULT``: export a search result's subnets, measure them on the target and
compare predicted with measured latency."""

from __future__ import annotations

import argparse
import json

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
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from deploy.targets import TargetError
    from deploy.validate import markdown_table, validate_subnets, write_validation
    from ofa.fileio import read_json
    from search.evolution import result_rows

    rows = result_rows(read_json(args.result, "search result"), args.result)
    target, protocol = target_and_protocol(args)
    try:
        target.check()  # before minutes of export
        out = validate_subnets(args.checkpoint, rows, args.out, target, runtime=args.runtime,
                               threads=args.threads, protocol=protocol,
                               formats=tuple(args.formats), progress=not args.json,
                               precision=args.precision, jobs=args.jobs)
    except TargetError as exc:
        raise CliError(str(exc)) from None
    write_validation(out, args.out, f"{args.result} on {args.target}")
    print(json.dumps(out) if args.json else markdown_table(out))
    return 0
