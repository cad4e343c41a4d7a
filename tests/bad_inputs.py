"""The bad-input table: invocations of ``ofa`` that must fail cleanly, and the inputs they use.

Each case must end with a non-zero exit code and exactly one line on stderr (no traceback),
write no file and leave every existing file (a good output among them) as it was. Used by
``tests/test_bad_input.py`` (in process) and ``bench/bad_input.py`` (as real processes, with a
summary by category).

Placeholders in an argv: ``{run}`` a trained tiny run folder, ``{good}`` an existing good
output file; every other path is relative to the working folder :func:`make_inputs` fills.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Case", "CASES", "make_inputs", "snapshot", "random_predictor"]


@dataclass(frozen=True)
class Case:
    category: str
    argv: tuple[str, ...]
    needs_no_gpu: bool = False  # only bad where no CUDA GPU is visible

    @property
    def name(self) -> str:
        return " ".join(self.argv)


def _c(category: str, *argv: str, **kw: bool) -> Case:
    return Case(category, tuple(argv), **kw)


_TRAIN = ("train", "--out", "newrun", "--epochs", "0.1")
_SEARCH = ("search", "--space", "mbv3-cifar", "--predictor", "cifar_pred.safetensors",
           "--table", "cifar_table.json")
_EXPORT = ("export", "--checkpoint", "{run}", "--out", "bundle")
_RUN = ("run", "--root", "runs", "--name", "x", "--epochs", "0.1")

CASES: tuple[Case, ...] = (
    # --- training: nonsense numbers, names, devices, data -------------------------------
    _c("train", *_TRAIN, "--lr-scale", "nan"),
    _c("train", *_TRAIN, "--lr-scale", "-1"),
    _c("train", *_TRAIN, "--lr-scale", "0"),
    _c("train", *_TRAIN, "--lr-scale", "inf"),
    _c("train", *_TRAIN, "--batch-size", "-8"),
    _c("train", *_TRAIN, "--batch-size", "0"),
    _c("train", *_TRAIN, "--batch-size", "eight"),
    _c("train", *_TRAIN, "--max-steps", "0"),
    _c("train", *_TRAIN, "--max-steps", "-1"),
    _c("train", "train", "--out", "newrun", "--epochs", "0"),
    _c("train", "train", "--out", "newrun", "--epochs", "-3"),
    _c("train", *_TRAIN, "--device", "potato"),
    _c("train", *_TRAIN, "--device", "cuda", needs_no_gpu=True),
    _c("train", *_TRAIN, "--schedule", "nope"),
    _c("train", *_TRAIN, "--schedule", "schedule_bad.yaml"),
    _c("train", *_TRAIN, "--space", "mbv3-nope"),
    _c("train", *_TRAIN, "--dataset", "imagenet22k"),
    _c("train", *_TRAIN, "--dataset", "cifar10", "--data", "missing.npz"),
    _c("train", *_TRAIN, "--dataset", "cifar10", "--data", "not_npz.npz"),
    _c("train", *_TRAIN, "--data", "not_npz.npz"),
    _c("train", *_TRAIN, "--resolutions", "0"),
    _c("train", *_TRAIN, "--resolutions", "16,,20"),
    _c("train", *_TRAIN, "--ckpt-every", "-1"),
    _c("train", *_TRAIN, "--eval-images", "-5"),
    _c("train", *_TRAIN, "--seed", "-1"),
    _c("train", *_TRAIN, "--recal-images", "0"),
    # --- eval --------------------------------------------------------------------------
    _c("eval", "eval", "--checkpoint", "missing_run"),
    _c("eval", "eval", "--checkpoint", "{run}", "--subnet", "missing.json"),
    _c("eval", "eval", "--checkpoint", "{run}", "--subnet", "broken.json"),
    _c("eval", "eval", "--checkpoint", "{run}", "--subnet", "w12_subnet.json"),
    _c("eval", "eval", "--checkpoint", "{run}", "--split", "train"),
    _c("eval", "eval", "--checkpoint", "{run}", "--data", "not_npz.npz"),
    _c("eval", "eval", "--checkpoint", "foreign_ckpt.pt"),
    _c("eval", "eval", "--checkpoint", "{run}", "--autocast", "int4"),
    _c("eval", "eval", "--checkpoint", "{run}", "--device", "cuda", needs_no_gpu=True),
    _c("predictor", "predictor", "build", "--checkpoint", "{run}", "--device", "tpu"),
    _c("finetune", "finetune", "--checkpoint", "{run}", "--subnet", "min", "--out", "ft",
       "--precision", "fp8"),  # the old spelling of --autocast is checked as well
    _c("finetune", "finetune", "--checkpoint", "{run}", "--subnet", "min", "--out", "ft",
       "--recal-images", "-5"),
    # --- latency tables ----------------------------------------------------------------
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--runs", "0", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--warmup", "-1", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--trials", "0", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--threads", "0", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--runtime", "tvm", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--resolutions", "13",
       "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-nope", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--calib", "-1", "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--calib-repeats", "0",
       "--out", "{good}"),
    _c("tables", "lut", "build", "--space", "mbv3-digits", "--target", "potato",
       "--out", "{good}"),
    _c("tables", "lut", "import-ofa", "missing_dir", "--out", "{good}"),
    _c("tables", "lut", "import-ofa", "yaml_truncated", "--space", "mbv3-digits",
       "--out", "{good}"),
    _c("tables", "lut", "import-ofa", "yaml_digits", "--space", "mbv3-cifar", "--out", "{good}"),
    _c("tables", "lut", "validate", "table_negative.json"),
    _c("tables", "lut", "validate", "table_nan.json"),
    _c("tables", "lut", "calibrate", "table_bad_calibration.json"),
    _c("tables", "lut", "validate", "digits_table.json", "-n", "0"),
    _c("tables", "lut", "validate", "digits_table.json", "--repeats", "0"),
    _c("tables", "lut", "validate", "missing_table.json"),
    _c("tables", "lut", "validate", "broken.json"),
    _c("tables", "lut", "validate", "w12_subnet.json"),
    # (a table of another CPU model is no longer refused: it is measured, beside the probe)
    # --- OFA's published specialised networks ------------------------------------------
    _c("import", "import-ofa-specialized", "no_such_folder", "--out", "imported"),
    _c("import", "import-ofa-specialized", "w12_subnet.json", "--out", "imported"),
    # --- accuracy predictor -------------------------------------------------------------
    _c("predictor", "predictor", "build", "--checkpoint", "{run}", "--samples", "0",
       "--out", "pred.safetensors"),
    _c("predictor", "predictor", "build", "--checkpoint", "{run}", "--samples", "5",
       "--out", "pred.safetensors"),
    _c("predictor", "predictor", "build", "--checkpoint", "{run}", "--epochs", "0",
       "--out", "pred.safetensors"),
    _c("predictor", "predictor", "build", "--checkpoint", "missing_run",
       "--out", "pred.safetensors"),
    _c("predictor", "predictor", "import-ofa", "missing.pth", "--out", "{good}"),
    _c("predictor", "predictor", "import-ofa", "broken.json", "--out", "{good}"),
    # --- search ------------------------------------------------------------------------
    _c("search", *_SEARCH, "--latency-ms", "3", "--generations", "0"),
    _c("search", *_SEARCH, "--latency-ms", "3", "--population", "1"),
    _c("search", *_SEARCH, "--latency-ms", "0"),
    _c("search", *_SEARCH, "--latency-ms", "-1"),
    _c("search", *_SEARCH, "--latency-ms", "nan"),
    _c("search", *_SEARCH, "--macs", "-5"),
    _c("search", *_SEARCH, "--objective", "energy", "--pareto"),
    _c("search", *_SEARCH, "--latency-ms", "0.001", "--out", "{good}"),
    _c("search", "search", "--space", "mbv3-cifar", "--predictor", "missing.safetensors",
       "--table", "cifar_table.json", "--latency-ms", "3"),
    _c("search", "search", "--space", "mbv3-cifar", "--predictor", "cifar_pred.safetensors",
       "--table", "missing_table.json", "--latency-ms", "3"),
    _c("search", "search", "--space", "mbv3-cifar", "--predictor", "digits_pred.safetensors",
       "--table", "cifar_table.json", "--latency-ms", "3", "--out", "{good}"),
    _c("search", "search", "--space", "mbv3-digits", "--predictor", "digits_pred.safetensors",
       "--table", "cifar_table.json", "--latency-ms", "3", "--out", "{good}"),
    _c("search", "search", "--space", "mbv3-cifar", "--predictor", "cifar_pred.safetensors",
       "--pareto"),
    _c("search", *_SEARCH, "--latency-ms", "3", "--num-classes", "0"),
    _c("search", *_SEARCH, "--latency-ms", "40", "--storage", "study.log"),
    _c("search", *_SEARCH, "--latency-ms", "3", "--precision", "int8"),  # an fp32 table
    # --- export / bench / deploy ---------------------------------------------------------
    _c("export", *_EXPORT, "--formats", "onnx-fp16"),
    _c("export", *_EXPORT, "--formats", ""),
    _c("export", *_EXPORT, "--formats", "onnx-fp32,,tflite-fp32"),
    _c("export", *_EXPORT, "--parity-images", "-1"),
    _c("export", *_EXPORT, "--calib-images", "0"),
    _c("export", "export", "--checkpoint", "missing_run", "--out", "bundle"),
    _c("export", *_EXPORT, "--subnet", "missing.json"),
    _c("export", "export", "--checkpoint", "{run}", "--subnet", "w12_subnet.json",
       "--out", "good_bundle"),
    _c("export", "bench", "missing.onnx"),
    _c("export", "bench", "broken.json"),
    _c("export", "bench", "empty.onnx"),
    _c("export", "bench", "empty.onnx", "--threads", "0"),
    _c("export", "bench", "empty.onnx", "--runs", "0"),
    _c("export", "bench", "empty.onnx", "--target", "potato"),
    _c("export", "deploy", "missing.json", "--checkpoint", "{run}", "--out", "dep"),
    _c("export", "deploy", "no_rows.json", "--checkpoint", "{run}", "--out", "dep"),
    _c("export", "deploy", "search_result.json", "--checkpoint", "{run}", "--out", "dep",
       "--target", "ssh://nobody@127.0.0.1:1", "--insecure"),
    _c("export", "deploy", "search_result.json", "--checkpoint", "{run}", "--out", "dep",
       "--formats", "onnx-fp16"),
    # --- ofa run: everything checked before training --------------------------------------
    _c("run", *_RUN, "--formats", "onnx-fp16"),
    _c("run", *_RUN, "--budgets", "0"),
    _c("run", *_RUN, "--budgets", "5,,8"),
    _c("run", *_RUN, "--samples", "0"),
    _c("run", *_RUN, "--lut-runs", "0"),
    _c("run", *_RUN, "--target", "ssh://nobody@127.0.0.1:1", "--insecure"),
    _c("run", *_RUN, "--target", "adb"),  # benchmark_model times .tflite only
    _c("run", *_RUN, "--table", "missing_table.json"),
    _c("run", *_RUN, "--table", "table_negative.json"),
    _c("run", *_RUN, "--table", "cifar_table.json", "--precision", "int8"),  # fp32 table
    _c("run", *_RUN, "--table", "cifar_table.json"),  # another space's table
    _c("run", *_RUN, "--table", "digits_table_12.json"),  # resolutions 16, 20 missing
    _c("run", *_RUN, "--schedule", "nope"),
    _c("run", *_RUN, "--population", "1"),
    _c("run", *_RUN, "--shortlist", "0"),
    _c("run", "run", "--root", "runs", "--name", "x", "--epochs", "nan"),
    _c("run", *_RUN, "--space", "mbv3-nope"),
    # --- space ---------------------------------------------------------------------------
    _c("space", "space", "mbv3-nope"),
    _c("space", "space", "mbv3-cifar", "--num-classes", "0"),
    _c("space", "space", "mbv3-cifar", "--width-mult", "-1"),
)


def _table(space, cpu: str = "", resolutions: list[int] | None = None) -> dict:
    from search.latency_table import LatencyTable

    resolutions = resolutions or list(space.resolutions)
    entries = {str(r): {s.key(): {"median": 0.001 * s.macs() / 1e3 + 0.01, "count": 1,
                                  "rel": 0.01 * s.macs() / 1e3 + 0.1}
                        for s in space.all_block_shapes([r])} for r in resolutions}
    ctx = {"machine": {"name": "synthetic", "cpu_model": cpu}, "runtime": "onnxruntime",
           "runtime_version": "0", "backend": "CPU", "threads": 1, "precision": "fp32",
           "batch": 1}
    probe = {"id": "probe-v1", "ms": {"median": 0.1, "fastest": 0.09, "slowest": 0.15,
                                      "p90": 0.12, "range": 1.67, "batches": 3},
             "measured": "build"}
    return LatencyTable(ctx, space.to_dict(), resolutions, entries, probe=probe,
                        overhead_rel=0.05).to_dict()


def random_predictor(space, path: Path) -> None:
    """An accuracy predictor of ``space`` with random weights, saved to ``path``."""
    from search.accuracy import MLP, AccuracyPredictor

    pred = AccuracyPredictor(space)
    rng = np.random.default_rng(0)
    dims = [pred.dim, 400, 400, 400, 1]
    pred.mlp = MLP({k: v for i in range(4) for k, v in (
        (f"{2 * i}.weight", rng.normal(0, 0.05, (dims[i + 1], dims[i]))),
        (f"{2 * i}.bias", rng.normal(0, 0.05, dims[i + 1])))})
    pred.save(path)


def make_inputs(work: Path) -> None:
    """Write the good and bad input files every case refers to into ``work``."""
    from deploy.ontarget.facts import machine_facts
    from ofa.space import get_space

    cifar, digits, w12 = (get_space(n) for n in ("mbv3-cifar", "mbv3-digits", "mbv3-w1.2"))
    cpu = machine_facts()["cpu_model"]
    files: dict[str, object] = {
        "cifar_table.json": _table(cifar, cpu), "digits_table.json": _table(digits, cpu),
        "digits_table_12.json": _table(digits, cpu, [12]),
        "table_other_cpu.json": _table(digits, "Some Other CPU @ 1.0GHz"),
        "w12_subnet.json": w12.max_subnet().to_dict(),
        "no_rows.json": {"best": []},
        "search_result.json": {"best": [{"config": digits.max_subnet(16).to_dict(),
                                         "acc": 90.0, "latency_ms": 1.0}]},
    }
    neg = _table(digits, cpu)
    first = next(iter(neg["entries"]["12"]))
    neg["entries"]["12"][first]["median"] = -1.26
    files["table_negative.json"] = neg
    nan = json.loads(json.dumps(neg).replace("-1.26", "NaN"))
    files["table_nan.json"] = nan
    bad_cal = _table(digits, cpu)
    bad_cal["calibration"] = {"a": -0.37, "b": 0.1, "fitted_on": []}
    files["table_bad_calibration.json"] = bad_cal
    for name, obj in files.items():
        (work / name).write_text(json.dumps(obj))
    (work / "broken.json").write_text('{"ks": [3, 5')
    (work / "not_npz.npz").write_text("not an npz")
    (work / "empty.onnx").write_bytes(b"")
    (work / "foreign_ckpt.pt").write_bytes(b"PK\x03\x04 not a torch file")
    (work / "schedule_bad.yaml").write_text("name: x\nphases: [1, 2\n")
    (work / "good.json").write_text('{"good": true}\n')
    (work / "good_bundle").mkdir()
    (work / "good_bundle" / "export.json").write_text('{"kind": "ofa-edge-export"}\n')
    random_predictor(cifar, work / "cifar_pred.safetensors")
    random_predictor(digits, work / "digits_pred.safetensors")
    # OFA-style YAML tables: one truncated, one complete but of the digits space
    for folder, space, cut in (("yaml_truncated", digits, True), ("yaml_digits", digits, False)):
        (work / folder).mkdir()
        for r in space.resolutions:
            keys = [s.key() for s in space.all_block_shapes([r])]
            keys = keys[: len(keys) // 2] if cut else keys
            (work / folder / f"{r}_lookup_table.yaml").write_text(
                "".join(f"{k}:\n  count: 10\n  mean: 0.5\n  std: 0.01\n" for k in keys))
    # a study that answers another query than the bad case's
    from search.accuracy import load_accuracy_predictor
    from search.evolution import Budget, SearchConfig, run_search
    from search.latency import LatencyPredictor
    from search.latency_table import LatencyTable

    table = LatencyTable.load(work / "cifar_table.json", space=cifar)
    run_search(cifar, load_accuracy_predictor(work / "cifar_pred.safetensors", cifar),
               LatencyPredictor(table, cifar), SearchConfig(
                   Budget(latency_ms=30.0), population=4, generations=1,
                   storage=str(work / "study.log")))


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` -> sha256 (to show that nothing was written or changed)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
