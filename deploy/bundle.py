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
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofa.fileio import atomic_write_json, read_json
from ofa.space import SubnetConfig

__all__ = ["FORMATS", "export_subnet", "sha256", "read_bundle"]

FORMATS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}


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


def _write_model(fmt: str, model: torch.nn.Module, shape: tuple[int, ...], path: Path,
                 calib: np.ndarray, nhwc: bool) -> None:
    from deploy import export as ex

    if fmt == "onnx-fp32":
        ex.export_onnx(model, shape, path)
    elif fmt == "onnx-int8":
        ex.export_onnx_int8(model, shape, path, calib)
    elif fmt == "tflite-fp32":
        ex.export_tflite(model, shape, path, nhwc=nhwc)
    elif fmt == "tflite-int8":
        ex.export_tflite_int8(model, shape, path, calib, nhwc=nhwc)
    else:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")


def export_subnet(run: str | Path, cfg: SubnetConfig, out: str | Path,
                  formats: Sequence[str] = FORMATS, nhwc: bool = False,
                  predicted: dict[str, float] | None = None, data: str | None = None,
                  calib_images: int = 128, parity_images: int = 500,
                  progress: bool = True) -> dict[str, Any]:
    """Export subnet ``cfg`` of the supernet in ``run`` to ``out`` (see module docstring).

    Args:
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

    from deploy.runtimes import get_runtime
    from ofa.data import load_dataset
    from ofa.evaluate import recalibrated_subnet
    from ofa.train.trainer import load_run

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; allowed: {', '.join(FORMATS)}")
    net, tcfg, _ = load_run(run)
    space = net.space
    cfg = space.validate(cfg)
    ds = load_dataset(tcfg.dataset, data or tcfg.data, holdout=tcfg.holdout, seed=tcfg.seed)
    sub = recalibrated_subnet(net, cfg, ds, tcfg.recal_images)
    x, y = _images(ds, "test", cfg.r, parity_images)
    calib, _ = _images(ds, "train", cfg.r, calib_images)
    with torch.no_grad():
        ref = sub(torch.from_numpy(x)).numpy()
    ref_pred = ref.argmax(1)
    shape = (1, 3, cfg.r, cfg.r)
    out = Path(out)
    report: dict[str, Any] = {
        "kind": "ofa-edge-export", "config": cfg.to_dict(), "summary": cfg.summary(),
        "resolution": cfg.r, "macs": space.macs(cfg), "params": space.params(cfg),
        "source_run": str(Path(run).resolve()), "space": space.name, "dataset": ds.name,
        "predicted": predicted or {}, "parity_images": int(len(y)),
        "supernet_top1": float((ref_pred == y).mean() * 100), "models": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        np.savez_compressed(tmp / "eval.npz", x=x, y=y)
        for fmt in tqdm(formats, desc="export", unit="model", disable=not progress):
            kind, precision = fmt.split("-")
            rel = Path(fmt) / f"model.{kind}"
            path = tmp / rel
            path.parent.mkdir()
            _write_model(fmt, sub, shape, path, calib, nhwc)
            rt = get_runtime(_RUNTIME[kind], 1)
            rt.load(str(path))
            logits = rt.logits(x)
            pred = logits.argmax(1)
            m = {"path": str(rel), "format": kind, "precision": precision,
                 "runtime": rt.name, "bytes": path.stat().st_size, "sha256": sha256(path),
                 "top1": float((pred == y).mean() * 100),
                 "top1_agreement": float((pred == ref_pred).mean() * 100),
                 "max_abs_diff": float(np.abs(logits - ref).max())}
            report["models"][fmt] = m
            layout = "NHWC" if kind == "tflite" and nhwc else "NCHW"
            atomic_write_json(path.with_name("model.json"), {
                "kind": "ofa-edge-model", "model": path.name, "format": kind,
                "precision": precision, "sha256": m["sha256"], "bytes": m["bytes"],
                "config": cfg.to_dict(), "summary": cfg.summary(), "resolution": cfg.r,
                "input": {"name": "input", "shape": list(rt.input_shape), "layout": layout,
                          "dtype": str(np.dtype(rt.input_dtype))},
                "normalisation": ds.normalisation(), "classes": ds.classes,
                "macs": report["macs"], "params": report["params"],
                "predicted": predicted or {}, "source_run": report["source_run"],
                "parity": {k: m[k] for k in ("top1", "top1_agreement", "max_abs_diff")}})
        atomic_write_json(tmp / "export.json", report)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
