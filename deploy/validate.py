"""Validate search results on the target: export, measure, compare with the predictions.

``ofa deploy``: for every subnet a search returned, export it (:mod:`deploy.bundle`), run the
model of the table's runtime on the target with the device agent (latency and top-1 on the
exported evaluation images), and report predicted vs measured latency (error %, within
±10%), measured accuracy vs the supernet subnet's, and model sizes, as JSON and Markdown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deploy.bundle import export_subnet, read_bundle
from deploy.export import converter_pool
from deploy.formats import format_for
from deploy.ontarget.runtimes import TimingProtocol
from deploy.probe import (
    ProbedTarget,
    combine_repeats,
    fastest_ms,
    kept_at_fast_state,
    wait_for_fast_state,
)
from deploy.targets import Target
from deploy.targets.base import device_progress
from ofa.errors import InputError
from ofa.fileio import atomic_write_json, atomic_write_text
from ofa.space import SubnetConfig
from search.latency_table import LatencyTable

__all__ = ["validate_subnets", "markdown_table", "write_validation", "top1_standard_error"]


def top1_standard_error(top1: float, images: int) -> float:
    """The binomial standard error (percentage points) of a top-1 of ``top1`` % measured on
    ``images`` images: ``sqrt(p (1 - p) / n)``. A difference between two subnets' top-1
    smaller than about twice this is within the noise of the images drawn
    (``docs/cifar10.md``: 0.4 points on CIFAR-10's 10,000 test images; 0.9 points at 97% on
    the 359 digits test images).

    Raises:
        ValueError: no images, or a top-1 outside 0-100.
    """
    if images < 1 or not 0.0 <= top1 <= 100.0:
        raise InputError(f"top-1 {top1}% on {images} images is not a measurement")
    p = top1 / 100.0
    return math.sqrt(p * (1.0 - p) / images) * 100.0


def _export_bundle(run: str, cfg: dict[str, Any], folder: str, formats: tuple[str, ...],
                   data: str | None, predicted: dict[str, Any]) -> dict[str, Any]:
    """One supernet subnet's bundle (a converter-pool task: plain arguments)."""
    return export_subnet(run, SubnetConfig.from_dict(cfg), folder, formats=formats,
                         progress=False, data=data, predicted=predicted)


def validate_subnets(run: str | Path, rows: list[dict[str, Any]], out: str | Path,
                     target: Target,
                     runtime: str = "onnxruntime", threads: int = 1,
                     formats: tuple[str, ...] = ("onnx-fp32", "tflite-fp32"),
                     protocol: TimingProtocol | None = None, progress: bool = True,
                     data: str | None = None,
                     models: dict[str, Any] | None = None,
                     precision: str = "fp32", jobs: int = 1,
                     ms_per_unit: float | None = None,
                     speed: dict[str, Any] | None = None,
                     table: LatencyTable | None = None) -> list[dict[str, Any]]:
    """Export and measure each search row (``{"config", "acc", "latency_ms", ...}`` plus an
    optional ``"budget_ms"``/``"label"``) on ``target``; bundles go to ``out/<label>/`` and
    are reused when already complete (same config, files intact). ``data`` overrides the
    run's dataset path (calibration and parity images). ``models``: label -> a fine-tuned
    static network to export instead of the supernet's subnet. ``precision``: the model
    measured is ``runtime``'s format at that precision (``int8``: ONNX QDQ or full-integer
    TFLite, as in ``deploy/formats.py``), to compare with an int8 latency table. ``jobs``:
    processes exporting the supernet's subnets (:func:`deploy.export.converter_pool`;
    fine-tuned networks are exported here).

    Latency: every subnet's model in one ``target.bench_many`` (one agent run, interleaved
    trials: the way a latency table's calibration subnets are timed, so that prediction
    and measurement see the device alike), :data:`REPEATS` times (and
    :data:`EXTRA_REPEATS` more when a model's batches span more than
    :data:`SETTLED_SPREAD`), each model's median
    timing kept (:meth:`deploy.probe.ProbedTarget.bench_many`); top-1: one pass over each
    bundle's evaluation images on the target (``Target.top1``; over SSH one request to the
    session's agent), or, where the target checks no accuracy (adb's ``benchmark_model``),
    the same file's top-1 measured here at export (``top1_measured_on``: the target's name
    or ``here``).

    The models are timed beside the reference probe (``deploy/probe.py``). ``ms_per_unit``
    (the latency table's ms per probe unit at the stated speed,
    :meth:`search.latency_table.LatencyTable.probe_ms`): ``measured_ms`` is then each
    model's time in probe units converted at that speed, so that prediction and
    measurement meet at one speed whatever the device's speed was during this run (the ms
    as timed now stay in ``measured_now_ms``); ``speed``: the speed states the conversion
    came from, kept in each row. ``table``: the latency table the predictions came from,
    whose reference subnet is timed beside them where it recorded a state (:func:`_timed`).

    Returns one result row per subnet: ``label, budget_ms, summary, macs, params,
    predicted_ms, predicted_table_ms`` (the table's own prediction where ``predicted_ms``
    was adapted by the measured budget, ``table_ms``), ``measured_ms, error_pct,
    within_10pct, predicted_acc, supernet_top1, measured_top1, top1_measured_on,
    top1_images, top1_se (points, :func:`top1_standard_error`), sizes (bytes per format),
    measurement (agent JSON)``.

    Raises:
        deploy.targets.TargetError: the target could not measure.
    """
    fmt = format_for(runtime, precision).name
    formats = tuple(dict.fromkeys((fmt, *formats)))
    # export everything first: conversions must not overlap (or warm up) the timed runs
    bundles = _bundles(run, rows, Path(out), formats, data, models or {}, jobs, progress)
    protocol = protocol or TimingProtocol()
    paths = [folder / rep["models"][fmt]["path"] for _, _, folder, rep in bundles]
    timed = _timed(target, paths, runtime, precision, threads, protocol, table, Path(out))
    # top-1 of the same files on the bundles' evaluation images, after the timing
    accs = target.top1(paths, [folder / "eval.npz" for _, _, folder, _ in bundles], threads)
    return [_result(row, bundle, model, t, acc, protocol, ms_per_unit, speed, target.name,
                    fmt)
            for row, bundle, model, t, acc in zip(rows, bundles, paths, timed, accs)]


def _timed(target: Target, paths: list[Path], runtime: str, precision: str, threads: int,
           protocol: TimingProtocol, table: LatencyTable | None, out: Path
           ) -> list[dict[str, Any]]:
    """The models ``paths`` timed on ``target`` beside the probe, :data:`REPEATS` times
    (:meth:`deploy.probe.ProbedTarget.bench_many`; :data:`EXTRA_REPEATS` more when some
    model's batches span more than :data:`SETTLED_SPREAD`, :func:`_unsettled`), one row
    each: its median batch over all of them (:func:`deploy.probe.combine_repeats`). Where
    ``table`` recorded a reference state (``calibration.reference``,
    :func:`deploy.lut.measure.at_reference`) its reference subnet is timed first in every
    batch and each model's probe units are brought to that state (:func:`_at_reference`), as
    the table's own measurements are.

    Where ``table`` holds this device's speed states (``probe.ms``: its build here, or the
    verification that adapted it here), the rows come from the batches timed at the
    device's fast state (:func:`deploy.probe.kept_at_fast_state`): while fewer than
    :data:`REPEATS` were, up to :data:`deploy.probe.FAST_WAIT` more batches are timed, one
    at a time, for at most :data:`deploy.probe.FAST_WAIT_S` s
    (:func:`deploy.probe.wait_for_fast_state`). Each row's ``fast_state`` says
    what was kept."""
    recorded = table.reference if table is not None and table.probe else {}
    fastest = fastest_ms(table.probe) if table is not None else None
    ref = [_reference_model(table, out, runtime, precision)] if recorded else []
    probed, models = ProbedTarget(target, runtime, precision), [*ref, *paths]

    def settled(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        kept, state = kept_at_fast_state(batches, _batch_probe_ms, fastest)
        rows = combine_repeats(kept, protocol.statistic)
        if ref:
            rows = _at_reference(rows[1:], rows[0], recorded["rel"], table.reference_weight,
                                 _batch_pairs(kept))
        return [{**r, "fast_state": state} for r in rows] if state else rows

    def batch() -> list[dict[str, Any]]:
        return probed.bench_many(models, threads, protocol)

    with device_progress(target, "final measurement"):
        batches = wait_for_fast_state(batch, REPEATS, _batch_probe_ms, fastest)
        rows = settled(batches)
        if _unsettled(rows):
            batches += [batch() for _ in range(EXTRA_REPEATS)]
            rows = settled(batches)
    return rows


def _batch_probe_ms(batch: list[dict[str, Any]]) -> float | None:
    """The probe's median trial mean (ms) in one timed batch (None: no probe recorded)."""
    means = (batch[0].get("probe") or {}).get("trial_means") if batch else None
    return float(np.median(means)) if means else None


def _unsettled(rows: list[dict[str, Any]]) -> bool:
    """Whether some model's probe units (brought to the reference state where they were,
    ``rel_batches``) differ between its batches by more than :data:`SETTLED_SPREAD`."""
    for r in rows:
        units = r["latency_ms"].get("rel_batches") or r["latency_ms"].get("rel_repeats")
        if units and max(units) > (1.0 + SETTLED_SPREAD) * min(units):
            return True
    return False


def _reference_model(table: LatencyTable, out: Path, runtime: str, precision: str) -> Path:
    """``table``'s reference subnet (:func:`deploy.lut.table_reference`) exported for
    ``runtime`` at ``precision`` into ``out/reference/`` as a table's subnets are
    (:func:`deploy.lut.convert._export_subnets`: periodic weights, an existing file
    reused)."""
    from deploy.lut import table_reference
    from deploy.lut.convert import _export_subnets
    from ofa.space import SearchSpace

    space = SearchSpace.from_dict(table.space)
    return _export_subnets(space, [table_reference(table, space)],
                           format_for(runtime, precision), out / "reference", "reference",
                           1)[0]


def _batch_pairs(batches: list[list[dict[str, Any]]]) -> list[list[list[list[float]]]]:
    """For each model after the reference (the first of every batch), its
    :func:`deploy.lut.measure.trial_pairs` with the reference in every batch:
    ``[model][batch][trial] = [model's units, reference's units]``."""
    from deploy.lut import trial_pairs

    return [[trial_pairs(b[i]["latency_ms"], b[0]["latency_ms"]) for b in batches]
            for i in range(1, len(batches[0]))] if batches else []


def _at_reference(rows: list[dict[str, Any]], ref: dict[str, Any], state: float,
                  weight: float = 1.0,
                  pairs: list[list[list[list[float]]]] | None = None) -> list[dict[str, Any]]:
    """``rows`` (one per model, :meth:`deploy.probe.ProbedTarget.bench_many`) with each
    ``latency_ms.rel`` brought to the reference state ``state`` as far as the table's
    ``weight`` says the subnets follow it: the median over the batches of its units
    brought there by the reference in the same batch (:func:`deploy.lut.measure.
    at_reference`), or, where ``pairs`` (:func:`_batch_pairs`) holds the model's and the
    reference's units trial by trial in every batch, the median over all those trials
    (:func:`deploy.lut.measure.paired_at_reference`). Each batch's units brought there are
    kept as ``rel_batches``, the units as timed as ``rel_probe``."""
    from deploy.lut import at_reference
    from deploy.lut.measure import paired_at_reference

    def units(row: dict[str, Any]) -> list[float]:
        lat = row["latency_ms"]
        return list(lat.get("rel_repeats") or [lat["rel"]])

    base = units(ref)
    out = []
    for i, r in enumerate(rows):
        lat = r["latency_ms"]
        mine = pairs[i] if pairs and len(pairs) == len(rows) else None
        # each batch trial by trial where it has pairs (at_reference decides), else by batch
        batches = at_reference({"rel": units(r), "reference_rel": base, "pairs": mine},
                               state, weight)
        rel = (paired_at_reference([t for p in mine for t in p], state, weight)
               if mine and all(mine) else float(np.median(batches)))
        out.append({**r, "latency_ms": {**lat, "rel": rel,
                                        "rel_batches": batches, "rel_probe": lat["rel"]},
                    "reference": {"rel": ref["latency_ms"]["rel"], "state": state,
                                  "weight": weight}})
    return out


#: the final measurement times its models in this many batches, one after the other, and
#: keeps each model's median: one batch of a few seconds varies by about 3% (relative s.d.
#: of a model's probe units between batches on this project's VM, with or without the drift
#: harness) and once in a while far more (a model and its identical copy in one batch 6.7
#: and 8.2 probe units apart, ``docs/benchmarks.md``); the median of three is not moved by
#: one such batch
REPEATS = 3

#: a final measurement in which some model's probe units (at the reference state) differ
#: between its :data:`REPEATS` batches by more than this fraction is timed in
#: :data:`EXTRA_REPEATS` more batches, each model then keeping its median over all of them.
#: Batches vary by about 3% (above), so three of them span more than 10% in about one
#: model of twenty; under the drift harness two ``ofa run`` subnets of 24 came out 10.9%
#: and 12.1% off their predictions, the first from batches at 11.1, 13.3 and 14.0 units
#: (``docs/benchmarks.md``): the median of three followed the two batches that shared one
#: state of the device
SETTLED_SPREAD = 0.10
EXTRA_REPEATS = 2


def _bundles(run: str | Path, rows: list[dict[str, Any]], out: Path,
             formats: tuple[str, ...], data: str | None, models: dict[str, Any], jobs: int,
             progress: bool) -> list[list[Any]]:
    """``[label, config, folder, bundle report]`` per row: a complete bundle already in
    ``out/<label>/`` (same config, same fine-tuning, every format) is kept, the others are
    exported (the supernet's subnets by ``jobs`` converter processes, fine-tuned networks
    here)."""
    bundles, todo = [], []
    for i, row in enumerate(rows):
        label = row.get("label") or f"subnet{i}"
        cfg = SubnetConfig.from_dict(row["config"])
        folder = out / label
        model = models.get(label)
        rep = read_bundle(folder)
        if (rep is None or rep["config"] != cfg.to_dict()
                or rep.get("finetuned", False) != (model is not None)
                or not set(formats) <= set(rep["models"])):
            predicted = {"acc": row.get("acc"), "latency_ms": row.get("latency_ms")}
            if model is None:  # the supernet's subnet: exported by the converter pool
                todo.append((i, (str(run), cfg.to_dict(), str(folder), formats, data,
                                 predicted)))
            else:  # a fine-tuned network in this process
                rep = export_subnet(run, cfg, folder, formats=formats, progress=progress,
                                    data=data, predicted=predicted, model=model)
        bundles.append([label, cfg, folder, rep])
    if todo:
        with (tqdm(total=len(todo), desc=f"export ({min(jobs, len(todo))} process(es))",
                   unit="subnet", disable=not progress) as bar,
              converter_pool(min(jobs, len(todo))) as convert):
            for (i, _), rep in zip(todo, convert(_export_bundle, *zip(*(t for _, t in todo)))):
                bundles[i][3] = rep
                bar.update()
    return bundles


def _result(row: dict[str, Any], bundle: list[Any], model: Path, t: dict[str, Any],
            acc: dict[str, Any] | None, protocol: TimingProtocol, ms_per_unit: float | None,
            speed: dict[str, Any] | None, where: str, fmt: str) -> dict[str, Any]:
    """One subnet's result row (:func:`validate_subnets`) from its timing ``t`` and top-1
    ``acc`` on the target (None: the target checks no accuracy, the export's is used)."""
    label, cfg, _, rep = bundle
    lat = t["latency_ms"]
    meas = {**t, "median": lat["median"], "p90": lat.get("p90"), "min": lat.get("min"),
            "warmup": protocol.warmup, "runs": protocol.runs, "trials": protocol.trials,
            "timing": "interleaved", "target": where}
    if acc is not None:
        meas["accuracy"] = {"top1": acc["top1"], "images": acc["images"]}
        top1, top1_on, images = acc["top1"], where, acc["images"]
    else:  # the target checks no accuracy: the same file's top-1 here, at export
        top1, top1_on = rep["models"][fmt]["top1"], "here"
        images = rep["parity_images"]
    pred = row.get("latency_ms")
    now = lat[protocol.statistic]
    m = lat["rel"] * ms_per_unit if ms_per_unit else now
    err = None if pred is None else (pred - m) / m * 100
    return {
        "label": label, "budget_ms": row.get("budget_ms"), "summary": cfg.summary(),
        "config": cfg.to_dict(), "macs": rep["macs"], "params": rep["params"],
        "predicted_ms": pred, "predicted_table_ms": row.get("table_ms", pred),
        "measured_ms": m, "measured_now_ms": now,
        "measured_rel": lat["rel"], "measured_rel_probe": lat.get("rel_probe", lat["rel"]),
        "speed": speed, "measured_p90_ms": lat.get("p90"),
        "error_pct": err, "within_10pct": None if err is None else abs(err) <= 10,
        "predicted_acc": row.get("acc"), "supernet_top1": rep["supernet_top1"],
        "measured_top1": top1, "top1_measured_on": top1_on, "top1_images": images,
        "top1_se": top1_standard_error(top1, images),
        "sizes": {k: v["bytes"] for k, v in rep["models"].items()},
        "parity": {k: {"max_abs_diff": v["max_abs_diff"],
                       "top1_agreement": v["top1_agreement"]}
                   for k, v in rep["models"].items()},
        "model": str(model), "format": fmt, "target": where,
        "measurement": meas}


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The validation table as Markdown (one row per subnet)."""
    head = ("| subnet | budget ms | config | MMACs | Mparams | predicted ms | measured ms | "
            "error | ±10% | predicted acc | supernet top-1 | exported top-1 ± s.e. | sizes KB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")

    def f(v, fmt="{:.2f}"):
        return "–" if v is None else fmt.format(v)

    lines = []
    for r in results:
        sizes = ", ".join(f"{k} {v / 1024:.0f}" for k, v in r["sizes"].items())
        # a target that checks no accuracy (adb): the same file's top-1 on this machine
        here = " (here)" if r.get("top1_measured_on") == "here" else ""
        se = f" ± {r['top1_se']:.2f}" if r.get("top1_se") is not None else ""
        same = f" (= {r['same_as']})" if r.get("same_as") else ""  # one subnet, two budgets
        lines.append(
            f"| {r['label']}{same} | {f(r['budget_ms'])} | `{r['summary']}` | "
            f"{r['macs'] / 1e6:.2f} | "
            f"{r['params'] / 1e6:.3f} | {f(r['predicted_ms'], '{:.3f}')} | "
            f"{r['measured_ms']:.3f} | {f(r['error_pct'], '{:+.1f}%')} | "
            f"{'–' if r['within_10pct'] is None else ('yes' if r['within_10pct'] else 'no')} | "
            f"{f(r['predicted_acc'])} | {r['supernet_top1']:.2f} | "
            f"{f(r['measured_top1'])}{se}{here} | {sizes} |")
    return head + "\n".join(lines) + "\n"


def write_validation(results: list[dict[str, Any]], out: str | Path, title: str) -> None:
    """``out/validation.json`` and ``out/validation.md`` (the title says EMULATED when the
    device reported an emulation, see :func:`deploy.ontarget.facts.emulated`)."""
    out = Path(out)
    why = next((r["measurement"].get("machine", {}).get("emulated") for r in results
                if r.get("measurement", {}).get("machine", {}).get("emulated")), None)
    if why:
        title += f" (EMULATED: {why}; the latencies measure the emulation)"
    atomic_write_json(out / "validation.json", {"title": title, "subnets": results})
    atomic_write_text(out / "validation.md", f"# {title}\n\n" + markdown_table(results))
