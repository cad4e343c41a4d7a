"""``ofa run``: the whole product on one dataset, step by step, resumable.

train -> accuracy predictor -> latency lookup table -> search (budgets + Pareto front) ->
export (ONNX + TFLite) -> measure on the target -> report. Every step writes into
``runs/<name>/`` and is skipped on a re-run when its output is already there and valid::

    runs/<name>/supernet/          the trained run (checkpoint, safetensors, run.json, metrics)
    runs/<name>/supernet/acc_predictor.safetensors (+ .json, .dataset.jsonl)
    runs/<name>/latency_table.json (a shipped table recalibrated here, or one built here)
    runs/<name>/search.json        chosen subnet per budget + the Pareto front
    runs/<name>/models/<label>/    export bundles (see deploy.bundle)
    runs/<name>/validation.json    measured latency and accuracy per subnet
    runs/<name>/report.json, report.md, pareto.png
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from ofa.cli.args import default_jobs
from ofa.errors import InputError
from ofa.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json
from search.latency_table import LatencyTable, TableError

__all__ = ["RunConfig", "run_pipeline", "find_shipped_table", "auto_budgets", "summary_lines"]


@dataclass
class RunConfig:
    """What ``ofa run`` does; every field has a CLI flag of the same name."""

    name: str = "demo"
    root: str = "runs"
    supernet: str | None = None  # a trained (or imported) run folder to reuse: no training
    dataset: str = "digits"
    data: str | None = None
    space: str = "mbv3-digits"
    resolutions: list[int] | None = None
    schedule: str = "deps"
    epochs: float | None = None  # None: the schedule's short_run epochs (deps 14, ps 24)
    batch_size: int = 64
    lr_scale: float | None = None  # None: the schedule's short_run lr_scale (deps 1, ps 3)
    seed: int = 0
    samples: int | None = None  # subnets measured for the accuracy predictor (None:
    # default_samples(dataset))
    predictor_recal_images: int = 500  # BN-recalibration images per predictor sample
    runtime: str = "onnxruntime"
    precision: str = "fp32"  # deployed models and their latency table: fp32 | int8
    threads: int = 1
    target: str = "local"
    target_options: dict[str, Any] = field(default_factory=dict)
    budgets: list[float] | None = None  # ms; None = 3 spread over the table's range
    table: str | None = None  # explicit table; default: shipped match or build one
    tables_dir: str | None = None  # where tables of this machine are looked for (None:
    # the tables shipped in the latency_tables package)
    lut_protocol: dict[str, int] = field(default_factory=lambda: asdict(TimingProtocol()))
    lut_calib: int = 10
    formats: list[str] = field(default_factory=lambda: ["onnx-fp32", "tflite-fp32"])
    population: int = 100
    generations: int = 12
    bench_protocol: dict[str, int] = field(default_factory=lambda: {"warmup": 3, "runs": 30,
                                                                    "trials": 10})
    device: str = "auto"
    autocast: str = "auto"  # training's forward-pass dtype: auto (bf16 on CUDA, fp32 on CPU) | ...
    workers: int = 0  # data-loading processes (training, predictor-dataset evaluation)
    finetune_epochs: float = 0.0  # fine-tune every chosen subnet this long (0: no step)
    shortlist: int = 1  # subnets per budget measured on the hold-out split before choosing
    # (1: the search's best, unmeasured; docs/cifar10.md measured no gain from 8)
    speed: str = "nominal"  # the device speed budgets mean: nominal | sustained (the slow
    # end of the probe's range; search.latency_table.SPEEDS)
    budget_candidates: int = 6  # subnets per budget measured on the target before choosing
    # (deploy/budget.py); 0: the search's choice, unmeasured

    def __post_init__(self) -> None:
        from ofa.train.schedule import run_settings

        self.epochs, self.lr_scale = run_settings(self.schedule, self.epochs, self.lr_scale)

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name


#: below this held-out Kendall tau an accuracy predictor cannot rank subnets
RANK_TAU = 0.5


def _log(msg: str) -> None:
    print(f"[ofa run] {msg}", flush=True)


def find_shipped_table(space, runtime: str, threads: int, folder: Path | None = None,
                       precision: str = "fp32") -> LatencyTable | None:
    """A table for this space/runtime/threads/precision that covers every resolution of
    ``space``, from ``folder`` or the tables shipped in the ``latency_tables`` package (read
    with importlib.resources, so an installed wheel finds them too); one measured on this
    CPU model first, one with probe data first. None when there is none. Whether it holds
    here is decided by measuring (:func:`deploy.verify.verify_table`), not by its CPU model.
    """
    from deploy.ontarget.facts import machine_facts

    cpu = machine_facts()["cpu_model"]
    found = []
    with _candidates(folder) as paths:
        for p in paths:
            try:
                t = LatencyTable.load(p, space=space, resolutions=list(space.resolutions),
                                      precision=precision, runtime=runtime, threads=threads)
            except TableError:
                continue
            if t.space.get("resolutions"):
                found.append(t)
    found.sort(key=lambda t: (not t.probe, t.context["machine"].get("cpu_model") != cpu))
    return found[0] if found else None


@contextmanager
def _candidates(folder: Path | None) -> Iterator[list[Path]]:
    if folder is None:
        from latency_tables import shipped_tables

        with shipped_tables() as paths:
            yield paths
    else:
        yield sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []


def auto_budgets(lat, space, n: int = 3) -> list[float]:
    """``n`` latency budgets (ms) spread evenly strictly between the smallest and the
    largest subnet's predicted latency."""
    lo = min(lat.predict_many([space.min_subnet(r) for r in space.resolutions]))
    hi = max(lat.predict_many([space.max_subnet(r) for r in space.resolutions]))
    return [round(float(lo + (hi - lo) * (i + 1) / (n + 1)), 4) for i in range(n)]


def _train(rc: RunConfig) -> Path:
    from ofa.train.run import CKPT, RUN_JSON, TrainConfig
    from ofa.train.trainer import train

    if rc.supernet:
        _log(f"train: reusing the supernet in {rc.supernet}")
        return Path(rc.supernet)
    out = rc.folder / "supernet"
    if (out / RUN_JSON).exists():
        _log(f"train: done ({out})")
        return out
    resume = (out / CKPT).exists()
    _log(f"train: {rc.schedule} on {rc.dataset}, {rc.epochs:g} epochs"
         + (" (resuming)" if resume else ""))
    over = {"resolutions": list(rc.resolutions)} if rc.resolutions else {}
    train(TrainConfig(out=str(out), space=rc.space, space_overrides=over, dataset=rc.dataset,
                      data=rc.data, schedule=rc.schedule, epochs=rc.epochs,
                      batch_size=rc.batch_size, lr_scale=rc.lr_scale, seed=rc.seed,
                      device=rc.device, autocast=rc.autocast, workers=rc.workers),
          resume=resume)
    return out


def default_samples(dataset: str) -> int:
    """Subnets measured for the accuracy predictor when ``--samples`` is not given: 300, where
    on CIFAR-10 the held-out Kendall tau reached 0.76 (0.57 at 100; ``docs/cifar10.md``); 100 on
    the embedded digits, where every subnet scores 97-99% and more samples do not rank them."""
    return 100 if dataset == "digits" else 300


def _predictor(rc: RunConfig, run: Path, dataset: str):
    from search.acc_dataset import build_accuracy_dataset, fit_and_score
    from search.accuracy import AccuracyPredictor

    samples = rc.samples or default_samples(dataset)

    # beside our own supernet; in this run's folder for a reused one (left as it is)
    path = (rc.folder if rc.supernet else run) / "acc_predictor.safetensors"
    try:
        pred = AccuracyPredictor.load(path)
        if pred.metrics.get("n_train", 0) + pred.metrics.get("n_val", 0) >= samples:
            _log(f"accuracy predictor: done ({path})")
            return pred
    except (ValueError, OSError):
        pass
    _log(f"accuracy predictor: measuring {samples} subnets on the hold-out split")
    space, rows = build_accuracy_dataset(run, path.with_name(path.stem + ".dataset.jsonl"),
                                         samples, seed=rc.seed, data=rc.data,
                                         recal_images=rc.predictor_recal_images,
                                         progress=True, device=rc.device,
                                         autocast=rc.autocast, workers=rc.workers)
    pred, metrics = fit_and_score(space, rows, seed=rc.seed)
    pred.metrics = metrics
    pred.save(path)
    _log(f"accuracy predictor: held-out RMSE {metrics['rmse']:.2f} points, "
         f"Kendall tau {metrics['kendall_tau']:.2f}"
         + (f" (below {RANK_TAU}: it cannot rank subnets)"
            if metrics["kendall_tau"] < RANK_TAU else ""))
    return pred


def _table(rc: RunConfig, space):
    """This run's latency table (``runs/<name>/latency_table.json``): done already, or a
    given (``--table``) or shipped one verified on the target (:func:`deploy.verify.
    verify_table`: kept, adapted or, failing both, rebuilt), or one built on the target."""
    from deploy.lut import build_table

    path = _table_path(rc)
    try:
        t = LatencyTable.load(path, space=space, resolutions=list(space.resolutions),
                              runtime=rc.runtime, threads=rc.threads,
                              precision=rc.precision)
        _log(f"latency table: done ({path})")
        return t
    except TableError:
        pass
    target = None
    if rc.target != "local":  # exported here, timed there in batches (resumable)
        from deploy.targets import parse_target, start_in_background

        target = parse_target(rc.target, **rc.target_options)
        start_in_background(target, rc.runtime)
    given = None
    if rc.table:
        given = LatencyTable.load(rc.table, space=space, resolutions=list(space.resolutions),
                                  runtime=rc.runtime, threads=rc.threads,
                                  precision=rc.precision)
    elif rc.target == "local":
        given = find_shipped_table(space, rc.runtime, rc.threads,
                                   Path(rc.tables_dir) if rc.tables_dir else None,
                                   rc.precision)
    if given is not None:
        t = _verified(rc, space, given, target, path)
        if t is not None:
            return t
    _log(f"latency table: measuring every block shape ({rc.runtime}, {rc.precision}, "
         f"{rc.threads} thread(s)) on {rc.target}")
    return build_table(space, sorted(space.resolutions), rc.runtime, path, threads=rc.threads,
                       protocol=TimingProtocol(**rc.lut_protocol), calib=rc.lut_calib,
                       seed=rc.seed, target=target, precision=rc.precision,
                       jobs=default_jobs())


def _verified(rc: RunConfig, space, given: LatencyTable, target, path: Path):
    """``given`` checked on the target with ``rc.lut_calib + 2`` subnets measured beside
    the probe; the kept or adapted table saved as this run's (its verdict in
    ``table_verification.json``), or None when it must be rebuilt."""
    from deploy.verify import verify_table

    _log(f"latency table: verifying {Path(given.source).name} on {rc.target} with "
         f"{max(4, rc.lut_calib + 2)} subnets measured beside the probe")
    v = verify_table(given, space, k=max(4, rc.lut_calib + 2), seed=rc.seed + 4321,
                     target=target, jobs=default_jobs(), where=rc.target)
    _log(v.line())
    atomic_write_json(rc.folder / "table_verification.json",
                      {**v.details, "table": given.source})
    if v.action == "rebuild":
        return None
    t = v.table
    t.context = {**t.context, "verified_from": given.source}
    t.save(path)
    t.source = str(path)
    return t


def _table_path(rc: RunConfig) -> Path:
    return rc.folder / ("latency_table.json" if rc.precision == "fp32"
                        else f"latency_table_{rc.precision}.json")


def _convert_blocks_in_background(space: dict[str, Any], runtime: str, out: str,
                                  precision: str, calib: int, seed: int, parent: int) -> None:
    """The background process of :func:`_start_block_conversion` (spawned: plain
    arguments): at the lowest priority, so that training keeps the cores it uses. The table
    step stops it with SIGKILL, which ends it at once: its files are written atomically
    (:func:`ofa.fileio.atomic_write`; a killed conversion's temp file is removed by the
    build), and it holds no semaphore (tqdm's lock is a thread lock here) to leak."""
    import os
    import threading

    import torch
    from tqdm import tqdm

    from deploy.lut import convert_blocks
    from ofa.lifetime import worker_lifetime
    from ofa.space import SearchSpace

    worker_lifetime(parent=parent)  # ends with the run, even a SIGKILLed one; group signals
    # are the run's
    tqdm.set_lock(threading.RLock())
    os.nice(19)
    torch.set_num_threads(1)
    sp = SearchSpace.from_dict(space)
    convert_blocks(sp, sorted(sp.resolutions), runtime, out, precision, jobs=1, calib=calib,
                   seed=seed, progress=False)


def _planned_space(rc: RunConfig, reused: Any):
    """The space this run's supernet has: the reused run's, this run's finished supernet's,
    or the one training will build (:class:`ofa.train.trainer.Trainer`: the preset, the
    dataset's class count, ``--resolutions``), known before any training step."""
    from ofa.data import load_dataset
    from ofa.space import get_space
    from ofa.train.run import RUN_JSON, load_run

    if reused is not None:
        return reused[0].space
    if (rc.folder / "supernet" / RUN_JSON).exists():
        return load_run(rc.folder / "supernet")[0].space
    over = {"resolutions": list(rc.resolutions)} if rc.resolutions else {}
    classes = load_dataset(rc.dataset, rc.data, seed=rc.seed).num_classes
    return get_space(rc.space, num_classes=classes, **over)


def _start_block_conversion(rc: RunConfig, reused: Any) -> Any:
    """When this run will build its latency table here, start converting the table's
    block models (:func:`deploy.lut.convert_blocks`) in a background process now,
    beside training and the accuracy predictor: conversions need no quiet machine, only the
    timing does, and a LiteRT table's 288 digits blocks take ~4 min of conversion on 2
    cores. The table step stops it and converts what is left (here or, for a device
    target, before sending the blocks there). Returns the process, or None when no table
    will be built (a given or finished table, the torch runtime, a shipped table of this
    CPU for a local run)."""
    import multiprocessing as mp

    path = _table_path(rc)
    if rc.table or rc.runtime == "torch" or path.exists():
        return None
    space = _planned_space(rc, reused)
    if rc.target == "local" and find_shipped_table(
            space, rc.runtime, rc.threads, Path(rc.tables_dir) if rc.tables_dir else None,
            rc.precision) is not None:
        return None
    proc = mp.get_context("spawn").Process(
        target=_convert_blocks_in_background, daemon=True,
        args=(space.to_dict(), rc.runtime, str(path), rc.precision, rc.lut_calib,
              rc.seed, os.getpid()))
    proc.start()
    _log(f"latency table: converting its block models in the background ({rc.runtime}, "
         f"{rc.precision})")
    return proc


def _search(rc: RunConfig, run: Path, space, acc, lat, budgets: list[float]
            ) -> dict[str, Any]:
    """Search every budget and the Pareto front. With ``rc.shortlist`` > 1 each budget's
    shortlist (the subnets within the predictor's held-out RMSE of the best prediction,
    spread apart: :func:`search.evolution.shortlist`) is measured on the hold-out split and
    the most accurate measured one is chosen (the search's best is where the predictor
    errs upward; on CIFAR-10 the hold-out split's noise was as large as the differences it
    had to find: ``docs/cifar10.md``)."""
    from search.acc_dataset import choose_measured
    from search.evolution import Budget, SearchConfig, run_search

    path = rc.folder / "search.json"
    margin = round(float(acc.metrics.get("rmse", 0.0)), 4)
    key = {"budgets": budgets, "population": rc.population, "generations": rc.generations,
           "seed": rc.seed, "table": lat.table.source, "shortlist": rc.shortlist,
           "shortlist_margin": margin}
    if path.exists():
        old = read_json(path, "search result")
        if old.get("key") == key:
            _log("search: done")
            return old
    _log(f"search: budgets {budgets} ms + Pareto front")
    found = [run_search(space, acc, lat, SearchConfig(
        Budget(latency_ms=b), population=rc.population, generations=rc.generations,
        seed=rc.seed, shortlist=rc.shortlist, shortlist_margin=margin)) for b in budgets]
    chosen = [{**res["best"][0], "budget_ms": b, "label": f"budget{i + 1}"}
              for i, (b, res) in enumerate(zip(budgets, found))]
    if rc.shortlist > 1:
        lists = [res["shortlist"] for res in found]
        _log(f"search: measuring {sum(map(len, lists))} shortlisted subnets (up to "
             f"{rc.shortlist} per budget within {margin:.2f} points of the best prediction) "
             "on the hold-out split")
        picks = choose_measured(run, lists, rc.folder / "shortlist.jsonl", data=rc.data,
                                recal_images=rc.predictor_recal_images, device=rc.device,
                                autocast=rc.autocast, workers=rc.workers)
        for i, c in enumerate(picks):
            chosen[i] = {**c, "budget_ms": budgets[i], "label": f"budget{i + 1}"}
            sl = c["shortlist"]
            _log(f"search: budget {budgets[i]:g} ms: hold-out top-1 "
                 f"{min(r['holdout_top1'] for r in sl):.2f}-{c['holdout_top1']:.2f}% over "
                 f"{len(sl)} subnets; chose the predictor's #{c['shortlist_pick'] + 1}")
    front = run_search(space, acc, lat, SearchConfig(
        pareto=True, population=rc.population, generations=rc.generations,
        seed=rc.seed))["front"]
    out = {"key": key, "chosen": chosen, "front": front}
    atomic_write_json(path, out)
    return out


def _measured_budgets(rc: RunConfig, space, table: LatencyTable, found: dict[str, Any]
                      ) -> list[dict[str, Any]]:
    """Each budget's candidates measured on the target beside the probe, converted to ms
    at ``rc.speed``; the most accurate that meets its budget as measured
    (:func:`deploy.budget.measure_budgets`). Kept in ``budget.json`` (skipped when the
    search, table and speed are the same)."""
    from deploy.budget import measure_budgets
    from deploy.lut import measure_subnets
    from deploy.targets import parse_target
    from ofa.space import SubnetConfig

    path = rc.folder / "budget.json"
    key = {"chosen": [c["config"] for c in found["chosen"]], "table": table.source,
           "speed": rc.speed, "k": rc.budget_candidates,
           "speed_states": table.probe.get("ms")}
    if path.exists() and read_json(path, "measured budget").get("key") == key:
        _log("measured budget: done")
        return read_json(path, "measured budget")["chosen"]
    target = None if rc.target == "local" else parse_target(rc.target, **rc.target_options)
    per_unit = table.probe_ms(rc.speed)

    def measure(cfgs: list[dict[str, Any]]) -> list[float]:
        _log(f"measured budget: timing {len(cfgs)} candidate subnets on {rc.target} beside "
             "the probe")
        m = measure_subnets(table, space, [SubnetConfig.from_dict(c) for c in cfgs],
                            target=target, jobs=default_jobs(), desc="budget candidates")
        return [v * per_unit for v in m["rel"]] if table.probe else m["ms"]

    rows = measure_budgets([c["budget_ms"] for c in found["chosen"]],
                           found["chosen"], found["front"], measure, k=rc.budget_candidates)
    chosen = []
    for old, row in zip(found["chosen"], rows):
        moved = row["config"] != old["config"]
        _log(f"measured budget {row['budget_ms']:g} ms ({rc.speed} speed): "
             f"{len(row['candidates'])} candidates, chose one measured at "
             f"{row['measured_ms']:.3f} ms ({row['margin_pct']:+.1f}% margin)"
             + (" instead of the search's choice" if moved else "")
             + ("" if row["met"] else "; NONE met the budget as measured: the fastest"))
        # the budget's shortlist stays with it, also when a candidate from elsewhere won
        keep = {k: old[k] for k in ("shortlist",) if k in old}
        chosen.append({**row, **keep, "label": old["label"], "search_choice": old["config"]})
    atomic_write_json(path, {"key": key, "chosen": chosen})
    return chosen


def _finetune(rc: RunConfig, run: Path, chosen: list[dict[str, Any]]) -> dict[str, Path]:
    """Fine-tune every chosen subnet (``rc.finetune_epochs``) into
    ``runs/<name>/finetuned/<label>``; a finished one is kept, a killed one resumed.
    Returns label -> fine-tune folder."""
    from ofa.train.finetune import FINETUNE_CKPT, FINETUNE_JSON, FinetuneConfig, finetune

    out: dict[str, Path] = {}
    for row in chosen:
        folder = rc.folder / "finetuned" / row["label"]
        done = folder / FINETUNE_JSON
        if done.exists() and read_json(done, "fine-tune").get("subnet") == row["config"]:
            _log(f"fine-tune {row['label']}: done")
        else:
            if done.exists():  # another subnet was chosen since: start again
                shutil.rmtree(folder)
            _log(f"fine-tune {row['label']}: {rc.finetune_epochs:g} epochs")
            finetune(FinetuneConfig(run=str(run), subnet=row["config"], out=str(folder),
                                    epochs=rc.finetune_epochs, batch_size=rc.batch_size,
                                    seed=rc.seed, data=rc.data, device=rc.device,
                                    autocast=rc.autocast),
                     resume=(folder / FINETUNE_CKPT).exists())
        out[row["label"]] = folder
    return out


def _validate(rc: RunConfig, run: Path, chosen: list[dict[str, Any]],
              finetuned: dict[str, Path], table: LatencyTable) -> list[dict[str, Any]]:
    from deploy.targets import parse_target
    from deploy.validate import validate_subnets
    from ofa.train.finetune import load_finetuned

    path = rc.folder / "validation.json"
    if path.exists():
        old = read_json(path, "validation")
        if [r["config"] for r in old.get("subnets", [])] == [c["config"] for c in chosen] \
                and old.get("finetuned", []) == sorted(finetuned) \
                and old.get("precision", "fp32") == rc.precision \
                and old.get("speed") == [rc.speed, table.probe.get("ms")]:
            _log("export + measure: done")
            return old["subnets"]
    _log(f"export + measure: {len(chosen)} subnets on {rc.target}")
    target = parse_target(rc.target, **rc.target_options)
    models = {label: load_finetuned(f)[0] for label, f in finetuned.items()}
    res = validate_subnets(run, chosen, rc.folder / "models", target, data=rc.data,
                           runtime=rc.runtime, threads=rc.threads, formats=tuple(rc.formats),
                           protocol=TimingProtocol(**rc.bench_protocol), models=models,
                           precision=rc.precision,
                           ms_per_unit=table.probe_ms(rc.speed) if table.probe else None,
                           speed={"speed": rc.speed, "states": table.probe.get("ms")},
                           # one process per subnet: none waits for a second round (3 on
                           # 2 cores here: 51 s against 52-56 s with 2 processes)
                           jobs=max(default_jobs(), len(chosen)))
    for r in res:  # top-1 before (supernet subnet, BN recalibrated) and after fine-tuning
        if r["label"] in finetuned:
            ft = read_json(finetuned[r["label"]] / "finetune.json", "fine-tune")
            r["finetune"] = {k: ft[k] for k in ("top1_before", "top1_after", "epochs", "kd",
                                                "train_seconds")}
    atomic_write_json(path, {"subnets": res, "finetuned": sorted(finetuned),
                             "precision": rc.precision,
                             "speed": [rc.speed, table.probe.get("ms")]})
    return res


def _plot(front: list[dict[str, Any]], results: list[dict[str, Any]], path: Path,
          title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["latency_ms"] for p in front], [p["acc"] for p in front], "o-", ms=3,
            color="0.6", label="predicted Pareto front")
    for r in results:
        ax.plot([r["predicted_ms"], r["measured_ms"]], [r["predicted_acc"]] * 2, "k:", lw=0.8)
        ax.scatter(r["predicted_ms"], r["predicted_acc"], marker="o", color="C0", zorder=3)
        ax.scatter(r["measured_ms"], r["predicted_acc"], marker="x", color="C3", zorder=3)
        if r.get("budget_ms"):
            ax.axvline(r["budget_ms"], color="C2", lw=0.6, ls="--")
    ax.scatter([], [], marker="o", color="C0", label="chosen (predicted latency)")
    ax.scatter([], [], marker="x", color="C3", label="chosen (measured latency)")
    ax.plot([], [], color="C2", lw=0.6, ls="--", label="budgets")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("predicted top-1 (%)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _report(rc: RunConfig, info: dict[str, Any], results: list[dict[str, Any]],
            found: dict[str, Any]) -> dict[str, Any]:
    from deploy.validate import markdown_table

    folder, front, chosen = rc.folder, found["front"], found["chosen"]
    _plot(front, results, folder / "pareto.png", f"{info['space']} on {info['dataset']}: "
          f"{info['table']['context']}")
    rep = {"kind": "ofa-edge-report", "config": asdict(rc), **info, "subnets": results,
           "pareto_front": front,
           "shortlists": {c["label"]: c["shortlist"] for c in chosen if "shortlist" in c},
           "summary": {
               "all_within_10pct": all(bool(r["within_10pct"]) for r in results),
               "min_measured_top1": min(r["measured_top1"] for r in results),
               "max_abs_error_pct": max(abs(r["error_pct"]) for r in results),
               "all_within_budget": all(r["budget_ms"] is None or r["measured_ms"] <=
                                        r["budget_ms"] for r in results),
               "speed": rc.speed}}
    p = info["predictor"]
    warn = ""
    if p["kendall_tau"] < RANK_TAU:
        warn = (f"- **warning:** the accuracy predictor's held-out Kendall tau is "
                f"{p['kendall_tau']:.2f} (< {RANK_TAU}): it cannot rank these subnets, so a "
                "larger budget need not buy more accuracy. Measure more subnets (`--samples`) "
                "or use data on which subnets differ.\n")
        rep["summary"]["predictor_warning"] = warn[2:].strip()
    atomic_write_json(folder / "report.json", rep)
    md = (f"# ofa run: {rc.name}\n\n"
          f"- data: `{info['dataset']}`; space `{info['space']}`; {info['training']}\n"
          f"- supernet: largest subnet top-1 {info['supernet']['largest_top1']:.2f}%, "
          f"smallest {info['supernet']['smallest_top1']:.2f}% (test, after BN recalibration)\n"
          f"- accuracy predictor: {p['n_train'] + p['n_val']} subnets, held-out RMSE "
          f"{p['rmse']:.2f} points, Kendall tau {p['kendall_tau']:.2f}\n{warn}"
          f"- latency table: `{info['table']['path']}` ({info['table']['context']})\n"
          f"- device speed: {info['table']['speed_text'] or 'no probe data (ms as built)'}; "
          f"budgets and measurements in ms at the **{rc.speed}** speed "
          "(`docs/latency.md`)\n"
          f"- target: `{rc.target}`, {rc.threads} thread(s)\n\n"
          "## Chosen subnets: predicted vs measured\n\n" + markdown_table(results) +
          f"\nAll within ±10%: **{rep['summary']['all_within_10pct']}**; all within their "
          f"budget as measured: **{rep['summary']['all_within_budget']}**; largest error "
          f"{rep['summary']['max_abs_error_pct']:.1f}%; lowest exported top-1 "
          f"{rep['summary']['min_measured_top1']:.2f}%. Exported top-1 is measured on "
          f"{results[0]['top1_images']} evaluation images; ± is its standard error, and two "
          "subnets whose top-1 differ by less than about twice that are not told apart by "
          "this measurement.\n\n"
          f"Pareto front (predicted): {len(front)} points. ![Pareto front](pareto.png)\n"
          + _budget_md(chosen) + _shortlist_md(chosen) + _finetune_md(results))
    atomic_write_text(folder / "report.md", md)
    return rep


def _md_section(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A report section: ``## title`` and a markdown table, or '' without rows."""
    if not rows:
        return ""
    return (f"\n## {title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header)
            + "\n" + "".join("| " + " | ".join(r) + " |\n" for r in rows))


def _budget_md(chosen: list[dict[str, Any]]) -> str:
    """The report's measured-budget table (``deploy/budget.py``), or ''."""
    return _md_section(
        "Measured budget: candidates timed on the target before choosing",
        ["subnet", "budget ms", "candidates", "predicted ms", "measured ms", "margin",
         "met", "search's choice kept"],
        [[c["label"], f"{c['budget_ms']:g}", str(len(c["candidates"])),
          f"{c['latency_ms']:.3f}", f"{c['measured_ms']:.3f}", f"{c['margin_pct']:+.1f}%",
          "yes" if c["met"] else "**no**",
          "yes" if c["config"] == c.get("search_choice") else "no"]
         for c in chosen if "candidates" in c])


def _shortlist_md(chosen: list[dict[str, Any]]) -> str:
    """The report's shortlist table (``ofa run --shortlist``), or ''."""
    rows = []
    for c in chosen:
        if "shortlist" in c:
            pred = [r["acc"] for r in c["shortlist"]]
            hold = [r["holdout_top1"] for r in c["shortlist"]]
            rows.append([c["label"], str(len(hold)), f"{min(pred):.2f}-{max(pred):.2f}",
                         f"{min(hold):.2f}-{max(hold):.2f}",
                         f"#{c['shortlist_pick'] + 1}, {c['acc']:.2f} / {c['holdout_top1']:.2f}"])
    return _md_section("Shortlists measured on the hold-out split",
                       ["subnet", "measured", "predicted top-1", "hold-out top-1",
                        "chosen: predictor's rank, predicted / hold-out"], rows)


def _finetune_md(results: list[dict[str, Any]]) -> str:
    """The report's fine-tuning table (top-1 before / after per subnet), or ''."""
    rows = [[r["label"], f"{r['finetune']['epochs']:g}", f"{r['finetune']['top1_before']:.2f}",
             f"{r['finetune']['top1_after']:.2f}", f"{r['finetune']['train_seconds']:.0f}"]
            for r in results if "finetune" in r]
    return _md_section("Fine-tuning (knowledge distillation from the largest subnet)",
                       ["subnet", "epochs", "top-1 before", "top-1 after", "seconds"], rows)


def run_pipeline(rc: RunConfig) -> dict[str, Any]:
    """Run every step of ``ofa run`` that is not done yet; returns ``report.json``'s dict.

    Raises:
        ValueError: bad data/config, an infeasible budget, a mismatched table.
        deploy.targets.TargetError: the target could not measure.
    """
    from deploy.targets import parse_target
    from ofa.train.run import load_run
    from search.latency import LatencyPredictor

    if rc.target.startswith("adb") and rc.runtime != "litert":
        raise InputError(f"--target {rc.target}: a phone is measured with TFLite's "
                         "benchmark_model, which times .tflite models only; add --runtime litert")
    parse_target(rc.target, **rc.target_options).check()  # before training, not after
    reused = load_run(rc.supernet) if rc.supernet else None  # a bad folder fails here
    if rc.table:  # kind, context, space and resolutions: before training, not after it
        planned = _planned_space(rc, reused)
        LatencyTable.load(rc.table, space=planned, resolutions=list(planned.resolutions),
                          runtime=rc.runtime, threads=rc.threads, precision=rc.precision)
    rc.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rc.folder / "config.json", asdict(rc))
    converting = _start_block_conversion(rc, reused)
    try:
        run = _train(rc)
        net, tcfg, info = reused or load_run(run)
        space = net.space
        acc = _predictor(rc, run, tcfg.dataset)
    finally:
        if converting is not None:  # the table step converts what is left, in parallel
            converting.kill()  # it ignores SIGTERM (ofa/lifetime.py); files are atomic
            converting.join()
    table = _table(rc, space)
    lat = LatencyPredictor(table, space, speed=rc.speed)
    budgets = list(rc.budgets) if rc.budgets else auto_budgets(lat, space)
    found = _search(rc, run, space, acc, lat, budgets)
    if rc.budget_candidates > 0:
        found["chosen"] = _measured_budgets(rc, space, table, found)
    finetuned = _finetune(rc, run, found["chosen"]) if rc.finetune_epochs > 0 else {}
    results = _validate(rc, run, found["chosen"], finetuned, table)
    phase_ends = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"phase_end"' in line] if (run / "metrics.jsonl").exists() else []
    last = phase_ends[-1] if phase_ends else {}
    meta = {
        "supernet": {"run": str(run), "largest_top1": last.get("top1_max", float("nan")),
                     "smallest_top1": last.get("top1_min", float("nan")),
                     "global_steps": info.get("global_steps")},
        "predictor": acc.metrics,
        "table": {"path": table.source, "context": table.describe(),
                  "calibration": {k: table.calibration.get(k, 1.0) for k in ("a", "p", "b")},
                  "speed": rc.speed, "speed_states": table.probe.get("ms"),
                  "speed_text": table.speed_text()},
        "budgets_ms": budgets, "space": space.name, "dataset": tcfg.dataset,
        "training": (f"supernet reused from `{run}`" if rc.supernet else
                     f"schedule `{rc.schedule}`, {rc.epochs:g} epochs")}
    return _report(rc, meta, results, found)


def summary_lines(rep: dict[str, Any]) -> list[str]:
    """The short terminal table printed at the end of ``ofa run``."""
    out = [f"{'subnet':<9}{'budget':>8}{'pred ms':>9}{'meas ms':>9}{'err':>8}{'MMACs':>7}"
           f"{'pred acc':>9}{'top-1':>7}"]
    for r in rep["subnets"]:
        out.append(f"{r['label']:<9}{r['budget_ms'] or float('nan'):8.3f}"
                   f"{r['predicted_ms']:9.3f}{r['measured_ms']:9.3f}{r['error_pct']:+7.1f}%"
                   f"{r['macs'] / 1e6:7.2f}{r['predicted_acc']:9.2f}"
                   f"{r['measured_top1']:7.2f}")
    return out

