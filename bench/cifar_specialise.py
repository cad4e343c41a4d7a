"""Does the search pay on CIFAR-10? Predictor quality vs sample count, searched subnets vs the
best of random ones under the same latency budget, and fine-tuning vs training from scratch.

Starts from a trained ``mbv3-cifar`` supernet (``--supernet RUN``: ``ofa train``, ``ofa run``'s
``supernet/`` folder, or ``bench/gpu_session.sh cifar``) and, in ``--work``:

1. measures ``max(--samples)`` subnets on the hold-out split (the accuracy-predictor dataset)
   and fits the predictor on the first 100 / 300 / 1,000: held-out RMSE and Kendall tau each;
2. searches (:func:`search.evolution.run_search`) the best subnet under 3 latency budgets
   spread over the table's range, with the predictor fitted on all samples; with
   ``--shortlist K`` > 1, as ``ofa run --shortlist K``, the most accurate of each budget's
   shortlist measured on the hold-out split is chosen instead of the search's best;
3. measures on the test split the chosen subnet and ``--random`` random subnets that meet the
   same budget (by the same table): top-1 must rise with the budget and beat the random best;
   then measures the chosen subnet and the ``--recheck`` best random ones again on the
   hold-out split, where the random best is not the maximum of many noisy measurements;
4. fine-tunes each chosen subnet (KD from the largest subnet) and trains the same subnet from
   fresh weights (``ofa finetune --scratch``) for the same number of steps.

The latency table (``--table``, default the shipped x86_64 onnxruntime table of
``mbv3-cifar`` at 32 px) only defines the budgets; its CPU need not be this one. Accuracy work
runs on ``--device`` (a GPU makes it minutes instead of hours). Every step keeps its output in
``--work`` and is skipped or resumed when run again.

    python bench/cifar_specialise.py --supernet runs/c10/supernet --device cuda
    python bench/cifar_specialise.py --supernet RUN --samples 20,40 --random 5 \\
        --finetune-epochs 0.05 --work /tmp/spec          # a quick look

Writes ``bench/results/cifar_specialise.json`` (or ``--json``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "latency_tables" / "x86_64_mbv3-cifar_onnxruntime_fp32_t1.json"


def _cached(path: Path, make):
    from ofa.fileio import atomic_write_json, read_json

    if path.exists():
        return read_json(path, "benchmark step")
    out = make()
    atomic_write_json(path, out)
    return out


def predictor_curve(args, work: Path):
    """Step 1: rows of ``{n, rmse, kendall_tau}`` and the predictor fitted on every row."""
    from search.acc_dataset import build_accuracy_dataset, fit_and_score

    sizes = sorted(int(s) for s in args.samples.split(","))
    space, rows = build_accuracy_dataset(args.supernet, work / "acc.jsonl", sizes[-1],
                                         recal_images=args.recal_images, device=args.device,
                                         autocast=args.autocast, data=args.data)
    curve = []
    for n in sizes:
        pred, m = fit_and_score(space, rows[:n], seed=0)
        curve.append({"samples": n, "rmse": m["rmse"], "kendall_tau": m["kendall_tau"],
                      "acc_mean": m["acc_mean"], "acc_std": m["acc_std"]})
    pred.metrics = m
    pred.save(work / "acc_predictor.safetensors")
    return space, curve


def search_budgets(args, work: Path, space) -> tuple[list[dict], object, object]:
    """Step 2: the chosen subnet per budget (ms), the space restricted to the table's
    resolutions, and the latency model."""
    from ofa.pipeline import auto_budgets
    from search.acc_dataset import choose_measured
    from search.accuracy import AccuracyPredictor
    from search.evolution import Budget, SearchConfig, run_search
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    table = LatencyTable.load(args.table, space=space)
    space = space.with_choices(resolutions=tuple(
        r for r in space.resolutions if r in table.resolutions))
    lat = LatencyPredictor(table, space)
    acc = AccuracyPredictor.load(work / "acc_predictor.safetensors")
    budgets = ([float(b) for b in args.budgets.split(",")] if args.budgets
               else auto_budgets(lat, space))

    def make():
        found = [run_search(space, acc, lat, SearchConfig(
            Budget(latency_ms=b), seed=0, shortlist=args.shortlist,
            shortlist_margin=acc.metrics["rmse"])) for b in budgets]
        if args.shortlist == 1:
            return [{"budget_ms": b, **res["best"][0]} for b, res in zip(budgets, found)]
        picks = choose_measured(args.supernet, [res["shortlist"] for res in found],
                                work / "holdout.jsonl", data=args.data,
                                recal_images=args.recal_images, device=args.device,
                                autocast=args.autocast)
        return [{"budget_ms": b, **c} for b, c in zip(budgets, picks)]
    name = "search.json" if args.shortlist == 1 else f"search_shortlist{args.shortlist}.json"
    return _cached(work / name, make), space, lat


def _ck(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def measure(args, work: Path, space, lat, chosen: list[dict]) -> list[dict]:
    """Step 3: test top-1 of each chosen subnet and of ``--random`` random subnets under the
    same budget (one line per measured subnet in ``random.jsonl``; resumable)."""
    from ofa.data import load_dataset
    from ofa.device import conv_memory_format, resolve_device
    from ofa.evaluate import subnet_accuracy
    from ofa.space import SubnetConfig
    from ofa.train.run import load_run

    log = work / "measured.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            done[(row["budget_ms"], row["kind"], row["i"], _ck(row["config"]))] = row
    net, cfg, _ = load_run(args.supernet)
    dev = resolve_device(args.device)
    conv_memory_format(dev)  # on CUDA: depthwise convolutions off cuDNN's per-shape plans
    net.to(dev)
    data = load_dataset(cfg.dataset, args.data or cfg.data, holdout=cfg.holdout, seed=cfg.seed)
    cache: dict = {}
    todo = {}  # budget -> [(kind, i, subnet)]: the chosen subnet, then the random ones
    for c in chosen:
        b = c["budget_ms"]
        rng = random.Random(f"random-{b}")
        cands, tries = [], 0
        while len(cands) < args.random and tries < 200 * args.random:
            s = space.sample(rng)
            tries += 1
            if lat.predict(s) <= b:
                cands.append(s)
        todo[b] = [("chosen", 0, SubnetConfig.from_dict(c["config"]))]
        todo[b] += [("random", i, s) for i, s in enumerate(cands)]
    # round-robin over the budgets (the chosen subnets first), so that a run stopped early
    # has compared every budget on the same number of random subnets
    order = [(b, *todo[b][k]) for k in range(max(map(len, todo.values())))
             for b in todo if k < len(todo[b])]
    for b, kind, i, s in order:
        key = (b, kind, i, _ck(s.to_dict()))  # the chosen subnet differs with --shortlist
        if key not in done:
            top1 = subnet_accuracy(net, s, data, "test", args.recal_images, cache=cache,
                                   autocast=args.autocast)
            done[key] = {"budget_ms": b, "kind": kind, "i": i, "config": s.to_dict(),
                         "latency_ms": lat.predict(s), "top1": top1}
            with log.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
    rows, recheck = [], []
    for b, subnets in todo.items():
        measured = [done[(b, kind, i, _ck(s.to_dict()))] for kind, i, s in subnets]
        rand = sorted((m for m in measured if m["kind"] == "random"), key=lambda m: -m["top1"])
        recheck.append([measured[0]] + rand[:args.recheck])
        rows.append({"budget_ms": b, "chosen_latency_ms": measured[0]["latency_ms"],
                     "chosen_top1": measured[0]["top1"], "random_n": len(rand),
                     "random_best": rand[0]["top1"] if rand else float("nan"),
                     "random_median": (sorted(m["top1"] for m in rand)[len(rand) // 2]
                                       if rand else float("nan"))})
    # the best of N measured subnets is also the one whose measurement erred most upwards:
    # measure the chosen one and the best random ones again on other images (the hold-out
    # split), where no selection has happened
    if args.recheck:
        from search.acc_dataset import measure_subnets

        again = iter(measure_subnets(args.supernet, work / "holdout.jsonl",
                                     [m["config"] for ms in recheck for m in ms],
                                     data=args.data, recal_images=args.recal_images,
                                     device=args.device, autocast=args.autocast))
        for row, ms in zip(rows, recheck):
            h = [next(again) for _ in ms]
            row["chosen_holdout"] = h[0]
            row["random_best_holdout"] = h[1:]  # of the best random ones on test, in order
    return rows


def finetune_vs_scratch(args, work: Path, chosen: list[dict]) -> list[dict]:
    """Step 4: fine-tune each chosen subnet and train it from scratch, same steps."""
    from ofa.train.finetune import FINETUNE_CKPT, FINETUNE_JSON, FinetuneConfig, finetune

    rows = []
    for i, c in enumerate(chosen):
        res = {}
        for kind, kw in (("finetune", {"kd": True}),
                         ("scratch", {"kd": False, "scratch": True, "lr": args.scratch_lr})):
            out = work / f"{kind}_b{i + 1}"
            if (out / FINETUNE_JSON).exists():
                res[kind] = json.loads((out / FINETUNE_JSON).read_text())
                continue
            res[kind] = finetune(FinetuneConfig(
                run=str(args.supernet), subnet=c["config"], out=str(out),
                epochs=args.finetune_epochs, batch_size=args.batch_size, device=args.device,
                autocast=args.autocast, data=args.data, ckpt_every=100, **kw),
                resume=(out / FINETUNE_CKPT).exists())
        rows.append({"budget_ms": c["budget_ms"],
                     "before": res["finetune"]["top1_before"],
                     "finetuned": res["finetune"]["top1_after"],
                     "scratch": res["scratch"]["top1_after"],
                     "epochs": args.finetune_epochs,
                     "finetune_s": res["finetune"]["train_seconds"],
                     "scratch_s": res["scratch"]["train_seconds"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", required=True, help="trained mbv3-cifar run folder")
    ap.add_argument("--data", help="override the run's --data path")
    ap.add_argument("--work", default="runs/specialise")
    ap.add_argument("--table", default=str(TABLE))
    ap.add_argument("--samples", default="100,300,1000", help="predictor sample counts")
    ap.add_argument("--budgets", help="ms, e.g. 1.5,2.2,3 (default: 3 over the table's range)")
    ap.add_argument("--random", type=int, default=100, help="random subnets per budget")
    ap.add_argument("--recheck", type=int, default=3, help="the best random subnets per "
                    "budget measured again on the hold-out split, with the chosen one")
    ap.add_argument("--shortlist", type=int, default=1, help="as ofa run --shortlist (1: the "
                    "search's best, unmeasured)")
    ap.add_argument("--recal-images", type=int, default=500)
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    ap.add_argument("--scratch-lr", type=float, default=1.0, help="peak lr at batch 2048")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--autocast", default="auto")
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--predictor-only", action="store_true",
                    help="step 1 alone: the predictor curve (writes predictor.json in --work)")
    ap.add_argument("--json", help="result file (default bench/results/cifar_specialise.json)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    space, curve = predictor_curve(args, work)
    print_table(curve)
    if args.predictor_only:
        (work / "predictor.json").write_text(json.dumps(curve, indent=1) + "\n")
        return
    chosen, space, lat = search_budgets(args, work, space)
    rows = measure(args, work, space, lat, chosen)
    print()
    print_table(rows)
    ft = [] if args.skip_finetune else finetune_vs_scratch(args, work, chosen)
    print()
    print_table(ft)
    res = {"supernet": str(args.supernet), "table": str(args.table), "predictor": curve,
           "budgets": rows, "finetune": ft, "chosen": chosen}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    else:
        write_json("cifar_specialise", res)


if __name__ == "__main__":
    main()
