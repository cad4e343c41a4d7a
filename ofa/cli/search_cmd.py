"""``ofa search``: the best subnet for a budget, or the Pareto front (no torch needed)."""

from __future__ import annotations

import argparse
import json

from ofa.cli.args import SEED, float_range, int_range
from ofa.space import preset_names
from search.models import OBJECTIVES

NAME, HELP = "search", "best subnets for a budget, or the Pareto front"
_POSITIVE = float_range(0, lo_open=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="mbv3-cifar", choices=preset_names())
    p.add_argument("--num-classes", type=int_range(1, 100_000))
    p.add_argument("--predictor", required=True, help="accuracy predictor: .safetensors (ours "
                   "or OFA's after `ofa predictor import-ofa`) or OFA's .pth (needs torch)")
    p.add_argument("--table", help="latency lookup table JSON")
    p.add_argument("--speed", default="nominal", choices=["nominal", "sustained"],
                   help="the device speed a latency budget means (a table in probe units: its "
                   "nominal or sustained speed, docs/latency.md)")
    p.add_argument("--precision", choices=["fp32", "int8"], help="the deployed model's "
                   "precision: the table must have been measured at it (default: the table's)")
    p.add_argument("--latency-ms", type=_POSITIVE, help="latency budget (ms)")
    p.add_argument("--macs", type=_POSITIVE, help="MACs budget (absolute)")
    p.add_argument("--params", type=_POSITIVE, help="parameter budget (absolute)")
    p.add_argument("--size-bytes", type=_POSITIVE, help="fp32 model size budget (bytes)")
    p.add_argument("--pareto", action="store_true", help="return the accuracy/latency front")
    p.add_argument("--objective", default="latency_ms", choices=OBJECTIVES)
    p.add_argument("--population", type=int_range(2, 100_000), default=100)
    p.add_argument("--generations", type=int_range(1, 100_000), default=12)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--shortlist", type=int_range(1, 1000), default=1,
                   help="also list up to this many spread-apart subnets within "
                   "--shortlist-margin of the best prediction, to measure before choosing")
    p.add_argument("--shortlist-margin", type=float_range(0, 100),
                   help="top-1 points (default: the predictor's held-out RMSE, else 0.5)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (resumable; keyed "
                   "by the query)")
    p.add_argument("--study-name", default="ofa-search")
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ofa.fileio import atomic_write_json
    from ofa.space import get_space
    from search.accuracy import load_accuracy_predictor
    from search.evolution import Budget, SearchConfig, run_search
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    space = get_space(args.space, **kw)
    lat = None
    if args.table:
        table = LatencyTable.load(args.table, space=space, precision=args.precision)
        space = space.with_choices(resolutions=tuple(
            r for r in space.resolutions if r in table.resolutions))
        lat = LatencyPredictor(table, space, speed=args.speed)
    acc = load_accuracy_predictor(args.predictor, space)
    margin = args.shortlist_margin
    if margin is None:
        margin = float(acc.metrics.get("rmse", 0.5))
    config = SearchConfig(
        budget=Budget(args.latency_ms, args.macs, args.params, args.size_bytes),
        pareto=args.pareto, objective=args.objective, population=args.population,
        generations=args.generations, seed=args.seed, storage=args.storage,
        study_name=args.study_name, progress=not args.json, shortlist=args.shortlist,
        shortlist_margin=margin)
    res = run_search(space, acc, lat, config)
    if args.table:  # what `ofa deploy` verifies on its target and predicts again with
        res["table"], res["speed"] = args.table, args.speed
    if args.out:
        atomic_write_json(args.out, res)
    if args.json:
        print(json.dumps(res))
        return 0
    _print_rows(res.get("front", res["best"]))
    if "shortlist" in res:
        print(f"\nshortlist: {len(res['shortlist'])} subnets within {margin:.2f} points of "
              "the best prediction; measure them before choosing")
        _print_rows(res["shortlist"])
    return 0


def _print_rows(rows: list[dict]) -> None:
    print(f"{'acc%':>7} {'lat ms':>8} {'MMACs':>7} {'Mparams':>8}  subnet")
    for r in rows:
        print(f"{r['acc']:7.2f} {r.get('latency_ms', float('nan')):8.2f} {r['macs'] / 1e6:7.1f} "
              f"{r['params'] / 1e6:8.2f}  {r['summary']}")
