"""`ofa run` end to end with a tiny configuration, then a re-run that skips every step."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ofa.cli import main

TINY = ["run", "--name", "t", "--resolutions", "12,16", "--epochs", "0.3", "--samples", "12",
        "--lut-runs", "3", "--lut-calib", "3", "--generations", "2", "--population", "16",
        "--runs", "3", "--warmup", "1", "--trials", "1", "--formats", "onnx-fp32",
        "--recal-images", "256"]
SHORTLIST = ["--shortlist", "3"]  # the first run (and its re-run) measure shortlists


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ofa-run")
    (root / "no-tables").mkdir()  # no shipped table: the run measures its own
    assert main([*TINY, *SHORTLIST, "--root", str(root),
                 "--tables-dir", str(root / "no-tables")]) == 0
    return root / "t"


def test_run_writes_every_artifact(tiny_job: Path):
    d = tiny_job
    for f in ("config.json", "supernet/run.json", "supernet/supernet.safetensors",
              "supernet/acc_predictor.safetensors", "supernet/acc_predictor.json",
              "latency_table.json", "search.json", "validation.json", "report.json",
              "report.md", "pareto.png"):
        assert (d / f).is_file(), f
    assert (d / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --recal-images: the supernet's BN recalibrations and the predictor's subnets
    assert json.loads((d / "supernet/run.json").read_text())["config"]["recal_images"] == 256
    assert json.loads((d / "supernet/acc_predictor.dataset.jsonl").read_text().splitlines()[0])[
        "recal_images"] == 256
    # the block models (converted beside training, then by the table step) went with it
    assert not (d / "latency_table.json.models").exists()
    # the table's reference subnet: its state recorded by the calibration, and timed beside
    # the final measurement, whose probe units are brought to that state
    ref = json.loads((d / "latency_table.json").read_text())["calibration"]["reference"]
    assert ref["rel"] > 0 and ref["range"][0] <= ref["rel"] <= ref["range"][1]
    for v in json.loads((d / "validation.json").read_text())["subnets"]:
        assert v["measured_rel_probe"] > 0 and v["measurement"]["reference"]["state"] == ref["rel"]
    rep = json.loads((d / "report.json").read_text())
    assert rep["kind"] == "ofa-edge-report"
    assert len(rep["budgets_ms"]) == 3 and rep["budgets_ms"] == sorted(rep["budgets_ms"])
    assert len(rep["subnets"]) == 3 and len(rep["pareto_front"]) >= 1
    assert set(rep["predictor"]) >= {"rmse", "kendall_tau", "n_train", "n_val"}
    assert rep["predictor"]["n_train"] + rep["predictor"]["n_val"] == 12
    budget = json.loads((d / "budget.json").read_text())["chosen"]
    for r, b, m in zip(rep["subnets"], rep["budgets_ms"], budget):
        # measured on the target beside the probe before choosing: a candidate may be
        # predicted a little over its budget, the one chosen was measured within it
        assert r["budget_ms"] == b == m["budget_ms"] and r["predicted_ms"] <= b * 1.1 + 1e-9
        assert m["config"] == r["config"] and (not m["met"] or m["measured_ms"] <= b)
        # 6 near the budget, then 6 faster ones a round while none met it (4 rounds at most,
        # deploy/budget.py: measure_budgets): how many depends on what was measured
        assert 1 <= len(m["candidates"]) <= 6 * 4
        assert r["measured_ms"] > 0 and r["macs"] > 0 and r["params"] > 0
        assert r["error_pct"] == pytest.approx((r["predicted_ms"] - r["measured_ms"])
                                               / r["measured_ms"] * 100)
        assert r["within_10pct"] == (abs(r["error_pct"]) <= 10)
        # the exported ONNX model scores exactly what the supernet subnet scores
        assert r["measured_top1"] == pytest.approx(r["supernet_top1"])
        assert r["top1_measured_on"] == "local" and r["top1_images"] == 359  # digits' test
        assert f"{r['measured_top1']:.2f} ± {r['top1_se']:.2f} |" in (d / "report.md").read_text()
        assert r["parity"]["onnx-fp32"]["max_abs_diff"] <= 1e-4
        bundle = d / "models" / r["label"]
        meta = json.loads((bundle / "onnx-fp32" / "model.json").read_text())
        assert meta["config"] == r["config"] and meta["predicted"]["acc"] == r["predicted_acc"]
        assert r["sizes"]["onnx-fp32"] == (bundle / "onnx-fp32" / "model.onnx").stat().st_size
    md = (d / "report.md").read_text()
    # the chosen subnets' table and the measured-budget one: a row per budget each (the
    # shortlist table lists the budgets whose shortlist was measured)
    assert "predicted vs measured" in md and len(re.findall(r"^\| budget\d ", md, re.M)) >= 6
    assert "## Measured budget" in md and "device speed: probe probe-v1" in md
    # the final measurement at the device's fast state (the table built here knows it), and
    # each chosen subnet's prediction next to the table's own where the budget scaled it
    fs = rep["subnets"][0]["measurement"]["fast_state"]
    assert 3 <= fs["batches"] <= 3 + 6 + 2 and 0 <= fs["at_fast"] <= fs["batches"]
    assert f"Final measurement: {fs['batches']} batches timed, {fs['at_fast']} of them" in md
    for r in rep["subnets"]:
        scaled = next(m for m in budget if m["label"] == r["label"]).get("candidate_scale")
        assert r["predicted_table_ms"] == pytest.approx(
            r["predicted_ms"] / (scaled["scale"] if scaled else 1.0))
        assert (f"{r['label']} {r['predicted_table_ms']:.3f}" in md) == (scaled is not None)
    # each budget's shortlist was measured on the hold-out split; the most accurate is chosen
    assert "## Shortlists measured on the hold-out split" in md
    margin = rep["predictor"]["rmse"]
    for r in rep["subnets"]:
        sl = rep["shortlists"][r["label"]]
        assert 1 <= len(sl) <= 3 and len({json.dumps(s["config"]) for s in sl}) == len(sl)
        assert all(s["acc"] >= sl[0]["acc"] - margin - 1e-9 for s in sl)
        assert all(s["latency_ms"] <= r["budget_ms"] + 1e-9 for s in sl)
        best = max(sl, key=lambda s: s["holdout_top1"])
        m = next(m for m in budget if m["label"] == r["label"])
        assert m["search_choice"] == best["config"]  # the shortlist's pick, then measured
    cached = (d / "shortlist.jsonl").read_text().splitlines()
    assert json.loads(cached[0])["split"] == "holdout"
    assert len(cached) - 1 == len({json.dumps(s["config"], sort_keys=True)
                                   for sl in rep["shortlists"].values() for s in sl})
    front = rep["pareto_front"]
    for p in front:  # mutually non-dominated
        assert not any(q["acc"] >= p["acc"] and q["latency_ms"] < p["latency_ms"]
                       for q in front if q is not p)


def test_rerun_skips_finished_steps(tiny_job: Path, capsys):
    d = tiny_job
    stamps = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()
              and p.name not in ("report.json", "report.md", "pareto.png", "config.json")}
    capsys.readouterr()
    assert main([*TINY, *SHORTLIST, "--root", str(d.parent),
                 "--tables-dir", str(d.parent / "no-tables")]) == 0
    out = capsys.readouterr().out
    for step in ("train: done", "accuracy predictor: done", "latency table: done",
                 "search: done", "export + measure: done"):
        assert step in out, step
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_shipped_table_is_verified_here(tiny_job: Path, tmp_path: Path, capsys, monkeypatch):
    """A shipped table is not trusted for its CPU model: it is verified with subnets
    measured on the target; one 3x off in probe units (as if from another device) is
    adapted by a fitted scale, saved in the run folder with its verdict, in one line.

    The subnets' measurements are the run's own table's predictions with a seeded 3%
    scatter, so that the verdict is the pipeline's to act on, not this VM's speed of the
    minute (real measurements: ``tests/test_latency_truth.py``'s verification test; a busy
    machine here once made this one rebuild instead)."""
    import deploy.verify
    from ofa.pipeline import RunConfig, TableSettings
    from ofa.pipeline.tables import run_table as _table
    from ofa.space import get_space
    from ofa.train.run import TrainConfig
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    space = get_space("mbv3-digits", resolutions=[12, 16])
    shipped_dir = tmp_path / "tables"
    shipped_dir.mkdir()
    src = LatencyTable.load(tiny_job / "latency_table.json", space=space)
    here = LatencyPredictor(LatencyTable.load(tiny_job / "latency_table.json", space=space),
                            space)
    g = np.random.default_rng(0)

    def measured(table, space, cfgs, **kw):
        rel = here.units_many(cfgs) * g.normal(1.0, 0.03, len(cfgs))
        return {"rel": rel.tolist(), "ms": (rel * 0.1).tolist(), "probe_ms": [0.1] * 10}

    monkeypatch.setattr(deploy.verify, "measure_subnets", measured)
    src.calibration = {**src.calibration, "a": src.calibration["a"] * 3.0}
    src.context["machine"] = {**src.context["machine"], "cpu_model": "Another CPU"}
    src.save(shipped_dir / "x86_64_mbv3-digits_onnxruntime_fp32_t1.json")
    rc = RunConfig(name="r", root=str(tmp_path),
                   train=TrainConfig(space="mbv3-digits",
                                     space_overrides={"resolutions": [12, 16]}),
                   table=TableSettings(tables_dir=str(shipped_dir), calib=10))
    (tmp_path / "r").mkdir()
    capsys.readouterr()
    t = _table(rc, space)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ": adapted: " in ln]
    assert len(line) == 1, "one line says the table was adapted and why"
    saved = json.loads((tmp_path / "r" / "latency_table.json").read_text())
    assert saved["context"]["verified_from"] == str(
        shipped_dir / "x86_64_mbv3-digits_onnxruntime_fp32_t1.json")
    verdict = json.loads((tmp_path / "r" / "table_verification.json").read_text())
    assert verdict["action"] == "adapted" and len(verdict["subnets"]) == 12
    scales = [saved["calibration"].get("scale")] if "scale" in saved["calibration"] else list(
        saved["calibration"]["resolution_scale"].values())
    assert all(0.2 < s < 0.5 for s in scales)  # about 1/3
    assert saved["probe"]["measured"] == "local" and t.unit == "probe"
    assert saved["entries"] == json.loads(
        (tiny_job / "latency_table.json").read_text())["entries"]


def test_run_reuses_a_trained_supernet(tiny_job: Path, capsys):
    """`ofa run --supernet RUN`: no training; the predictor and everything else go into the
    new run's folder and the reused supernet folder is left as it was. The first run's table
    is given (`--table`): verified here on 5 subnets instead of built again."""
    sup = tiny_job / "supernet"
    stamps = {p: p.stat().st_mtime_ns for p in sup.rglob("*") if p.is_file()}
    root = tiny_job.parent
    capsys.readouterr()
    assert main([*TINY, "--name", "reuse", "--supernet", str(sup), "--root", str(root),
                 "--table", str(tiny_job / "latency_table.json"),
                 "--finetune-epochs", "0.2"]) == 0
    out = capsys.readouterr().out
    assert f"train: reusing the supernet in {sup}" in out
    assert "latency table: verifying latency_table.json on local with 5 subnets" in out
    d = root / "reuse"
    assert not (d / "supernet").exists() and (d / "acc_predictor.safetensors").is_file()
    rep = json.loads((d / "report.json").read_text())
    assert rep["supernet"]["run"] == str(sup) and len(rep["subnets"]) == 3
    assert rep["shortlists"] == {} and not (d / "shortlist.jsonl").exists()  # off by default
    md = (d / "report.md").read_text()
    assert "supernet reused from" in md and "## Fine-tuning" in md
    for r in rep["subnets"]:  # fine-tuned, then exported and measured as such
        ft = json.loads((d / "finetuned" / r["label"] / "finetune.json").read_text())
        assert ft["config"]["recal_images"] == 256  # --recal-images reaches the fine-tunes
        assert ft["subnet"] == r["config"] and r["finetune"]["top1_after"] == ft["top1_after"]
        assert json.loads((d / "models" / r["label"] / "export.json").read_text())["finetuned"]
        assert r["measured_top1"] == pytest.approx(r["supernet_top1"])  # ONNX == PyTorch
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert main([*TINY, "--name", "bad", "--supernet", str(root / "missing"), "--root",
                 str(root)]) == 2
    assert not (root / "bad").exists()


def _cand(name: str, acc: float, ms: float) -> dict:
    """A measured-budget candidate whose prediction and measurement are ``ms``."""
    return {"config": {"n": name}, "acc": acc, "latency_ms": ms, "measured_ms": ms}


def _rechoice_case(tmp_path, monkeypatch, candidates, final):
    """`ofa run`'s export + measure step set up for budget1 (1.0 ms, the first candidate
    chosen): budget.json written, the final measurement faked by ``final`` (name -> ms).
    Returns (run config, the step module, the names measured per call, budget.json)."""
    import ofa.pipeline.steps as steps
    from ofa.pipeline import RunConfig
    from ofa.train.run import TrainConfig

    rc = RunConfig(name="r", root=str(tmp_path), train=TrainConfig(space="mbv3-digits"))
    rc.folder.mkdir()
    first = candidates[0]
    chosen = [{**first, "budget_ms": 1.0, "label": "budget1", "met": True, "margin_pct": 5.0,
               "search_choice": first["config"], "candidates": candidates}]
    path = rc.folder / "budget.json"
    path.write_text(json.dumps({"key": {"k": 1}, "chosen": chosen}))
    calls: list[list[str]] = []

    def validate(rc_, run, rows, finetuned, table):
        calls.append([r["config"]["n"] for r in rows])
        return [{"label": r["label"], "budget_ms": r["budget_ms"],
                 "measured_ms": final[r["config"]["n"]]} for r in rows]

    monkeypatch.setattr(steps, "_validate", validate)
    return rc, steps, calls, path


def test_a_subnet_measured_over_its_budget_at_the_end_is_chosen_again(tmp_path, monkeypatch,
                                                                      capsys):
    """`ofa run`'s export + measure step: the final measurement puts budget1's subnet over
    its budget; the step chooses the budget's next candidate, rewrites budget.json, measures
    again and keeps what meets the budget (deploy.budget.rechoose_over_budget)."""
    a, b = _cand("a", 80, 0.95), _cand("b", 78, 0.90)
    rc, steps, calls, path = _rechoice_case(tmp_path, monkeypatch, [a, b],
                                            {"a": 1.04, "b": 0.93})
    st = steps.State(found={"chosen": json.loads(path.read_text())["chosen"], "front": [a, b]})
    steps._validate_step(rc, st)
    assert calls == [["a"], ["b"]] and st.results[0]["measured_ms"] == 0.93
    saved = json.loads(path.read_text())
    assert saved["key"] == {"k": 1} and saved["chosen"][0]["config"] == {"n": "b"}
    assert saved["chosen"][0]["rechosen"] and saved["chosen"][0]["final_over_ms"] == 1.04
    assert "the final measurement put budget1 at 1.040 ms, over it" in capsys.readouterr().out


def test_a_budget_without_candidates_left_chooses_from_the_front_and_measures_it(
        tmp_path, monkeypatch, capsys):
    """The budget's only candidate measures over it at the end: the step takes the front's
    subnet that the final measurement's slow-down says should meet it, measures it, and
    budget.json keeps its final measurement (not the estimate it was chosen on)."""
    a, e = _cand("a", 80, 0.95), _cand("e", 75, 0.80)
    rc, steps, calls, path = _rechoice_case(tmp_path, monkeypatch, [a], {"a": 1.10, "e": 0.88})
    st = steps.State(found={"chosen": json.loads(path.read_text())["chosen"], "front": [a, e]})
    steps._validate_step(rc, st)
    assert calls == [["a"], ["e"]]
    saved = json.loads(path.read_text())["chosen"][0]
    assert saved["config"] == {"n": "e"} and saved["rechosen"] and saved["met"]
    assert saved["measured_ms"] == 0.88 and "estimated" not in saved
    out = capsys.readouterr().out
    assert "one of the Pareto front, its prediction scaled by that to 0.926 ms" in out


def test_a_rerun_after_every_rechoice_was_spent_chooses_nothing_again(tmp_path, monkeypatch):
    """Every candidate of budget1 measures over it at the end: the step chooses again
    RECHOICES times, then keeps the last. Run again (as a rerun of `ofa run` does, with what
    the measured-budget step reads back from budget.json), it measures and chooses nothing
    more and leaves budget.json as it was (a rerun used to start choosing again)."""
    pool = [_cand("a", 80, 0.95), _cand("b", 79, 0.93), _cand("c", 78, 0.91),
            _cand("d", 77, 0.9)]
    rc, steps, calls, path = _rechoice_case(tmp_path, monkeypatch, pool,
                                            {"a": 1.04, "b": 1.05, "c": 1.06, "d": 1.07})
    chosen = json.loads(path.read_text())["chosen"]
    steps._validate_step(rc, steps.State(found={"chosen": chosen, "front": pool}))
    assert calls == [["a"], ["b"], ["c"]]  # chosen again twice (RECHOICES), the last kept
    saved = path.read_text()
    assert json.loads(saved)["rechoices"] == steps.RECHOICES
    calls.clear()
    again = steps.State(found={"chosen": json.loads(saved)["chosen"], "front": pool})
    steps._validate_step(rc, again)
    assert calls == [["c"]] and again.results[0]["measured_ms"] == 1.06
    assert path.read_text() == saved


def test_budgets_that_chose_one_subnet_fine_tune_it_once(tmp_path, monkeypatch, capsys):
    """Two budgets above the Pareto front's end choose the same subnet: it is fine-tuned once
    and the second budget's folder is a copy (its finetune.json says so and names its own
    folder); a rerun finds all three done and trains nothing."""
    import ofa.pipeline.steps as steps
    import ofa.train.finetune as ft
    from ofa.pipeline import RunConfig
    from ofa.train.run import TrainConfig

    rc = RunConfig(name="r", root=str(tmp_path), train=TrainConfig(space="mbv3-digits"),
                   finetune_epochs=0.5)
    rc.folder.mkdir()
    trained = []

    def fake_finetune(cfg, resume=False):
        trained.append(cfg.subnet["n"])
        out = Path(cfg.out)
        out.mkdir(parents=True)
        (out / ft.FINETUNED).write_bytes(cfg.subnet["n"].encode())
        (out / ft.FINETUNE_JSON).write_text(json.dumps(
            {"kind": "ofa-edge-finetune", "subnet": cfg.subnet, "config": {"out": cfg.out}}))

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    chosen = [{"label": f"budget{i}", "config": {"n": n}} for i, n in ((1, "a"), (2, "b"),
                                                                        (3, "b"))]
    out = steps._finetune(rc, tmp_path, chosen)
    assert trained == ["a", "b"]
    assert (out["budget3"] / ft.FINETUNED).read_bytes() == b"b"
    info = json.loads((out["budget3"] / ft.FINETUNE_JSON).read_text())
    assert info["copied_from"] == "budget2" and info["config"]["out"] == str(out["budget3"])
    assert info["subnet"] == {"n": "b"}
    assert sorted(p.name for p in out["budget3"].parent.iterdir()) == [
        "budget1", "budget2", "budget3"]  # no temp folder left beside them
    assert "budget3: the subnet of budget2, its fine-tune copied" in capsys.readouterr().out
    steps._finetune(rc, tmp_path, chosen)
    assert trained == ["a", "b"]
    assert capsys.readouterr().out.count(": done") == 3


def test_budgets_that_chose_one_subnet_export_and_measure_it_once(tmp_path, monkeypatch, capsys):
    """The export + measure step exports and times a subnet that two budgets chose once:
    the second budget's row is the first's measurement under its own label and budget
    (``same_as``), its bundle a copy in its own folder. One subnet, one measured latency
    (it used to be timed once per budget, and the report gave it two latencies)."""
    import deploy.validate
    import ofa.pipeline.steps as steps
    from ofa.pipeline import RunConfig
    from ofa.train.run import TrainConfig

    rc = RunConfig(name="r", root=str(tmp_path), train=TrainConfig(space="mbv3-digits"))
    rc.folder.mkdir()
    got = []

    def validate(run, rows, out, target, **kw):
        got.append([r["label"] for r in rows])
        res = []
        for i, r in enumerate(rows):
            (out / r["label"]).mkdir(parents=True)
            (out / r["label"] / "model.onnx").write_bytes(r["config"]["n"].encode())
            res.append({"label": r["label"], "budget_ms": r["budget_ms"], "config": r["config"],
                        "measured_ms": 0.5 + i, "model": str(out / r["label"] / "model.onnx")})
        return res

    class Table:
        probe: dict = {}

    monkeypatch.setattr(deploy.validate, "validate_subnets", validate)
    chosen = [{"label": f"budget{i}", "budget_ms": float(i), "config": {"n": n}}
              for i, n in ((1, "a"), (2, "b"), (3, "b"))]
    res = steps._validate(rc, tmp_path, chosen, {}, Table())
    assert got == [["budget1", "budget2"]]
    assert "2 subnets on local (1 chosen by more than one budget, measured once)" in \
        capsys.readouterr().out
    assert [(r["label"], r["budget_ms"], r["measured_ms"]) for r in res] == [
        ("budget1", 1.0, 0.5), ("budget2", 2.0, 1.5), ("budget3", 3.0, 1.5)]
    assert res[2]["same_as"] == "budget2" and "same_as" not in res[1]
    copy = Path(res[2]["model"])
    assert copy == rc.folder / "models" / "budget3" / "model.onnx" and copy.read_bytes() == b"b"
    assert sorted(p.name for p in (rc.folder / "models").iterdir()) == [
        "budget1", "budget2", "budget3"]  # no temp folder left beside them
    saved = json.loads((rc.folder / "validation.json").read_text())["subnets"]
    assert [r["label"] for r in saved] == ["budget1", "budget2", "budget3"]
