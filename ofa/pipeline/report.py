"""``ofa run``'s report: ``report.json``, ``report.md`` and ``pareto.png``, and the terminal
summary."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ofa.fileio import atomic_write, atomic_write_json, atomic_write_text
from ofa.pipeline.config import RANK_TAU, RunConfig

__all__ = ["write_report", "summary_lines"]


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


def write_report(rc: RunConfig, info: dict[str, Any], results: list[dict[str, Any]],
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
               "speed": rc.search.speed}}
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
          f"budgets and measurements in ms at the **{rc.search.speed}** speed "
          "(`docs/latency.md`)\n"
          f"- target: `{rc.deploy.target}`, {rc.deploy.threads} thread(s)\n\n"
          "## Chosen subnets: predicted vs measured\n\n" + markdown_table(results) +
          f"\nAll within ±10%: **{rep['summary']['all_within_10pct']}**; all within their "
          f"budget as measured: **{rep['summary']['all_within_budget']}**; largest error "
          f"{rep['summary']['max_abs_error_pct']:.1f}%; lowest exported top-1 "
          f"{rep['summary']['min_measured_top1']:.2f}%. Exported top-1 is measured on "
          f"{results[0]['top1_images']} evaluation images; ± is its standard error, and two "
          "subnets whose top-1 differ by less than about twice that are not told apart by "
          "this measurement.\n\n" + _measurement_md(results) +
          f"Pareto front (predicted): {len(front)} points. ![Pareto front](pareto.png)\n"
          + _budget_md(chosen) + _shortlist_md(chosen) + _finetune_md(results))
    atomic_write_text(folder / "report.md", md)
    return rep


def _measurement_md(results: list[dict[str, Any]]) -> str:
    """How the final measurement was taken and what the predictions are, or '': the batches
    timed and kept at the device's fast state (``fast_state``, :mod:`deploy.validate`), and
    the table's own predictions where the measured budget scaled them
    (:func:`deploy.budget.scale_by_candidates`)."""
    from deploy.probe import fast_state_text

    lines = []
    fs = next((r["measurement"]["fast_state"] for r in results
               if r.get("measurement", {}).get("fast_state")), None)
    if fs:
        lines.append(f"Final measurement: {fast_state_text(fs, 'batches')} "
                     "(`docs/latency.md`).")
    scaled = [r for r in results if r.get("predicted_table_ms") is not None
              and r["predicted_table_ms"] != r["predicted_ms"]]
    if scaled:
        lines.append("Predicted ms: the latency table's, scaled by how the other candidates "
                     "the measured budget timed ran against it; the table's own: "
                     + ", ".join(f"{r['label']} {r['predicted_table_ms']:.3f}" for r in scaled)
                     + " ms.")
    return "".join(f"{line}\n\n" for line in lines)


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
          _met(c), "yes" if c["config"] == c.get("search_choice") else "no"]
         for c in chosen if "candidates" in c])


def _met(c: dict[str, Any]) -> str:
    """A budget's "met" cell; a choice the final measurement overturned says so."""
    text = "yes" if c["met"] else "**no**"
    if c.get("final_over_ms") is not None:
        what = "chosen again: the first" if c.get("rechosen") else "this subnet"
        text += f" ({what} measured {c['final_over_ms']:.3f} ms at the end)"
    return text


def _shortlist_md(chosen: list[dict[str, Any]]) -> str:
    """The report's shortlist table (``ofa run --shortlist``), or ''."""
    rows = []
    for c in chosen:
        if "shortlist" in c:
            pred = [r["acc"] for r in c["shortlist"]]
            hold = [r["holdout_top1"] for r in c["shortlist"]]
            chosen_text = (f"#{c['shortlist_pick'] + 1}, {c['acc']:.2f} / "
                           f"{c['holdout_top1']:.2f}" if "shortlist_pick" in c else
                           f"none: the measured budget chose another ({c['acc']:.2f} / -)")
            rows.append([c["label"], str(len(hold)), f"{min(pred):.2f}-{max(pred):.2f}",
                         f"{min(hold):.2f}-{max(hold):.2f}", chosen_text])
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
