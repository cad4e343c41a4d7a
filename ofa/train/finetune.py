"""Fine-tune a chosen subnet after extraction, with knowledge distillation from the supernet.

Once-for-All's published specialised networks were fine-tuned after extraction for 25 or 75
epochs (Cai et al., *Once-for-All*, ICLR 2020, section 4; folder names such as
``note10_lat@30ms_top1@78.4_finetune@75``); OFA never released that step. Here: the subnet is
extracted as a static network and BN-recalibrated (its top-1 *before*), then trained on the
run's data and augmentation at the subnet's resolution with SGD (Nesterov momentum 0.9, no
weight decay on BN and biases), a per-iteration cosine learning rate, and the training loss of
the run's schedule: label-smoothed cross-entropy plus ``kd_ratio`` x cross-entropy against the
softmax of the supernet's largest subnet (the teacher, T = 1, as in progressive shrinking;
``kd=False`` trains on labels only). Checkpoints are atomic and hold everything needed to
continue exactly (weights, optimizer, step, RNG); ``resume`` does.

A fine-tune folder holds ``finetune.json`` (subnet, source run, settings, top-1 before and
after) and ``finetuned.safetensors`` (the static network's weights); ``ofa eval`` and
``ofa export`` accept it as ``--checkpoint``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ofa.data import BatchLoader, Dataset, load_dataset
from ofa.device import autocast_context, grad_scaler, resolve_device
from ofa.errors import InputError
from ofa.evaluate import evaluate, recalibrated_subnet
from ofa.fileio import atomic_write_json, read_json
from ofa.space import SearchSpace, SubnetConfig
from ofa.supernet import build_supernet
from ofa.train.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from ofa.train.run import load_run
from ofa.train.schedule import load_schedule
from ofa.train.trainer import param_groups, soft_ce

__all__ = ["FinetuneConfig", "finetune", "load_finetuned", "FINETUNE_JSON", "FINETUNED",
           "FINETUNE_CKPT"]

FINETUNE_JSON = "finetune.json"
FINETUNED = "finetuned.safetensors"
FINETUNE_CKPT = "finetune_checkpoint.pt"


@dataclass
class FinetuneConfig:
    """What ``ofa finetune`` does; stored in its checkpoint and ``finetune.json``.

    ``lr`` is the peak learning rate at batch 2048, scaled linearly to ``batch_size`` (default
    0.24: the last progressive-shrinking phase's). Raises ``ValueError`` on a bad value.
    """

    run: str
    subnet: dict[str, Any]
    out: str
    epochs: float = 5.0
    batch_size: int = 64
    lr: float = 0.24
    kd: bool = True
    seed: int = 0
    data: str | None = None
    device: str = "auto"
    autocast: str = "auto"  # the forward passes' autocast dtype (ofa.device)
    scratch: bool = False  # re-initialise the subnet's weights: the train-from-scratch baseline
    ckpt_every: int = 0  # steps; 0 = once per epoch
    max_steps: int | None = None
    recal_images: int | None = None  # per BN recalibration; None: the supernet run's

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise InputError(f"epochs must be a finite number > 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a finite number > 0, got {self.lr}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.recal_images is not None and self.recal_images < 1:
            raise InputError(f"recal images must be >= 1, got {self.recal_images}")


class _Finetuner:
    def __init__(self, cfg: FinetuneConfig, resume: bool) -> None:
        self.cfg, self.out = cfg, Path(cfg.out)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # augmentation and dropout draw from it
        net, tcfg, _ = load_run(cfg.run)
        self.space: SearchSpace = net.space
        self.sub_cfg = self.space.validate(SubnetConfig.from_dict(cfg.subnet))
        self.data: Dataset = load_dataset(tcfg.dataset, cfg.data or tcfg.data,
                                          holdout=tcfg.holdout, seed=tcfg.seed)
        sched = load_schedule(tcfg.schedule)
        self.smoothing, self.kd_ratio = sched.label_smoothing, sched.kd_ratio
        self.momentum, self.wd = sched.momentum, sched.weight_decay
        self.recal_images = cfg.recal_images or tcfg.recal_images
        self.model = recalibrated_subnet(net, self.sub_cfg, self.data, self.recal_images)
        if cfg.scratch:  # the same architecture, none of the supernet's weights
            for m in self.model.modules():
                if m is not self.model and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.teacher = (recalibrated_subnet(net, self.space.max_subnet(self.sub_cfg.r),
                                            self.data, self.recal_images) if cfg.kd else None)
        self.steps_per_epoch = max(1, len(self.data.train) // cfg.batch_size)
        self.total = max(1, round(cfg.epochs * self.steps_per_epoch))
        self.base_lr = cfg.lr * cfg.batch_size / 2048
        self.step, self.train_seconds, self.top1_before = 0, 0.0, None
        self.model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        self.opt = torch.optim.SGD(param_groups(self.model, self.wd), lr=self.base_lr,
                                   momentum=self.momentum, nesterov=True)
        self.scaler = grad_scaler(self.device, cfg.autocast)
        if resume:
            self._restore()

    def _state(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "top1_before": self.top1_before,
                "train_seconds": self.train_seconds, "torch_rng": torch.get_rng_state()}

    def _restore(self) -> None:
        st = load_checkpoint(self.out / FINETUNE_CKPT)
        skip = ("max_steps", "device", "autocast", "precision", "ckpt_every")  # not the result
        mine = {k: v for k, v in asdict(self.cfg).items() if k not in skip}
        theirs = {k: v for k, v in st["config"].items() if k not in skip}
        if mine != theirs:
            raise InputError(f"{self.out / FINETUNE_CKPT}: made with other settings; resume "
                             "with the same --checkpoint, --subnet, --epochs, --batch-size, "
                             "--lr, --kd")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.top1_before = st["step"], st["top1_before"]
        self.train_seconds = st["train_seconds"]
        torch.set_rng_state(st["torch_rng"])

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.cfg.autocast):
            out = self.model(x).float()
        loss = F.cross_entropy(out, y, label_smoothing=self.smoothing)
        if self.teacher is not None:
            with torch.no_grad(), autocast_context(self.device, self.cfg.autocast):
                soft = F.softmax(self.teacher(x).float(), dim=1)
            loss = loss + self.kd_ratio * soft_ce(out, soft)
        return loss

    def _batches(self):
        """``(x, y)`` from the current step on, epoch by epoch, at the subnet's resolution."""
        while True:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            for x, y in BatchLoader(self.data, "train", self.cfg.batch_size, self.sub_cfg.r,
                                    train=True, seed=self.cfg.seed, epoch=epoch,
                                    start_batch=start):
                yield (x.to(self.device, non_blocking=True),
                       y.to(self.device, non_blocking=True))

    def run(self) -> dict[str, Any]:
        if self.top1_before is None:
            self.top1_before = evaluate(self.model, self.data, "test", self.sub_cfg.r,
                                        autocast=self.cfg.autocast)
        self.out.mkdir(parents=True, exist_ok=True)
        every = self.cfg.ckpt_every or self.steps_per_epoch
        clock = time.perf_counter()
        self.model.train()
        bar = tqdm(total=self.total, initial=self.step, desc="finetune", unit="step",
                   mininterval=1.0, leave=False)
        batches = self._batches()
        while self.step < self.total:
            lr = 0.5 * self.base_lr * (1 + math.cos(math.pi * self.step / self.total))
            for g in self.opt.param_groups:
                g["lr"] = lr
            x, y = next(batches)
            loss = self._loss(x, y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # fp16: loss scaling; otherwise a no-op
            self.scaler.step(self.opt)
            self.scaler.update()
            self.step += 1
            bar.update(1)
            if self.step % every == 0 or self.step == self.total or (
                    self.cfg.max_steps is not None and self.step >= self.cfg.max_steps):
                loss_v = float(loss.detach())
                if not math.isfinite(loss_v):
                    raise InputError(f"fine-tuning diverged at step {self.step} (loss "
                                     f"{loss_v}); the last good checkpoint is kept: lower --lr")
                self.train_seconds += time.perf_counter() - clock
                clock = time.perf_counter()
                save_checkpoint(self.out / FINETUNE_CKPT, self._state())
            if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
                bar.close()
                return {"stopped_at": self.step}
        bar.close()
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        top1 = evaluate(self.model, self.data, "test", self.sub_cfg.r,
                        autocast=self.cfg.autocast)
        save_weights(self.out / FINETUNED, self.model.state_dict())
        info = {"kind": "ofa-edge-finetune", "config": asdict(self.cfg),
                "subnet": self.sub_cfg.to_dict(), "summary": self.sub_cfg.summary(),
                "space": self.space.to_dict(), "source_run": str(Path(self.cfg.run).resolve()),
                "steps": self.step, "epochs": self.cfg.epochs, "kd": self.cfg.kd,
                "top1_before": self.top1_before, "top1_after": top1,
                "train_seconds": round(self.train_seconds, 1), "weights": FINETUNED}
        atomic_write_json(self.out / FINETUNE_JSON, info)
        (self.out / FINETUNE_CKPT).unlink(missing_ok=True)
        return info


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.subnet`` of the run ``cfg.run`` into ``cfg.out`` (see the module
    docstring). Returns ``finetune.json``'s dict, or ``{"stopped_at": step}`` at
    ``max_steps``.

    Raises:
        ValueError: an unreadable run, a subnet outside its space, bad settings, an existing
            result without ``resume``, a diverging loss (the last checkpoint is kept).
    """
    out = Path(cfg.out)
    if not resume and ((out / FINETUNE_JSON).exists() or (out / FINETUNE_CKPT).exists()):
        raise InputError(f"{out} already holds a fine-tune; pass --resume or another --out")
    if resume and not (out / FINETUNE_CKPT).exists():
        if (out / FINETUNE_JSON).exists():
            return read_json(out / FINETUNE_JSON, "fine-tune result")
        raise InputError(f"nothing to resume in {out} (no {FINETUNE_CKPT})")
    return _Finetuner(cfg, resume).run()


def load_finetuned(folder: str | Path) -> tuple[nn.Module, SubnetConfig, dict[str, Any]]:
    """A fine-tune folder -> ``(static network in eval mode, its subnet, finetune.json)``.

    Raises:
        ValueError: not a finished fine-tune folder, or weights that do not fit.
    """
    folder = Path(folder)
    info = read_json(folder / FINETUNE_JSON, "fine-tune result")
    if not isinstance(info, dict) or info.get("kind") != "ofa-edge-finetune":
        raise InputError(f"{folder}: not an ofa-edge fine-tune folder")
    space = SearchSpace.from_dict(info["space"])
    cfg = space.validate(SubnetConfig.from_dict(info["subnet"]))
    net = build_supernet(space)
    net.set_active_subnet(cfg)
    model = net.get_active_subnet()
    try:
        model.load_state_dict(load_weights(folder / info.get("weights", FINETUNED)))
    except RuntimeError as exc:
        raise InputError(f"{folder}: weights do not fit {cfg.summary()} "
                         f"({str(exc).splitlines()[0]})") from None
    return model.eval(), cfg, info
