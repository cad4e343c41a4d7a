"""Latency-table models: every block shape and whole subnet as the file a runtime times.

A block is built as a tiny model (``ofa.static.build_layer``) with periodic weights
(:func:`periodic_weights`: they compress 10-35x on their way to a device) and exported for
the runtime at the table's precision (:data:`deploy.formats.FORMATS`; int8 quantised on a
fixed-seed representative set, :func:`representative_set`: the values set the scales, not
the work). LiteRT blocks take and give NHWC tensors as inside a whole TFLite network
(:func:`block_layout`). Converted models are kept in ``<table>.models/`` until the table is
written, so a killed build converts nothing twice; :func:`convert_blocks` converts a whole
table's models ahead (``ofa run`` does it beside training). Conversions run in ``jobs``
processes, never beside a timed invoke.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deploy.export import converter_pool
from deploy.formats import ExportFormat, format_for
from deploy.ontarget.runtimes import times_files
from ofa.errors import InputError
from ofa.fileio import atomic_write_json
from ofa.space import BlockShape, SearchSpace, SubnetConfig
from ofa.static import build_layer
from ofa.supernet import build_supernet

__all__ = ["PRECISIONS", "CALIB_IMAGES", "representative_set", "WEIGHT_PERIOD",
           "periodic_weights", "block_layout", "block_models_dir", "calibration_configs",
           "convert_blocks"]

PRECISIONS = ("fp32", "int8")


CALIB_IMAGES = 8  # representative inputs per int8 conversion (blocks and whole subnets)


def representative_set(input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``(CALIB_IMAGES, C, H, W)`` float32 standard-normal inputs (fixed ``seed``) for int8
    conversions in tables: normalised images and BN-ed activations are of that scale."""
    g = np.random.default_rng(seed)
    return g.standard_normal((CALIB_IMAGES, *input_shape[1:])).astype(np.float32)


def _export(model: nn.Module, input_shape: tuple[int, ...], fmt: ExportFormat,
            path: Path) -> Path:
    """Write ``model`` as a ``fmt`` file (``deploy/formats.py``; int8 formats calibrated on
    :func:`representative_set`)."""
    calib = representative_set(input_shape) if fmt.precision == "int8" else None
    return fmt.export(model.eval(), input_shape, path, calib=calib)


WEIGHT_PERIOD = 251  # values in the repeated weight tile of a timed model


def periodic_weights(model: nn.Module, period: int = WEIGHT_PERIOD, seed: int = 0) -> nn.Module:
    """Give every weight tensor of ``model`` (conv and linear kernels: the parameters with
    more than one dimension) one seeded tile of ``period`` normal values, repeated and scaled
    to the tensor's own standard deviation at initialisation; in place, returns ``model``.

    A model timed for a latency table is a shape, not a trained network: the dense kernels
    of ONNX Runtime, XNNPACK and eager torch do the same work whatever the values (no
    sparsity, no value-dependent paths; values stay far from the denormal range), and a
    repeated tile compresses with zlib (25-35x fp32 ONNX and TFLite files, ~10x int8, whose
    per-channel scales differ), so a batch of blocks sent to a device is a few percent of its
    bytes (``tests/test_deploy.py`` checks the exported graph is the one random weights
    give; ``bench/final_measurement.py`` that trained and periodic exports time alike).
    The range per tensor is kept so int8 quantisation sees ordinary scales.

    Raises:
        ValueError: ``period < 2``.
    """
    if period < 2:
        raise InputError(f"period must be >= 2, got {period}")
    base = torch.randn(period, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                n = p.numel()
                std = float(p.std(correction=0)) or 1.0  # 1.0: a constant tensor
                p.copy_((base.repeat(n // period + 1)[:n] * std).reshape(p.shape))
    return model


def _block(s: BlockShape) -> nn.Module:
    """The model a table times for block shape ``s``: its layer with periodic weights."""
    return periodic_weights(build_layer(s))


class _ChannelsLast(nn.Module):
    """``block`` with NHWC input and (4-D) output: inside a whole TFLite network every layer
    reads and writes NHWC, so a LiteRT block timed with NCHW I/O would carry two TRANSPOSE
    ops the network does not have (litert-torch folds these permutes into the layout)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def block_layout(runtime: str) -> str:
    """The I/O layout a table's blocks are exported with for ``runtime``: ``nhwc`` for
    LiteRT (the layout between layers of a TFLite network), ``nchw`` otherwise (ONNX keeps
    NCHW throughout)."""
    return "nhwc" if runtime == "litert" else "nchw"


def _block_model(s: BlockShape, runtime: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model exported for block ``s`` in ``runtime`` and its input shape (NHWC with
    :class:`_ChannelsLast` for LiteRT, see :func:`block_layout`)."""
    if block_layout(runtime) == "nhwc":
        return _ChannelsLast(_block(s)), (1, s.in_size, s.in_size, s.in_ch)
    return _block(s), (1, s.in_ch, s.in_size, s.in_size)


class _Overhead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _subnet(space: SearchSpace, cfg: SubnetConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build_supernet(space)
    net.set_active_subnet(cfg)
    return periodic_weights(net.get_active_subnet().eval())


def _export_subnet(space: dict, cfg: dict, seed: int, fmt: ExportFormat, path: str) -> str:
    """One whole subnet to ``path`` (a process-pool task: plain, picklable arguments)."""
    sp, c = SearchSpace.from_dict(space), SubnetConfig.from_dict(cfg)
    _export(_subnet(sp, c, seed), (1, 3, c.r, c.r), fmt, Path(path))
    return path


def _export_subnets(space: SearchSpace, cfgs: list[SubnetConfig], fmt: ExportFormat,
                    folder: Path, desc: str, jobs: int,
                    convert: Callable[..., Any] | None = None) -> list[Path]:
    """Every config exported as ``fmt`` into ``folder`` (``s<i>-<config hash><suffix>``; a
    file already there is kept: converted ahead by :func:`convert_blocks`), by ``jobs``
    processes (1: here), or by ``convert`` (an open :func:`deploy.export.converter_pool`'s
    map)."""
    paths = [folder / (f"s{i}-" + hashlib.sha1(c.to_json().encode()).hexdigest()[:12]
                       + fmt.suffix) for i, c in enumerate(cfgs)]
    tasks = [(space.to_dict(), c.to_dict(), i, fmt, str(p))
             for i, (c, p) in enumerate(zip(cfgs, paths)) if not p.exists()]
    if tasks:
        with (tqdm(total=len(tasks), desc=f"{desc}: export ({fmt.name}, {jobs} process(es))",
                   leave=False) as bar,
              contextlib.nullcontext(convert) if convert else converter_pool(jobs) as run):
            for _ in run(_export_subnet, *zip(*tasks)):
                bar.update()
    return paths


def _export_block(s: BlockShape, fmt: ExportFormat, path: str) -> str:
    """One block's model as ``fmt`` to ``path`` (a process-pool task)."""
    _export(*_block_model(s, fmt.runtime), fmt, Path(path))
    return path


def block_models_dir(out: str | Path) -> Path:
    """Where a local build of the table ``out`` keeps its converted block models until the
    table is written (``<out>.models/``): a killed build, or :func:`convert_blocks` run
    ahead of it, leaves them for the build to time without converting again."""
    out = Path(out)
    return out.with_name(out.name + ".models")


def _models_folder(out: str | Path, runtime: str, precision: str) -> Path:
    """:func:`block_models_dir` of ``out``, emptied when its models were converted for
    another runtime, precision, block layout or torch; temp files of a killed conversion
    removed."""
    folder = block_models_dir(out)
    want = {"runtime": runtime, "precision": precision, "block_layout": block_layout(runtime),
            "torch": torch.__version__}
    head = folder / "models.json"
    try:
        same = json.loads(head.read_text()) == want
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
        atomic_write_json(head, want)
    for junk in folder.glob(".*.tmp"):
        junk.unlink(missing_ok=True)
    return folder


def _block_file(folder: Path, s: BlockShape, suffix: str) -> Path:
    """A block's model file in a models folder (named by a hash of its table key)."""
    return folder / (hashlib.sha1(s.key().encode()).hexdigest()[:20] + suffix)


def _conversions(todo: list[tuple[int, BlockShape]], fmt: ExportFormat, folder: Path,
                 convert: Callable[..., Any]) -> tuple[int, Iterator[str]]:
    """Start converting the ``fmt`` models of ``todo``'s blocks missing from ``folder`` (one
    per shape) with ``convert`` (a :func:`deploy.export.converter_pool` map: a process pool
    takes every task at once); returns how many, and their paths in ``todo``'s order, each
    given once its file is written."""
    missing = {_block_file(folder, s, fmt.suffix): s for _, s in todo}
    missing = {p: s for p, s in missing.items() if not p.exists()}
    return len(missing), iter(convert(_export_block, list(missing.values()),
                                      [fmt] * len(missing), [str(p) for p in missing]))


def _convert_missing(todo: list[tuple[int, BlockShape]], fmt: ExportFormat, folder: Path,
                     convert: Callable[..., Any], progress: bool = True) -> int:
    """Convert the ``fmt`` models of ``todo``'s blocks missing from ``folder`` (one per
    shape) with ``convert`` (a :func:`deploy.export.converter_pool` map); returns how many."""
    n, done = _conversions(todo, fmt, folder, convert)
    with tqdm(total=n, desc=f"convert blocks ({fmt.runtime} {fmt.precision})", unit="block",
              disable=not progress or not n) as bar:
        for _ in done:
            bar.update()
    return n


def calibration_configs(space: SearchSpace, resolutions: list[int], k: int,
                        seed: int = 0) -> list[SubnetConfig]:
    """The subnets a table's calibration is fitted on: ``k`` seeded random ones at random
    resolutions of ``resolutions``, then the largest (at the largest resolution) and the
    smallest (at the smallest)."""
    res = sorted(resolutions)
    g = random.Random(seed + 1)
    cfgs = [space.sample(g, r=g.choice(res)) for _ in range(k)]
    return cfgs + [space.max_subnet(max(res)), space.min_subnet(min(res))]


def reference_config(space: SearchSpace, resolutions: list[int]) -> SubnetConfig:
    """The reference subnet of a table over ``resolutions``: the middle choice of every
    elastic dimension (kernel, expand ratio, depth; the upper one of an even count) at the
    middle resolution. Timed beside every batch of whole subnets (:func:`deploy.lut.measure.
    measure_subnets`), it carries what the small probe does not see: a change of the
    device's speed for models of the space's size (cache and memory shared with
    neighbours) that moves every whole subnet alike (``docs/latency.md``)."""
    def mid(values: list[Any]) -> Any:
        return sorted(values)[len(values) // 2]

    return space.config(mid(space.ks_list), mid(space.expand_list), mid(space.depth_list),
                        mid(list(resolutions)))


def convert_blocks(space: SearchSpace, resolutions: list[int], runtime: str, out: str | Path,
                   precision: str = "fp32", jobs: int = 1, calib: int = 10, seed: int = 0,
                   progress: bool = True) -> int:
    """Convert every model a local :func:`build_table` of ``out`` (same ``calib`` and
    ``seed``) will time into :func:`block_models_dir` (``out`` + ``.models``): the blocks the
    build's partial table does not have yet, then the calibration subnets; a model already
    there is skipped and each file is written atomically, so a killed call resumes. The
    build then converts only what is missing. ``ofa run`` runs this in a background process
    while it trains (``ofa/pipeline/tables.py``). Returns the number of block models converted
    (0 for the torch runtime: nothing to convert).

    Raises:
        ValueError: an unknown runtime or a precision it has no format for.
    """
    if not times_files(runtime):
        return 0
    fmt = format_for(runtime, precision)
    folder = _models_folder(out, runtime, precision)
    try:
        done = json.loads(Path(str(out) + ".partial.json").read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        done = {}
    todo = [(r, s) for r in resolutions for s in space.all_block_shapes([r])
            if s.key() not in done.get(str(r), {})]
    with converter_pool(jobs) as run:
        n = _convert_missing(todo, fmt, folder, run, progress)
        if calib > 0:
            _export_subnets(space, calibration_configs(space, resolutions, calib, seed), fmt,
                            folder / "calibration", "calibration", jobs, run)
    return n
