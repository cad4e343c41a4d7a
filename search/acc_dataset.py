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

from ofa.errors import InputError
from ofa.fileio import atomic_write_text
from ofa.space import SearchSpace, SubnetConfig
from search.encoding import ArchEncoder
from search.metrics import kendall_tau

__all__ = ["build_accuracy_dataset", "measure_subnets", "choose_measured", "read_dataset",
           "fit_and_score"]

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
            raise InputError(f"{path}:{n + 1}: corrupt line in accuracy dataset") from None
        if n == 0:
            if obj.get("kind") != "ofa-edge-accuracy-dataset":
                raise InputError(f"{path}: not an accuracy dataset (bad header)")
            if header is not None:
                diff = [k for k in sorted(set(header) | set(obj))
                        if obj.get(k) != header.get(k)]
                if diff:
                    raise InputError(f"{path}: cached for another {', '.join(diff)}; "
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
                           autocast: str = "fp32", workers: int = 0
                           ) -> tuple[SearchSpace, list[dict[str, Any]]]:
    """Measure ``samples`` subnets of the run's supernet; returns the run's space and all
    rows (cached ones too), sorted by index. BN recalibration and evaluation run on
    ``device`` at ``autocast`` (:mod:`ofa.device`); an autocast dtype other than fp32 is part of
    the cache's header (its accuracies differ slightly). ``workers`` processes decode the
    evaluation images once per resolution (:func:`ofa.data.eval_loader`).

    Each row: ``{"i": index, "config": dict, "acc": top-1 % on split, "macs": MACs}``.

    Raises:
        ValueError: unreadable run, a cache from another run, bad split.
    """
    m = _Measurer(run, device, autocast, recal_images)
    header = m.header(split, seed=seed, sampler=SAMPLER)
    rows = m.open_cache(out, header)
    done = {r["i"] for r in rows}
    cfgs = ArchEncoder(m.space).stratified_configs(samples, seed)
    todo = [i for i in range(samples) if i not in done]
    if todo:
        from tqdm import tqdm

        bar = tqdm(todo, desc="accuracy dataset", unit="subnet", initial=len(done),
                   total=samples, disable=not progress)
        for i in bar:
            row = {"i": i, "config": cfgs[i].to_dict(),
                   "acc": m.top1(cfgs[i], split, data, workers), "macs": m.space.macs(cfgs[i])}
            _append_line(out, row)
            rows.append(row)
    return m.space, sorted((r for r in rows if r["i"] < samples), key=lambda r: r["i"])


def measure_subnets(run: str | Path, out: str | Path, configs: list[dict[str, Any]],
                    split: str = "holdout", data: str | None = None,
                    recal_images: int | None = None, progress: bool = True,
                    device: str = "cpu", autocast: str = "fp32", workers: int = 0
                    ) -> list[float]:
    """Top-1 (%) on ``split`` of each subnet in ``configs`` (``SubnetConfig`` dicts), each
    BN-recalibrated as in :func:`build_accuracy_dataset`. Measured rows are appended to the
    JSON-lines cache ``out`` and reused by config, so an interrupted call resumes and a
    subnet measured once is not measured again.

    Raises:
        ValueError: unreadable run, a config outside the run's space, a cache from another
            run/split/autocast.
    """
    m = _Measurer(run, device, autocast, recal_images)
    cfgs = [m.space.validate(SubnetConfig.from_dict(c)) for c in configs]
    rows = m.open_cache(out, m.header(split))
    done = {_config_key(r["config"]): r["acc"] for r in rows}
    todo = list({_config_key(c.to_dict()): c for c in cfgs
                 if _config_key(c.to_dict()) not in done}.values())
    if todo:
        from tqdm import tqdm

        for c in tqdm(todo, desc=f"measuring on {split}", unit="subnet", disable=not progress):
            acc = m.top1(c, split, data, workers)
            _append_line(Path(out), {"config": c.to_dict(), "acc": acc})
            done[_config_key(c.to_dict())] = acc
    return [done[_config_key(c.to_dict())] for c in cfgs]


def choose_measured(run: str | Path, shortlists: list[list[dict[str, Any]]], out: str | Path,
                    **measure: Any) -> list[dict[str, Any]]:
    """The most accurate subnet of each shortlist (rows of
    :func:`search.evolution.run_search`'s ``"shortlist"``), measured on the hold-out split.

    Every subnet of every shortlist is measured in one :func:`measure_subnets` call (cache
    ``out``; ``measure`` passes ``data``, ``recal_images``, ``device``, ``autocast``,
    ``workers``, ``progress``) and gets ``holdout_top1`` (%). Each returned row is the
    chosen shortlist row plus ``shortlist`` (the annotated list) and ``shortlist_pick`` (its
    index there, i.e. the predictor's rank; ties go to the better predicted).

    Raises:
        ValueError: as :func:`measure_subnets`, or an empty shortlist.
    """
    if not all(shortlists):
        raise InputError("every shortlist needs at least one subnet")
    top1 = iter(measure_subnets(run, out, [r["config"] for sl in shortlists for r in sl],
                                **measure))
    chosen = []
    for sl in shortlists:
        sl = [{**r, "holdout_top1": next(top1)} for r in sl]
        pick = max(range(len(sl)), key=lambda j: sl[j]["holdout_top1"])
        chosen.append({**sl[pick], "shortlist": sl, "shortlist_pick": pick})
    return chosen


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


class _Measurer:
    """A run's supernet on ``device``, measuring subnets' top-1 (BN recalibration, then
    :func:`ofa.evaluate.subnet_accuracy`); the dataset is loaded at the first measurement."""

    def __init__(self, run: str | Path, device: str, autocast: str,
                 recal_images: int | None) -> None:
        from ofa.device import conv_memory_format, resolve_autocast, resolve_device
        from ofa.train.run import load_run

        self.dev = resolve_device(device)
        conv_memory_format(self.dev)  # on CUDA: depthwise convolutions off cuDNN's plans
        self.autocast = resolve_autocast(autocast, self.dev)
        self.run = Path(run)
        self.net, self.cfg, _ = load_run(run)
        self.space = self.net.space
        self.recal = recal_images or self.cfg.recal_images
        self.ds: Any = None
        self.cache: dict = {}

    def header(self, split: str, **extra: Any) -> dict[str, Any]:
        """The cache header that pins run, split, space, recalibration and autocast."""
        h = {"kind": "ofa-edge-accuracy-dataset", "run": str(self.run.resolve()),
             "split": split, **extra, "space": self.space.name, "recal_images": self.recal}
        if self.autocast != "fp32":
            h["autocast"] = self.autocast
        return h

    def open_cache(self, out: str | Path, header: dict[str, Any]) -> list[dict[str, Any]]:
        """The cache's intact rows; rewrites header + rows (drops a line torn by a kill)."""
        rows = read_dataset(out, header)
        atomic_write_text(Path(out), "".join(json.dumps(o) + "\n" for o in [header, *rows]))
        return rows

    def top1(self, cfg: SubnetConfig, split: str, data: str | None, workers: int) -> float:
        from ofa.data import load_dataset
        from ofa.evaluate import subnet_accuracy

        if self.ds is None:
            self.ds = load_dataset(self.cfg.dataset, data or self.cfg.data,
                                   holdout=self.cfg.holdout, seed=self.cfg.seed)
            self.net.to(self.dev)
        return subnet_accuracy(self.net, cfg, self.ds, split, self.recal, cache=self.cache,
                               autocast=self.autocast, workers=workers)


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
        raise InputError(f"need at least 10 measured subnets to fit a predictor, have {len(rows)}")
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
