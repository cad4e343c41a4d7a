"""A training run: its configuration and its folder, as later steps read them.

A run folder holds ``checkpoint.pt`` while training (atomic, resumable), then ``run.json``
(the :class:`TrainConfig`, the space, the schedule and training facts) and
``supernet.safetensors``. Predictors, export and deployment load a trained supernet through
:func:`load_run` and need nothing of the trainer itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa.errors import InputError
from ofa.fileio import read_json
from ofa.space import SearchSpace
from ofa.supernet import OFAMobileNetV3, build_supernet
from ofa.train.checkpoint import load_checkpoint, load_weights
from ofa.train.schedule import run_settings

__all__ = ["TrainConfig", "load_run", "CKPT", "WEIGHTS", "RUN_JSON"]

CKPT = "checkpoint.pt"
WEIGHTS = "supernet.safetensors"
RUN_JSON = "run.json"


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and in ``run.json``."""

    out: str = "runs/demo"
    space: str = "mbv3-digits"
    space_overrides: dict = field(default_factory=dict)
    dataset: str = "digits"
    data: str | None = None
    schedule: str = "deps"
    epochs: float | None = None  # None: the schedule's short_run epochs
    batch_size: int = 64
    lr_scale: float | None = None  # None: the schedule's short_run lr_scale
    seed: int = 0
    ckpt_every: int = 0  # steps; 0 = once per epoch
    eval_images: int = 500  # test images per phase-end evaluation (0 = skip)
    recal_images: int = 2000
    device: str = "auto"  # the torch device: auto | cpu | cuda | cuda:N (see resolve_device)
    autocast: str = "auto"  # forward-pass dtype: auto (bf16 on CUDA, fp32 on CPU) | fp32 | ...
    workers: int = 0  # data-loading processes (0: in the training process)
    max_steps: int | None = None  # stop (after checkpointing) at this global step
    holdout: int | None = None

    def __post_init__(self) -> None:
        self.epochs, self.lr_scale = run_settings(self.schedule, self.epochs, self.lr_scale)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config a ``run.json`` or checkpoint stored; one written before the autocast
        dtype had its own name keeps it under ``precision``.

        Raises:
            TypeError: an unknown field.
        """
        data = dict(data)
        if "precision" in data:
            data.setdefault("autocast", data.pop("precision"))
        return cls(**data)


def load_run(run: str | Path) -> tuple[OFAMobileNetV3, TrainConfig, dict[str, Any]]:
    """Load a finished run folder (``run.json`` + ``supernet.safetensors``), or a checkpoint
    file / a run folder that only holds ``checkpoint.pt`` (an unfinished run).

    Returns:
        ``(supernet in eval mode, its TrainConfig, run info dict)``.

    Raises:
        ValueError: missing/corrupt files or weights that do not fit the space.
    """
    run = Path(run)
    if run.is_file():
        st = load_checkpoint(run)
        info = {"config": st["config"], "space": st["space"], "schedule": st["schedule"]}
        weights = st["model"]
    elif (run / RUN_JSON).exists():
        info = read_json(run / RUN_JSON, "run file")
        weights = load_weights(run / info.get("weights", WEIGHTS))
    elif (run / CKPT).exists():
        return load_run(run / CKPT)
    else:
        raise InputError(f"{run} is not a run folder (no {RUN_JSON} or {CKPT})")
    try:
        space = SearchSpace.from_dict(info["space"])
        cfg = TrainConfig.from_dict(info["config"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"{run}: run description is incomplete ({exc})") from None
    net = build_supernet(space)
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise InputError(f"{run}: weights do not match space {space.name} ({msg})") from None
    return net.eval(), cfg, info
