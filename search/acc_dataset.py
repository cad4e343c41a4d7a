"""Accuracy-predictor data: (subnet, measured top-1) pairs from a trained supernet (OFA §4).

Subnets come from :meth:`search.encoding.ArchEncoder.stratified_configs`: the largest and
smallest subnet at every resolution, then seeded samples whose genes lie around a *size
level* that sweeps from the smallest to the largest choices (resolutions in turn), so the
dataset covers the whole MACs range instead of piling up around the middle as uniform
sampling does.

Every subnet is BN-recalibrated and measured on the hold-out split. Rows are appended to a
JSON-lines cache as they are measured (one fsync'd line each), so an interrupted build
resumes; a header line pins the run, split and seed so a cache from another run is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ofa.fileio import atomic_write_text
from ofa.space import SearchSpace, SubnetConfig
from search.encoding import ArchEncoder
from search.metrics import kendall_tau

__all__ = ["build_accuracy_dataset", "read_dataset", "fit_and_score"]

#: bumped when the subnets drawn for an index change, so an older cache is refused
SAMPLER = "arch-encoder-stratified-v2"


def read_dataset(path: str | Path, header: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Rows ``{"i", "config", "acc"}`` of a cache; a torn last line is ignored.

    Raises:
        ValueError: the file's header differs from ``header`` (another run/split/seed), or
            the file is not an accuracy dataset.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                break  # killed mid-write
            raise ValueError(f"{path}:{n + 1}: corrupt line in accuracy dataset") from None
        if n == 0:
            if obj.get("kind") != "ofa-edge-accuracy-dataset":
                raise ValueError(f"{path}: not an accuracy dataset (bad header)")
            if header is not None:
                diff = [k for k in sorted(set(header) | set(obj))
                        if obj.get(k) != header.get(k)]
                if diff:
                    raise ValueError(f"{path}: cached for another {', '.join(diff)}; "
                                     "delete it or use another --out")
            continue
        rows.append(obj)
    return rows


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def build_accuracy_dataset(run: str | Path, out: str | Path, samples: int, seed: int = 0,
                           split: str = "holdout", data: str | None = None,
                           recal_images: int | None = None,
                           progress: bool = True, device: str = "cpu",
                           precision: str = "fp32", workers: int = 0
                           ) -> tuple[SearchSpace, list[dict[str, Any]]]:
    """Measure ``samples`` subnets of the run's supernet; returns the run's space and all
    rows (cached ones too), sorted by index. BN recalibration and evaluation run on
    ``device`` at ``precision`` (:mod:`ofa.device`); a precision other than fp32 is part of
    the cache's header (its accuracies differ slightly). ``workers`` processes decode the
    evaluation images once per resolution (:func:`ofa.data.eval_loader`).

    Each row: ``{"i": index, "config": dict, "acc": top-1 % on split, "macs": MACs}``.

    Raises:
        ValueError: unreadable run, a cache from another run, bad split.
    """
    from tqdm import tqdm

    from ofa.data import load_dataset
    from ofa.device import conv_memory_format, resolve_device, resolve_precision
    from ofa.evaluate import subnet_accuracy
    from ofa.train.run import load_run

    dev = resolve_device(device)
    conv_memory_format(dev)  # on CUDA: depthwise convolutions off cuDNN's per-shape plans
    precision = resolve_precision(precision, dev)
    net, cfg, _ = load_run(run)
    space = net.space
    recal = recal_images or cfg.recal_images
    header = {"kind": "ofa-edge-accuracy-dataset", "run": str(Path(run).resolve()),
              "split": split, "seed": seed, "space": space.name, "recal_images": recal,
              "sampler": SAMPLER}
    if precision != "fp32":
        header["precision"] = precision
    out = Path(out)
    rows = read_dataset(out, header)
    # rewrite header + intact rows (drops a line torn by a kill), then append as we go
    atomic_write_text(out, "".join(json.dumps(o) + "\n" for o in [header, *rows]))
    done = {r["i"] for r in rows}
    cfgs = ArchEncoder(space).stratified_configs(samples, seed)
    todo = [i for i in range(samples) if i not in done]
    if not todo:
        return space, sorted((r for r in rows if r["i"] < samples), key=lambda r: r["i"])
    ds = load_dataset(cfg.dataset, data or cfg.data, holdout=cfg.holdout, seed=cfg.seed)
    bar = tqdm(todo, desc="accuracy dataset", unit="subnet", initial=len(done), total=samples,
               disable=not progress)
    cache: dict = {}
    net.to(dev)
    for i in bar:
        acc = subnet_accuracy(net, cfgs[i], ds, split, recal, cache=cache, precision=precision,
                              workers=workers)
        row = {"i": i, "config": cfgs[i].to_dict(), "acc": acc, "macs": space.macs(cfgs[i])}
        _append_line(out, row)
        rows.append(row)
    return space, sorted((r for r in rows if r["i"] < samples), key=lambda r: r["i"])


def fit_and_score(space: SearchSpace, rows: list[dict[str, Any]], val_fraction: float = 0.2,
                  seed: int = 0, epochs: int = 300):
    """Fit an :class:`~search.accuracy.AccuracyPredictor` on a seeded split of ``rows`` and
    score it on the held-out architectures.

    Returns:
        ``(predictor, metrics)`` with ``rmse`` (top-1 points), ``kendall_tau``, ``n_train``,
        ``n_val``; the predictor is then refitted on every row.

    Raises:
        ValueError: fewer than 10 rows.
    """
    from search.accuracy import AccuracyPredictor

    if len(rows) < 10:
        raise ValueError(f"need at least 10 measured subnets to fit a predictor, have {len(rows)}")
    cfgs = [space.validate(SubnetConfig.from_dict(r["config"])) for r in rows]
    acc = np.array([r["acc"] for r in rows], dtype=float)
    perm = np.random.default_rng(seed).permutation(len(rows))
    n_val = max(2, int(len(rows) * val_fraction))
    val, tr = perm[:n_val], perm[n_val:]
    pred = AccuracyPredictor(space)
    pred.fit([cfgs[i] for i in tr], acc[tr], epochs=epochs, seed=seed)
    p = pred.predict_many([cfgs[i] for i in val])
    metrics = {"rmse": float(np.sqrt(np.mean((p - acc[val]) ** 2))),
               "kendall_tau": kendall_tau(p, acc[val]), "n_train": len(tr), "n_val": len(val),
               "acc_mean": float(acc.mean()), "acc_std": float(acc.std())}
    final = AccuracyPredictor(space)
    final.fit(cfgs, acc, epochs=epochs, seed=seed)
    return final, metrics
