"""The steps of ``ofa run``, in order, and the loop that runs them.

Each :class:`Step` names what it makes in the run folder and runs when its ``when`` says the
run needs it; its ``run`` reads the outputs of the steps before it from the :class:`State`
and sets its own. A step whose outputs are already in the folder, made with the same inputs
(each step checks a key it stored with them), loads them instead of working: that is how a
killed or repeated ``ofa run`` resumes. Adding a step is one entry in :data:`STEPS`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from ofa.errors import InputError
from ofa.fileio import atomic_write_dir, atomic_write_json, read_json
from ofa.lifetime import default_jobs
from ofa.pipeline.config import RANK_TAU, RunConfig, default_samples, log
from ofa.pipeline.report import write_report
from ofa.pipeline.tables import (
    auto_budgets,
    planned_space,
    run_table,
    start_block_conversion,
)
from search.latency_table import LatencyTable

__all__ = ["Step", "State", "STEPS", "run_pipeline"]


def _train(rc: RunConfig) -> Path:
    from ofa.train.run import CKPT, RUN_JSON
    from ofa.train.trainer import train

    if rc.supernet:
        log(f"train: reusing the supernet in {rc.supernet}")
        return Path(rc.supernet)
    out = rc.folder / "supernet"
    if (out / RUN_JSON).exists():
        log(f"train: done ({out})")
        return out
    resume = (out / CKPT).exists()
    log(f"train: {rc.train.schedule} on {rc.train.dataset}, {rc.train.epochs:g} epochs"
         + (" (resuming)" if resume else ""))
    train(rc.train, resume=resume)  # its out is this run's supernet/ (RunConfig)
    return out


def _predictor(rc: RunConfig, run: Path, dataset: str):
    from search.acc_dataset import build_accuracy_dataset, fit_and_score
    from search.accuracy import AccuracyPredictor

    samples = rc.predictor.samples or default_samples(dataset)

    # beside our own supernet; in this run's folder for a reused one (left as it is)
    path = (rc.folder if rc.supernet else run) / "acc_predictor.safetensors"
    try:
        pred = AccuracyPredictor.load(path)
        if pred.metrics.get("n_train", 0) + pred.metrics.get("n_val", 0) >= samples:
            log(f"accuracy predictor: done ({path})")
            return pred
    except (ValueError, OSError):
        pass
    log(f"accuracy predictor: measuring {samples} subnets on the hold-out split")
    space, rows = build_accuracy_dataset(run, path.with_name(path.stem + ".dataset.jsonl"),
                                         samples, seed=rc.train.seed, data=rc.train.data,
                                         recal_images=rc.predictor.recal_images,
                                         progress=True, device=rc.train.device,
                                         autocast=rc.train.autocast, workers=rc.train.workers)
    pred, metrics = fit_and_score(space, rows, seed=rc.train.seed)
    pred.metrics = metrics
    pred.save(path)
    log(f"accuracy predictor: held-out RMSE {metrics['rmse']:.2f} points, "
         f"Kendall tau {metrics['kendall_tau']:.2f}"
         + (f" (below {RANK_TAU}: it cannot rank subnets)"
            if metrics["kendall_tau"] < RANK_TAU else ""))
    return pred


def _search(rc: RunConfig, run: Path, space, acc, lat, budgets: list[float]
            ) -> dict[str, Any]:
    """Search every budget and the Pareto front. With ``rc.search.shortlist`` > 1 each budget's
    shortlist (the subnets within the predictor's held-out RMSE of the best prediction,
    spread apart: :func:`search.evolution.shortlist`) is measured on the hold-out split and
    the most accurate measured one is chosen (the search's best is where the predictor
    errs upward; on CIFAR-10 the hold-out split's noise was as large as the differences it
    had to find: ``docs/cifar10.md``)."""
    from search.acc_dataset import choose_measured
    from search.evolution import Budget, SearchConfig, run_search

    path = rc.folder / "search.json"
    margin = round(float(acc.metrics.get("rmse", 0.0)), 4)
    se = rc.search
    key = {"budgets": budgets, "population": se.population, "generations": se.generations,
           "seed": rc.train.seed, "table": lat.table.source, "shortlist": se.shortlist,
           "shortlist_margin": margin}
    if path.exists():
        old = read_json(path, "search result")
        if old.get("key") == key:
            log("search: done")
            return old
    log(f"search: budgets {budgets} ms + Pareto front")
    found = [run_search(space, acc, lat, SearchConfig(
        Budget(latency_ms=b), population=se.population, generations=se.generations,
        seed=rc.train.seed, shortlist=se.shortlist, shortlist_margin=margin)) for b in budgets]
    chosen = [{**res["best"][0], "budget_ms": b, "label": f"budget{i + 1}"}
              for i, (b, res) in enumerate(zip(budgets, found))]
    if rc.search.shortlist > 1:
        lists = [res["shortlist"] for res in found]
        log(f"search: measuring {sum(map(len, lists))} shortlisted subnets (up to "
             f"{rc.search.shortlist} per budget within {margin:.2f} points of the best prediction) "
             "on the hold-out split")
        picks = choose_measured(run, lists, rc.folder / "shortlist.jsonl", data=rc.train.data,
                                recal_images=rc.predictor.recal_images, device=rc.train.device,
                                autocast=rc.train.autocast, workers=rc.train.workers)
        for i, c in enumerate(picks):
            chosen[i] = {**c, "budget_ms": budgets[i], "label": f"budget{i + 1}"}
            sl = c["shortlist"]
            log(f"search: budget {budgets[i]:g} ms: hold-out top-1 "
                 f"{min(r['holdout_top1'] for r in sl):.2f}-{c['holdout_top1']:.2f}% over "
                 f"{len(sl)} subnets; chose the predictor's #{c['shortlist_pick'] + 1}")
    front = run_search(space, acc, lat, SearchConfig(
        pareto=True, population=rc.search.population, generations=rc.search.generations,
        seed=rc.train.seed))["front"]
    out = {"key": key, "chosen": chosen, "front": front}
    atomic_write_json(path, out)
    return out


def _measured_budgets(rc: RunConfig, space, table: LatencyTable, found: dict[str, Any]
                      ) -> list[dict[str, Any]]:
    """Each budget's candidates measured on the target beside the probe (at the device's
    fast state where it comes within a few timings: :func:`deploy.lut.measure.repeated`),
    converted to ms at ``rc.search.speed``; the most accurate that meets its budget as measured
    (:func:`deploy.budget.measure_budgets`), its prediction adapted by the other candidates'
    measurements (:func:`deploy.budget.scale_by_candidates`). Kept in ``budget.json``
    (skipped when the search, table and speed are the same)."""
    from deploy.budget import measure_budgets, scale_by_candidates
    from deploy.lut import measure_subnets
    from deploy.probe import fast_state_text, fastest_ms
    from deploy.targets import parse_target
    from deploy.validate import REPEATS
    from ofa.space import SubnetConfig

    path = rc.folder / "budget.json"
    key = {"chosen": [c["config"] for c in found["chosen"]], "table": table.source,
           "speed": rc.search.speed, "k": rc.search.budget_candidates,
           "speed_states": table.probe.get("ms")}
    if path.exists() and read_json(path, "measured budget").get("key") == key:
        log("measured budget: done")
        return read_json(path, "measured budget")["chosen"]
    d = rc.deploy
    target = None if d.target == "local" else parse_target(d.target, **d.target_options)
    per_unit = table.probe_ms(rc.search.speed)

    def measure(cfgs: list[dict[str, Any]]) -> list[float]:
        log(f"measured budget: timing {len(cfgs)} candidate subnets on {rc.deploy.target} beside "
             "the probe")
        m = measure_subnets(table, space, [SubnetConfig.from_dict(c) for c in cfgs],
                            target=target, jobs=default_jobs(), desc="budget candidates",
                            # as steady as the final measurement, at the same fast state
                            repeats=REPEATS, fastest=fastest_ms(table.probe))
        fs = m.get("fast_state")
        if fs and fs["batches"] > REPEATS:
            log(f"measured budget: {fast_state_text(fs)}")
        return [v * per_unit for v in m["rel"]] if table.probe else m["ms"]

    rows = scale_by_candidates(measure_budgets(
        [c["budget_ms"] for c in found["chosen"]], found["chosen"], found["front"], measure,
        k=rc.search.budget_candidates))
    chosen = []
    for old, row in zip(found["chosen"], rows):
        moved = row["config"] != old["config"]
        log(f"measured budget {row['budget_ms']:g} ms ({rc.search.speed} speed): "
             f"{len(row['candidates'])} candidates, chose one measured at "
             f"{row['measured_ms']:.3f} ms ({row['margin_pct']:+.1f}% margin)"
             + (" instead of the search's choice" if moved else "")
             + ("" if row["met"] else "; NONE met the budget as measured: the fastest")
             + (f"; its prediction {row['table_ms']:.3f} ms x {row['candidate_scale']['scale']:.3f}"
                f" (the other {row['candidate_scale']['candidates']} candidates' measured over "
                f"predicted) = {row['latency_ms']:.3f} ms" if "candidate_scale" in row else ""))
        # the budget's shortlist stays with it, also when a candidate from elsewhere won
        keep = {k: old[k] for k in ("shortlist",) if k in old}
        chosen.append({**row, **keep, "label": old["label"], "search_choice": old["config"]})
    atomic_write_json(path, {"key": key, "chosen": chosen})
    return chosen


def _finetune(rc: RunConfig, run: Path, chosen: list[dict[str, Any]]) -> dict[str, Path]:
    """Fine-tune every chosen subnet (``rc.finetune_epochs``) into
    ``runs/<name>/finetuned/<label>``; a finished one is kept, a killed one resumed, and a
    subnet that an earlier budget chose too (budgets above the Pareto front's end choose the
    largest subnet each) is copied from that budget's folder, not trained again: the same
    subnet, seed and data give the same weights. Returns label -> fine-tune folder."""
    from ofa.train.finetune import FINETUNE_CKPT, FINETUNE_JSON, FinetuneConfig, finetune

    out: dict[str, Path] = {}
    for row, same in zip(chosen, _first_choosers(chosen)):
        folder = rc.folder / "finetuned" / row["label"]
        done = folder / FINETUNE_JSON
        if done.exists() and read_json(done, "fine-tune").get("subnet") == row["config"]:
            log(f"fine-tune {row['label']}: done")
        elif same != row["label"]:
            _copy_finetune(out[same], folder, same)
            log(f"fine-tune {row['label']}: the subnet of {same}, its fine-tune copied")
        else:
            if done.exists():  # another subnet was chosen since: start again
                shutil.rmtree(folder)
            log(f"fine-tune {row['label']}: {rc.finetune_epochs:g} epochs")
            finetune(FinetuneConfig(run=str(run), subnet=row["config"], out=str(folder),
                                    epochs=rc.finetune_epochs, batch_size=rc.train.batch_size,
                                    seed=rc.train.seed, data=rc.train.data, device=rc.train.device,
                                    autocast=rc.train.autocast,
                                    recal_images=rc.finetune_recal_images),
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
                and old.get("precision", "fp32") == rc.deploy.precision \
                and old.get("speed") == [rc.search.speed, table.probe.get("ms")]:
            log("export + measure: done")
            return old["subnets"]
    firsts = _first_choosers(chosen)  # a subnet that several budgets chose: measured once
    rows = [c for c, f in zip(chosen, firsts) if f == c["label"]]
    log(f"export + measure: {len(rows)} subnets on {rc.deploy.target}"
        + (f" ({len(chosen) - len(rows)} chosen by more than one budget, measured once)"
           if len(rows) < len(chosen) else ""))
    target = parse_target(rc.deploy.target, **rc.deploy.target_options)
    models = {r["label"]: load_finetuned(finetuned[r["label"]])[0] for r in rows
              if r["label"] in finetuned}
    res = validate_subnets(run, rows, rc.folder / "models", target, data=rc.train.data,
                           runtime=rc.deploy.runtime, threads=rc.deploy.threads,
                           formats=tuple(rc.deploy.formats),
                           protocol=TimingProtocol(**rc.deploy.bench_protocol), models=models,
                           precision=rc.deploy.precision,
                           ms_per_unit=table.probe_ms(rc.search.speed) if table.probe else None,
                           speed={"speed": rc.search.speed, "states": table.probe.get("ms")},
                           table=table,
                           # one process per subnet: none waits for a second round of
                           # conversions (no slower than one process per core on 2 cores)
                           jobs=max(default_jobs(), len(rows)))
    done = {r["label"]: r for r in res}
    res = [done[f] if f == c["label"] else _same_subnet(rc.folder / "models", done[f], c)
           for c, f in zip(chosen, firsts)]
    for r in res:  # top-1 before (supernet subnet, BN recalibrated) and after fine-tuning
        if r["label"] in finetuned:
            ft = read_json(finetuned[r["label"]] / "finetune.json", "fine-tune")
            r["finetune"] = {k: ft[k] for k in ("top1_before", "top1_after", "epochs", "kd",
                                                "train_seconds")}
    atomic_write_json(path, {"subnets": res, "finetuned": sorted(finetuned),
                             "precision": rc.deploy.precision,
                             "speed": [rc.search.speed, table.probe.get("ms")]})
    return res


def _copy_finetune(src: Path, folder: Path, same: str) -> None:
    """Budget ``same``'s fine-tune folder ``src`` copied whole to ``folder``
    (:func:`ofa.fileio.atomic_write_dir`: never half a folder), its ``finetune.json`` naming
    its own folder and ``copied_from``."""
    from ofa.train.finetune import FINETUNE_JSON

    def copy(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        info = read_json(tmp / FINETUNE_JSON, "fine-tune")
        atomic_write_json(tmp / FINETUNE_JSON, {
            **info, "config": {**info["config"], "out": str(folder)}, "copied_from": same})

    atomic_write_dir(folder, copy)


def _first_choosers(chosen: list[dict[str, Any]]) -> list[str]:
    """Per chosen row, the label of the first row that chose the same subnet (its own label
    when it is the first): budgets above the Pareto front's end all choose its last subnet,
    which is fine-tuned, exported and measured once."""
    first: dict[str, str] = {}
    return [first.setdefault(json.dumps(c["config"], sort_keys=True), c["label"])
            for c in chosen]


def _same_subnet(models: Path, r: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The result of ``row``, whose subnet an earlier budget chose and ``r`` measured: the
    same measurement with ``row``'s label and budget (``same_as``: ``r``'s label) and the
    bundle copied to ``models/<label>`` (:func:`ofa.fileio.atomic_write_dir`)."""
    src, dst = models / r["label"], models / row["label"]
    atomic_write_dir(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
    return {**r, "label": row["label"], "budget_ms": row.get("budget_ms"),
            "model": str(dst / Path(r["model"]).relative_to(src)), "same_as": r["label"]}


@dataclass
class State:
    """What the steps of one ``ofa run`` hand on: the reused supernet (``(net, config,
    info)`` of ``load_run``, or None), the supernet run folder, its space and info, the
    accuracy predictor, the latency table and its predictor, the budgets (ms), the search
    result (``chosen`` per budget, ``front``), the fine-tuned folders per label, the
    measured results per subnet, the report and the background block-conversion process."""

    reused: Any = None
    run: Path | None = None
    space: Any = None
    info: dict[str, Any] | None = None
    dataset: str = ""
    acc: Any = None
    table: LatencyTable | None = None
    lat: Any = None
    budgets: list[float] | None = None
    found: dict[str, Any] | None = None
    finetuned: dict[str, Path] | None = None
    results: list[dict[str, Any]] | None = None
    report: dict[str, Any] | None = None
    converting: Any = None

    def stop_converting(self) -> None:
        """End the background block conversion (it ignores SIGTERM, ofa/lifetime.py; its
        files are written atomically, so SIGKILL loses nothing but the model in hand)."""
        if self.converting is not None:
            self.converting.kill()
            self.converting.join()
            self.converting = None


@dataclass(frozen=True)
class Step:
    """One step of ``ofa run``: its ``name``, the files it makes in the run folder
    (``outputs``, relative), ``run(rc, state)`` and ``when(rc)`` (does this run need it)."""

    name: str
    outputs: tuple[str, ...]
    run: Callable[[RunConfig, State], None]
    when: Callable[[RunConfig], bool] = lambda rc: True


def _train_step(rc: RunConfig, st: State) -> None:
    from ofa.train.run import load_run

    st.run = _train(rc)
    net, tcfg, st.info = st.reused or load_run(st.run)
    st.space, st.dataset = net.space, tcfg.dataset


def _predictor_step(rc: RunConfig, st: State) -> None:
    st.acc = _predictor(rc, st.run, st.dataset)


def _table_step(rc: RunConfig, st: State) -> None:
    from search.latency import LatencyPredictor

    st.stop_converting()  # the table step converts what is left, in parallel
    st.table = run_table(rc, st.space)
    st.lat = LatencyPredictor(st.table, st.space, speed=rc.search.speed)
    st.budgets = list(rc.search.budgets) if rc.search.budgets else auto_budgets(st.lat, st.space)


def _search_step(rc: RunConfig, st: State) -> None:
    st.found = _search(rc, st.run, st.space, st.acc, st.lat, st.budgets)


def _budget_step(rc: RunConfig, st: State) -> None:
    st.found["chosen"] = _measured_budgets(rc, st.space, st.table, st.found)


def _finetune_step(rc: RunConfig, st: State) -> None:
    st.finetuned = _finetune(rc, st.run, st.found["chosen"])


#: times a budget whose returned subnet the final measurement put over it chooses again
RECHOICES = 2


def _validate_step(rc: RunConfig, st: State) -> None:
    """Export and measure the chosen subnets; with a measured budget, the final measurement is
    its arbiter: a subnet it puts over its budget is replaced by the budget's next candidate, or
    where none is left one of the Pareto front that its final measurement says should meet it
    (:func:`deploy.budget.rechoose_over_budget`, ``budget.json`` rewritten, the new one
    fine-tuned when the run fine-tunes) and measured in turn (a choice made on an estimate then
    takes its final measurement, :func:`deploy.budget.settle_estimates`), up to
    :data:`RECHOICES` times. ``budget.json`` counts the times chosen again (``rechoices``), so
    that a rerun goes on from there instead of choosing again on the same measurements."""
    from deploy.budget import rechoose_over_budget, settle_estimates

    path = rc.folder / "budget.json"
    done = read_json(path, "measured budget").get("rechoices", 0) if path.exists() else 0
    for i in range(min(done, RECHOICES), 1 + RECHOICES):
        st.results = _validate(rc, st.run, st.found["chosen"], st.finetuned or {}, st.table)
        if rc.search.budget_candidates <= 0 or not path.exists():
            return
        final = [r["measured_ms"] for r in st.results]
        settled = settle_estimates(st.found["chosen"], final)
        if settled != st.found["chosen"]:  # a choice made on an estimate, now measured
            atomic_write_json(path, {**read_json(path, "measured budget"), "chosen": settled})
            st.found["chosen"] = settled
        if i == RECHOICES:
            return
        old = st.found["chosen"]
        new = rechoose_over_budget(old, final, st.found.get("front", []))
        if new != old:  # a choice replaced, or one marked as over its budget after all
            atomic_write_json(path, {**read_json(path, "measured budget"), "chosen": new,
                                     "rechoices": i + 1})
            st.found["chosen"] = new
        moved = [(o, n) for o, n in zip(old, new) if n["config"] != o["config"]]
        if not moved:
            return
        for o, n in moved:
            how = ("of the Pareto front, its prediction scaled by that to "
                   f"{n['measured_ms']:.3f} ms" if n.get("estimated") else
                   f"measured at {n['measured_ms']:.3f} ms"
                   + ("" if n["met"] else " (the fastest candidate: none meets it)"))
            log(f"measured budget {n['budget_ms']:g} ms: the final measurement put "
                f"{o['label']} at {n['final_over_ms']:.3f} ms, over it; choosing again: one "
                + how)
        if rc.finetune_epochs > 0:
            st.finetuned = _finetune(rc, st.run, new)


def _report_step(rc: RunConfig, st: State) -> None:
    metrics = st.run / "metrics.jsonl"
    phase_ends = [json.loads(line) for line in metrics.read_text().splitlines()
                  if '"phase_end"' in line] if metrics.exists() else []
    last = phase_ends[-1] if phase_ends else {}
    t = st.table
    meta = {
        "supernet": {"run": str(st.run), "largest_top1": last.get("top1_max", float("nan")),
                     "smallest_top1": last.get("top1_min", float("nan")),
                     "global_steps": st.info.get("global_steps")},
        "predictor": st.acc.metrics,
        "table": {"path": t.source, "context": t.describe(),
                  "calibration": {k: t.calibration.get(k, 1.0) for k in ("a", "p", "b")},
                  "speed": rc.search.speed, "speed_states": t.probe.get("ms"),
                  "speed_text": t.speed_text()},
        "budgets_ms": st.budgets, "space": st.space.name, "dataset": st.dataset,
        "training": (f"supernet reused from `{st.run}`" if rc.supernet else
                     f"schedule `{rc.train.schedule}`, {rc.train.epochs:g} epochs")}
    st.report = write_report(rc, meta, st.results, st.found)


#: the steps of ``ofa run``, in order (the module docstring)
STEPS: tuple[Step, ...] = (
    Step("train", ("supernet/run.json", "supernet/supernet.safetensors"), _train_step),
    Step("accuracy predictor", ("supernet/acc_predictor.safetensors",), _predictor_step),
    Step("latency table", ("latency_table.json", "table_verification.json"), _table_step),
    Step("search", ("search.json", "shortlist.jsonl"), _search_step),
    Step("measured budget", ("budget.json",), _budget_step,
         when=lambda rc: rc.search.budget_candidates > 0),
    Step("fine-tune", ("finetuned/",), _finetune_step, when=lambda rc: rc.finetune_epochs > 0),
    Step("export + measure", ("models/", "validation.json"), _validate_step),
    Step("report", ("report.json", "report.md", "pareto.png"), _report_step),
)


def _preflight(rc: RunConfig) -> Any:
    """Everything that can be refused before any work: the target reachable, the reused
    supernet readable, a given table of the right kind for this run's space. Returns the
    reused run (``load_run``'s triple) or None.

    Raises:
        ValueError: bad input, named in one line.
        deploy.targets.TargetError: the target cannot be reached.
    """
    from deploy.targets import parse_target
    from ofa.train.run import load_run

    if rc.deploy.target.startswith("adb") and rc.deploy.runtime != "litert":
        raise InputError(f"--target {rc.deploy.target}: a phone is measured with TFLite's "
                         "benchmark_model, which times .tflite models only; add --runtime litert")
    parse_target(rc.deploy.target, **rc.deploy.target_options).check()  # before training, not after
    reused = load_run(rc.supernet) if rc.supernet else None  # a bad folder fails here
    if rc.table.path:  # kind, context, space and resolutions: before training, not after it
        planned = planned_space(rc, reused)
        LatencyTable.load(rc.table.path, space=planned, resolutions=list(planned.resolutions),
                          runtime=rc.deploy.runtime, threads=rc.deploy.threads,
                          precision=rc.deploy.precision)
    return reused


def run_pipeline(rc: RunConfig, steps: tuple[Step, ...] = STEPS) -> dict[str, Any]:
    """Run every step of ``ofa run`` (:data:`STEPS`) that is not done yet; returns
    ``report.json``'s dict.

    Raises:
        ValueError: bad data/config, an infeasible budget, a mismatched table.
        deploy.targets.TargetError: the target could not measure.
    """
    st = State(reused=_preflight(rc))
    rc.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rc.folder / "config.json", asdict(rc))
    st.converting = start_block_conversion(rc, st.reused)  # beside training
    try:
        for step in steps:
            if step.when(rc):
                step.run(rc, st)
    finally:
        st.stop_converting()
    return st.report
