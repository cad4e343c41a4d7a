"""Progressive shrinking vs delayed ε-shrinking at the same compute budget, plus scratch baselines.

Trains ``mbv3-cifar`` on CIFAR-10 (``../shared/data/cifar10.npz`` by default) with the ``ps``
and the ``deps`` schedule, each for as many epochs as fit in ``--minutes`` of wall time on this
machine (estimated from a short probe of every phase), then reports top-1 on the whole test
split, after BN recalibration, of the smallest, the largest and 3 fixed mid-size subnets, with
wall time and training images per second (data images, whatever the number of subnets a step
trains; wall time sums every stretch of a resumed run, phase-end evaluations included). Two of
the mid-size subnets are also trained from scratch (``scratch`` schedule: one full-network
phase) for the DεpS run's number of epochs.

    python bench/train_compare.py --minutes 60            # the issue's setting (~4.5 h in all)
    python bench/train_compare.py --minutes 8 --runs /tmp/tc   # a quick look

Each training run lives in ``--runs``/<name> and resumes when interrupted; finished runs are
not retrained. Writes ``bench/results/train_compare_<minutes>min.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"
# uniform mid-size subnets (kernel, expand, depth) at the largest resolution
MID = [(5, 4, 3), (3, 6, 3), (7, 3, 2)]


def _cfg(out: Path, schedule: str, epochs: float, args, **over):
    from ofa.train.trainer import TrainConfig

    return TrainConfig(out=str(out), space="mbv3-cifar", dataset="cifar10", data=str(args.data),
                       schedule=schedule, epochs=epochs, batch_size=args.batch_size,
                       lr_scale=args.lr_scale, seed=0, eval_images=1000, space_overrides=over,
                       ckpt_every=100)  # a killed run loses at most 100 steps


def _epochs_for(schedule: str, args, **over) -> tuple[float, float]:
    """(epochs that fit in ``args.minutes``, probed seconds per epoch); the probe is kept in
    ``--runs``/probe-<schedule>.json so that a resumed benchmark keeps its budgets."""
    from ofa.fileio import atomic_write_json, read_json
    from ofa.train.trainer import Trainer

    saved = Path(args.runs) / f"probe-{schedule}.json"
    probe = read_json(saved, "probe file") if saved.exists() else {}
    if probe.get("batch_size") == args.batch_size:
        sec = float(probe["seconds_per_epoch"])
    else:  # none yet, or probed for another batch size
        with tempfile.TemporaryDirectory() as tmp:
            sec = Trainer(_cfg(Path(tmp), schedule, 1.0, args, **over)).estimate_epoch_seconds()
        atomic_write_json(saved, {"schedule": schedule, "batch_size": args.batch_size,
                                  "seconds_per_epoch": sec})
    epochs = max(0.2, round(args.minutes * 60 / sec, 2))
    print(f"{schedule}: probe says {sec / 60:.1f} min per epoch here -> {epochs:g} epochs "
          f"in {args.minutes:g} min", flush=True)
    return epochs, sec


def _train(name: str, schedule: str, epochs: float, args, **over) -> tuple[Path, float]:
    """(run folder, training wall time in s summed over resumed stretches; NaN for a run
    finished before the trainer recorded it)."""
    from ofa.fileio import read_json
    from ofa.train.trainer import CKPT, RUN_JSON, train

    out = Path(args.runs) / name
    if (out / RUN_JSON).exists():
        print(f"{name}: trained already ({out})")
        info = read_json(out / RUN_JSON, "run file")
    else:
        info = train(_cfg(out, schedule, epochs, args, **over), resume=(out / CKPT).exists())
    return out, float(info.get("train_seconds", float("nan")))


def _top1(run: Path, cfgs) -> tuple[list[float], int]:
    """Top-1 (%) of ``cfgs`` on the whole test split after BN recalibration, and the number
    of training images per epoch (kept in ``run``/bench_top1.json for a resumed benchmark)."""
    from ofa.data import load_dataset
    from ofa.evaluate import subnet_accuracy
    from ofa.fileio import atomic_write_json, read_json
    from ofa.train.trainer import load_run

    saved = run / "bench_top1.json"
    if saved.exists():
        d = read_json(saved, "benchmark result")
        if d["configs"] == [c.to_dict() for c in cfgs]:
            return d["top1"], d["train_images"]
    net, cfg, _ = load_run(run)
    data = load_dataset(cfg.dataset, cfg.data, holdout=cfg.holdout, seed=cfg.seed)
    cache: dict = {}
    top1 = [subnet_accuracy(net, c, data, "test", 2000, cache=cache) for c in cfgs]
    n_train = len(data.split("train"))
    atomic_write_json(saved, {"configs": [c.to_dict() for c in cfgs], "top1": top1,
                              "train_images": n_train})
    return top1, n_train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget per schedule")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="multiplies every phase's lr (1 = the reference rates, both schedules)")
    ap.add_argument("--runs", default="runs/bench_train")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skipped: {args.data} is absent (CIFAR-10 .npz from ../shared/data)")
        return
    from ofa.space import get_space

    space = get_space("mbv3-cifar")
    r = max(space.resolutions)
    subnets = {"smallest": space.min_subnet(r), "largest": space.max_subnet(r)}
    for k, e, d in MID:
        subnets[f"k{k}e{e}d{d}"] = space.config(k, e, d, r)
    rows, epochs_of = [], {}
    for sched in ("ps", "deps"):
        epochs, sec = _epochs_for(sched, args)
        epochs_of[sched] = epochs
        run, wall = _train(f"cifar10-{sched}", sched, epochs, args)
        acc, n_train = _top1(run, list(subnets.values()))
        rows.append({"method": sched, "epochs": epochs, "probe_s_per_epoch": sec,
                     "probe_images_per_s": n_train / sec,
                     "wall_min": wall / 60, "images_per_s": epochs * n_train / wall,
                     **{k: a for k, a in zip(subnets, acc)}})
        print_table(rows[-1:])
    for k, e, d in MID[:2]:
        name = f"k{k}e{e}d{d}"
        over = {"ks_list": [k], "expand_list": [e], "depth_list": [d]}
        run, wall = _train(f"cifar10-scratch-{name}", "scratch", epochs_of["deps"], args, **over)
        (acc,), n_train = _top1(run, [get_space("mbv3-cifar", **over).max_subnet(r)])
        rows.append({"method": f"scratch {name}", "epochs": epochs_of["deps"],
                     "probe_s_per_epoch": float("nan"), "probe_images_per_s": float("nan"),
                     "wall_min": wall / 60,
                     "images_per_s": epochs_of["deps"] * n_train / wall,
                     **{s: (acc if s == name else float("nan")) for s in subnets}})
        print_table(rows[-1:])
    print()
    print_table(rows)
    write_json(f"train_compare_{args.minutes:g}min", {
        "data": str(args.data), "space": "mbv3-cifar", "resolution": r,
        "minutes_per_schedule": args.minutes, "batch_size": args.batch_size,
        "lr_scale": args.lr_scale, "test_images": 10000, "rows": rows})


if __name__ == "__main__":
    main()
