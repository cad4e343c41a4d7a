"""Export a chosen subnet as deployable models with descriptions and a parity report.

``ofa export``: extract the subnet from a trained supernet, BN-recalibrate it (OFA §3.4), and
write one folder per format under ``OUT``::

    OUT/onnx-fp32/model.onnx    + model.json
    OUT/onnx-int8/model.onnx    + model.json     (onnxruntime static quantization)
    OUT/tflite-fp32/model.tflite + model.json    (litert-torch)
    OUT/tflite-int8/model.tflite + model.json    (full-integer PTQ)
    OUT/eval.npz                 preprocessed evaluation images for on-device top-1
    OUT/export.json              config, parity report, paths

The bundle is assembled in a temporary folder and renamed into place, so an interrupted
export leaves nothing half-written. Parity is measured on real evaluation images: max abs
logit difference vs PyTorch (fp32), top-1 agreement and accuracy (all formats).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.formats import FORMATS, ExportFormat, get_format, parse_formats
from deploy.ontarget.runtimes import get_runtime
from ofa.fileio import atomic_write_dir, atomic_write_json, read_json
from ofa.space import SubnetConfig

__all__ = ["export_subnet", "sha256", "read_bundle"]


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _images(data, split: str, r: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from ofa.data import BatchLoader

    xs, ys = [], []
    for x, y in BatchLoader(data, split, 200, r, train=False, limit=n):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _bundle_model(fmt: ExportFormat, sub: torch.nn.Module, folder: Path, parity: _Parity,
                  calib: np.ndarray, nhwc: bool, facts: dict[str, Any]) -> dict[str, Any]:
    """Write one format's model and ``model.json`` under ``folder / fmt.name``; run it on the
    parity images; returns its ``export.json`` entry."""
    rel = Path(fmt.name) / f"model{fmt.suffix}"
    path = folder / rel
    path.parent.mkdir()
    fmt.export(sub, parity.shape, path, calib, nhwc)
    rt = get_runtime(fmt.runtime, 1)
    rt.load(str(path))
    logits = rt.logits(parity.x)
    pred = logits.argmax(1)
    m = {"path": str(rel), "format": fmt.kind, "precision": fmt.precision,
         "runtime": rt.name, "bytes": path.stat().st_size, "sha256": sha256(path),
         "top1": float((pred == parity.y).mean() * 100),
         "top1_agreement": float((pred == parity.ref_pred).mean() * 100),
         "max_abs_diff": float(np.abs(logits - parity.ref).max())}
    layout = "NHWC" if fmt.kind == "tflite" and nhwc else "NCHW"
    atomic_write_json(path.with_name("model.json"), {
        "kind": "ofa-edge-model", "model": path.name, "format": fmt.kind,
        "precision": fmt.precision, "sha256": m["sha256"], "bytes": m["bytes"], **facts,
        "input": {"name": "input", "shape": list(rt.input_shape), "layout": layout,
                  "dtype": str(np.dtype(rt.input_dtype))},
        "parity": {k: m[k] for k in ("top1", "top1_agreement", "max_abs_diff")}})
    return m


@dataclass
class _Parity:
    """Evaluation images ``x (N, 3, r, r)``, labels ``y (N,)`` and the PyTorch subnet's
    logits ``ref (N, classes)`` the exported models are compared with."""

    x: np.ndarray
    y: np.ndarray
    ref: np.ndarray
    shape: tuple[int, ...]

    @property
    def ref_pred(self) -> np.ndarray:
        return self.ref.argmax(1)


def export_subnet(run: str | Path, cfg: SubnetConfig, out: str | Path,
                  formats: Sequence[str] = tuple(FORMATS), nhwc: bool = False,
                  predicted: dict[str, float] | None = None, data: str | None = None,
                  calib_images: int = 128, parity_images: int = 500,
                  progress: bool = True, model: torch.nn.Module | None = None
                  ) -> dict[str, Any]:
    """Export subnet ``cfg`` of the supernet in ``run`` to ``out`` (see module docstring).

    Args:
        model: a static network of ``cfg`` to export instead of the supernet's extracted,
            BN-recalibrated subnet (a fine-tuned one, :mod:`ofa.train.finetune`); ``run``
            then only supplies the data.
        formats: names from ``deploy/formats.py`` (``onnx-fp32`` ...).
        predicted: ``{"acc": %, "latency_ms": ms}`` from the search, stored in model.json.
        nhwc: give TFLite models an NHWC input (ONNX stays NCHW).

    Returns:
        The ``export.json`` dict: ``{"config", "summary", "resolution", "macs", "params",
        "supernet_top1", "models": {fmt: {"path", "bytes", "sha256", "top1",
        "top1_agreement", "max_abs_diff"}}}``.

    Raises:
        ValueError: unknown format, a config outside the run's space, unreadable run.
    """
    from tqdm import tqdm

    from ofa.data import load_dataset
    from ofa.evaluate import recalibrated_subnet
    from ofa.train.run import load_run
    fmts = [get_format(f) for f in parse_formats(formats)]
    net, tcfg, _ = load_run(run)
    space = net.space
    cfg = space.validate(cfg)
    ds = load_dataset(tcfg.dataset, data or tcfg.data, holdout=tcfg.holdout, seed=tcfg.seed)
    sub = model.eval() if model is not None else recalibrated_subnet(net, cfg, ds,
                                                                      tcfg.recal_images)
    x, y = _images(ds, "test", cfg.r, parity_images)
    calib, _ = _images(ds, "train", cfg.r, calib_images)
    with torch.no_grad():
        parity = _Parity(x, y, sub(torch.from_numpy(x)).numpy(), (1, 3, cfg.r, cfg.r))
    report: dict[str, Any] = {
        "kind": "ofa-edge-export", "config": cfg.to_dict(), "summary": cfg.summary(),
        "resolution": cfg.r, "macs": space.macs(cfg), "params": space.params(cfg),
        "source_run": str(Path(run).resolve()), "space": space.name, "dataset": ds.name,
        "predicted": predicted or {}, "parity_images": int(len(y)),
        "supernet_top1": float((parity.ref_pred == y).mean() * 100),
        "finetuned": model is not None, "models": {}}
    facts = {**{k: report[k] for k in ("config", "summary", "resolution", "macs", "params",
                                       "predicted", "source_run")},
             "normalisation": ds.normalisation(), "classes": ds.classes}

    def write(tmp: Path) -> None:
        np.savez_compressed(tmp / "eval.npz", x=x, y=y)
        for fmt in tqdm(fmts, desc="export", unit="model", disable=not progress):
            report["models"][fmt.name] = _bundle_model(fmt, sub, tmp, parity, calib, nhwc,
                                                       facts)
        atomic_write_json(tmp / "export.json", report)

    atomic_write_dir(out, write)
    return report


def read_bundle(out: str | Path) -> dict[str, Any] | None:
    """The ``export.json`` of a finished bundle whose model files still match their sha256,
    or None."""
    out = Path(out)
    try:
        rep = read_json(out / "export.json", "export report")
    except ValueError:
        return None
    for m in rep.get("models", {}).values():
        p = out / m["path"]
        if not p.exists() or sha256(p) != m["sha256"]:
            return None
    return rep
