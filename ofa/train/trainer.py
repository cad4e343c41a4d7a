"""Train the supernet once: one loop that runs any :class:`~ofa.train.schedule.Schedule`.

- Progressive shrinking [OFA, ICLR 2020, section 3.3]: phases enlarge the elastic choices;
  KD from the trained full network (teacher, T = 1); channel sorting before expand phases.
- Delayed ε-shrinking [DεpS, ECCV 2024, section 3]: full network first, ε ramp of the subnets'
  effective learning rate, sandwich sampling with in-place distillation.

SGD with Nesterov momentum, no weight decay on BN/bias, warmup + per-iteration cosine,
label smoothing. Resolution is sampled once per batch from the run's seeded RNG, identical
on all ranks. Checkpoints are atomic and hold everything needed to continue exactly
(weights, optimizer, phase, step, RNG states, space, schedule). Data-parallel training under
``torchrun`` all-reduces the gradients of each step (gloo on CPU, nccl on GPU), as OFA's
Horovod setup does, since each step accumulates several subnets' gradients.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ofa.data import Dataset, StepBatches, load_dataset, train_loader
from ofa.device import amp_dtype, autocast_context, conv_memory_format, grad_scaler, resolve_device
from ofa.errors import InputError
from ofa.evaluate import subnet_accuracy
from ofa.fileio import atomic_write_json
from ofa.space import SearchSpace, get_space
from ofa.supernet import OFAMobileNetV3
from ofa.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
from ofa.train.run import CKPT, RUN_JSON, WEIGHTS, TrainConfig
from ofa.train.schedule import Phase, Schedule, eps_beta, load_schedule, lr_at

__all__ = ["Trainer", "train", "soft_ce", "param_groups"]

def soft_ce(logits: Tensor, target_prob: Tensor) -> Tensor:
    """Cross-entropy of ``logits (N, C)`` against soft targets ``(N, C)`` (KD at T = 1)."""
    return -(target_prob * F.log_softmax(logits, dim=1)).sum(1).mean()


def param_groups(net: nn.Module, wd: float) -> list[dict[str, Any]]:
    """SGD parameter groups: weight decay ``wd`` on weights, none on BN and biases (OFA)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        is_bn_or_bias = p.ndim <= 1 or "bn" in name or name.endswith("bias")
        (no_decay if is_bn_or_bias else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Runs a schedule on a supernet, with checkpoints, resume and optional data parallelism."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(cfg.device)
        self.layout = conv_memory_format(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.data: Dataset = load_dataset(cfg.dataset, cfg.data, holdout=cfg.holdout,
                                          seed=cfg.seed)
        self.space: SearchSpace = get_space(cfg.space, num_classes=self.data.num_classes,
                                            **cfg.space_overrides)
        self.schedule: Schedule = load_schedule(cfg.schedule).scaled(cfg.epochs)
        self.steps_per_epoch = max(1, len(self.data.train) // cfg.batch_size)
        self.phase_steps = self.schedule.phase_steps(self.steps_per_epoch)
        torch.manual_seed(cfg.seed)
        self.net = OFAMobileNetV3(self.space).to(self.device)
        self.rng = random.Random(cfg.seed)
        self.teacher: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_group = ""
        self.phase = self.phase_step = self.global_step = 0
        self.train_seconds = 0.0  # wall time of run() so far, summed over resumed stretches
        self.data_wait = 0.0  # seconds of this process's run() spent waiting for batches
        self._clock = time.perf_counter()
        self.batches = StepBatches(self.data, cfg.batch_size, self.space.resolutions, cfg.seed,
                                   self.steps_per_epoch, self.rank, self.world)
        self.amp_dtype = amp_dtype(cfg.autocast, self.device)
        self.scaler = grad_scaler(self.device, cfg.autocast)
        self._resumed_rng: Tensor | None = None
        if resume and (self.out / CKPT).exists():
            self._restore(load_checkpoint(self.out / CKPT))
        elif resume and self.rank == 0:
            print(f"no checkpoint in {self.out}; starting a new run")
        elif not resume and (self.out / CKPT).exists():
            raise InputError(f"{self.out} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        torch.manual_seed(cfg.seed * 7919 + self.rank + self.global_step)
        if self.world > 1:
            for p in self.net.state_dict().values():
                dist.broadcast(p, 0)
        self._nhwc()

    # --- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "opt_group": self.opt_group,
            "phase": self.phase, "phase_step": self.phase_step,
            "global_step": self.global_step,
            "epoch": self.global_step / self.steps_per_epoch,
            "train_seconds": self._elapsed(),
            "rng_python": self.rng.getstate(),
            "rng_torch": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
            "config": asdict(self.cfg),
            "space": self.space.to_dict(),
            "schedule": self.schedule.to_dict(),
        }

    def _restore(self, st: dict[str, Any]) -> None:
        if st["space"] != self.space.to_dict():
            raise InputError(f"{self.out / CKPT} was trained on space {st['space']['preset']} "
                             "with other settings; resume with the same --space/--dataset")
        if st["schedule"] != self.schedule.to_dict():
            raise InputError(f"{self.out / CKPT}: schedule/epochs differ from the checkpoint's; "
                             "resume with the same --schedule and --epochs")
        try:
            self.net.load_state_dict(st["model"])
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0]
            raise InputError(f"{self.out / CKPT}: weights do not fit ({msg})") from None
        if st["teacher"] is not None:
            self.teacher = self._make_teacher()
            self.teacher.load_state_dict(st["teacher"])
        self.phase, self.phase_step = st["phase"], st["phase_step"]
        self.global_step = st["global_step"]
        self.train_seconds = float(st.get("train_seconds", 0.0))
        self.rng.setstate(st["rng_python"])
        if st.get("scaler") and self.scaler.is_enabled():  # fp16; other dtypes need none
            self.scaler.load_state_dict(st["scaler"])
        if st["optimizer"] is not None and self.phase < len(self.phase_steps) and (
                self.phase_step > 0 or self._group_of(self.phase) == st["opt_group"]):
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(st["optimizer"])
            self.opt_group = st["opt_group"]
        self._resumed_rng = st["rng_torch"]
        if self.rank == 0:
            print(f"resumed {self.out} at phase {self.phase} step {self.phase_step} "
                  f"(global step {self.global_step})")

    def _nhwc(self) -> None:
        """Keep the supernet and teacher weights in the run's layout
        (:func:`ofa.device.conv_memory_format`: channels-last on the CPU), whatever changed
        them (restore, channel sorting); one layout keeps resumed runs bit-identical."""
        for m in (self.net, self.teacher):
            if m is not None:
                m.to(memory_format=self.layout)

    def _elapsed(self) -> float:
        """Seconds of training wall time (phase-end evaluations included) over every stretch
        of this run, up to now."""
        return self.train_seconds + time.perf_counter() - self._clock

    def _save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / CKPT, self._state())

    # --- pieces ----------------------------------------------------------------------------
    def _make_teacher(self) -> nn.Module:
        cfg = self.net.get_active_subnet_config()
        self.net.set_max_subnet()
        t = self.net.get_active_subnet().eval()
        self.net.set_active_subnet(cfg)
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    def _make_optimizer(self) -> torch.optim.Optimizer:
        s = self.schedule
        return torch.optim.SGD(param_groups(self.net, s.weight_decay), lr=0.0,
                               momentum=s.momentum, nesterov=s.nesterov)

    def _group_of(self, i: int) -> str:
        return self.schedule.phases[i].group

    def _group_span(self, i: int) -> tuple[int, int, int, float]:
        """(steps before phase i in its group, group total steps, warmup steps, base lr)."""
        g = self._group_of(i)
        idx = [j for j in range(len(self.phase_steps)) if self._group_of(j) == g]
        first = self.schedule.phases[idx[0]]
        before = sum(self.phase_steps[j] for j in idx if j < i)
        total = sum(self.phase_steps[j] for j in idx)
        warm = round(first.warmup_epochs * self.steps_per_epoch)
        base = first.lr * self.cfg.batch_size / self.schedule.lr_batch * self.cfg.lr_scale
        return before, total, warm, base

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        return x, y.to(self.device, non_blocking=True)

    def _fwd(self, model: nn.Module, x: Tensor) -> Tensor:
        """Logits in fp32, the forward pass under the run's autocast dtype."""
        with autocast_context(self.device, self.cfg.autocast):
            return model(x).float()

    def _phase_start(self, i: int) -> None:
        ph = self.schedule.phases[i]
        if ph.kd == "teacher" and self.teacher is None:
            self.teacher = self._make_teacher()
            self._nhwc()
            if self.rank == 0:
                save_weights(self.out / "teacher.safetensors", self.teacher.state_dict())
        if ph.sort_channels != "none":
            nested: list[float] = []
            if ph.sort_channels == "nested":  # keep the previous phase's widths in front
                prev = self.schedule.phases[i - 1].choices(self.space)["expand_list"] if i else []
                nested = [e for e in prev if e != max(self.space.expand_list)]
            self.net.sort_channels(nested_ratios=nested)
            self._nhwc()
            if self.optimizer is not None:  # momentum buffers no longer line up: reset them
                self.optimizer.state.clear()
        if self.optimizer is None or self.opt_group != ph.group:
            self.optimizer = self._make_optimizer()
            self.opt_group = ph.group

    def _allreduce_grads(self) -> None:
        if self.world == 1:
            return
        grads = []
        for p in self.net.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def _train_step(self, ph: Phase, x: Tensor, y: Tensor, r: int, beta: float) -> Tensor:
        """One optimizer step on batch ``x (N, 3, r, r)``, ``y (N,)``; returns the summed loss
        of its subnets as a 0-d tensor (read on the host only every few steps)."""
        sp, net, s = self.space, self.net, self.schedule
        ch = ph.choices(sp)
        ce = lambda out: F.cross_entropy(out, y, label_smoothing=s.label_smoothing)  # noqa: E731
        net.train()
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)  # no host sync per step
        back = lambda loss: self.scaler.scale(loss).backward()  # noqa: E731
        if ph.mode == "full":
            net.set_active_subnet(sp.max_subnet(r))
            loss = ce(self._fwd(net, x))
            back(loss)
            total += loss.detach()
        elif ph.mode == "random":
            soft = None
            if ph.kd == "teacher":
                assert self.teacher is not None
                with torch.no_grad():
                    soft = F.softmax(self._fwd(self.teacher, x), dim=1)
            for _ in range(ph.subnets):
                net.set_active_subnet(sp.sample(self.rng, r=r, **ch))
                out = self._fwd(net, x)
                loss = ce(out)
                if soft is not None:
                    loss = loss + s.kd_ratio * soft_ce(out, soft)
                back(loss)
                total += loss.detach()
        else:  # sandwich: largest (CE), smallest + random (in-place KD, no dropout)
            net.set_active_subnet(sp.max_subnet(r))
            out = self._fwd(net, x)
            loss = ce(out)
            back(loss)
            total += loss.detach()
            soft = F.softmax(out.detach(), dim=1)
            drop = net.classifier[0]
            p_drop, drop.p = drop.p, 0.0
            try:
                small = sp.config(min(ch["ks_list"]), min(ch["expand_list"]),
                                  min(ch["depth_list"]), r)
                cfgs = [small] + [sp.sample(self.rng, r=r, **ch) for _ in range(ph.subnets)]
                for c in cfgs:
                    net.set_active_subnet(c)
                    kd = s.kd_ratio * soft_ce(self._fwd(net, x), soft)
                    back(beta * kd)
                    total += kd.detach()
            finally:
                drop.p = p_drop
        self._allreduce_grads()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total

    def _sync(self) -> None:
        """Wait for the device's queued work (timing only; the step loop never does this)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_steps(self, phase: int, steps: int) -> list[float]:
        """Wall seconds of ``steps`` training steps of phase ``phase`` (index), one by one,
        on the first batches, the device synchronised around each. Trains them: call it on
        a throwaway trainer."""
        self._phase_start(phase)
        ph, times = self.schedule.phases[phase], []
        for k in range(steps):
            x, y, r = self.batches[k]
            x, y = self._to_device(x, y)
            self._sync()
            t = time.perf_counter()
            self._train_step(ph, x, y, r, 1.0)
            self._sync()
            times.append(time.perf_counter() - t)
        return times

    def estimate_epoch_seconds(self, steps: int = 3) -> float:
        """Wall seconds one epoch of this schedule takes here, from a short probe.

        Times ``steps`` training steps of every phase (after one warm-up step) and weights
        them by the phases' share of the epochs; used to give schedules equal compute
        budgets. Trains the probe steps: call it on a throwaway trainer.
        """
        total = sum(p.epochs for p in self.schedule.phases)
        seconds = 0.0
        for i, ph in enumerate(self.schedule.phases):
            times = self.time_steps(i, steps + 1)
            seconds += ph.epochs / total * self.steps_per_epoch * sum(times[1:]) / steps
        return seconds

    # --- main loop -------------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _log_epoch(self, log: _MetricsLog, phase: str, lr: float, beta: float,
                   epoch_loss: _LossWindow, seen: int, t0: float, bar: tqdm) -> None:
        """One epoch's line in ``metrics.jsonl``: loss, lr, eps-beta, images/s, data wait."""
        log.write({"epoch": self.global_step // self.steps_per_epoch, "phase": phase,
                   "step": self.global_step, "lr": lr, "beta": beta,
                   "loss": epoch_loss.mean(self.global_step, phase, self.out, bar),
                   "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                   "data_wait_s": round(self.data_wait, 3)})

    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or ``max_steps``); returns ``run.json``'s dict."""
        if self._resumed_rng is not None and self.rank == 0:
            torch.set_rng_state(self._resumed_rng)
        cfg, phases, self._clock = self.cfg, self.schedule.phases, time.perf_counter()
        ckpt_every = cfg.ckpt_every or self.steps_per_epoch
        log = _MetricsLog(self.out) if self.rank == 0 else None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "schedule.json", self.schedule.to_dict())
        batches = iter(train_loader(self.batches, self.global_step, sum(self.phase_steps),
                                    cfg.workers, pin_memory=self.device.type == "cuda"))
        while self.phase < len(phases):
            i, ph = self.phase, phases[self.phase]
            if self.phase_step == 0:
                self._phase_start(i)
            elif self.optimizer is None:
                self.optimizer, self.opt_group = self._make_optimizer(), ph.group
            before, total, warm, base = self._group_span(i)
            ramp_lr_end = lr_at(before + self.phase_steps[i], total, warm, base)
            n = self.phase_steps[i]
            bar = tqdm(total=n, initial=self.phase_step, leave=False, mininterval=1.0,
                       desc=f"{i + 1}/{len(phases)} {ph.name}", disable=self.rank != 0)
            t0, seen, epoch_loss, window = time.perf_counter(), 0, _LossWindow(), _LossWindow()
            while self.phase_step < n:
                lr = lr_at(before + self.phase_step, total, warm, base)
                self._set_lr(lr)
                beta = eps_beta(self.phase_step, n, lr, ramp_lr_end) if ph.eps_ramp else 1.0
                t_wait = time.perf_counter()
                x, y, r = next(batches)
                self.data_wait += time.perf_counter() - t_wait  # the step waited for data
                x, y = self._to_device(x, y)
                loss = torch.as_tensor(self._train_step(ph, x, y, r, beta))
                epoch_loss.add(loss)
                window.add(loss)
                seen += x.size(0) * self.world
                self.phase_step += 1
                self.global_step += 1
                bar.update(1)
                epoch_end = self.global_step % self.steps_per_epoch == 0
                save = (self.global_step % ckpt_every == 0 and self.phase_step < n) or (
                    cfg.max_steps is not None and self.global_step >= cfg.max_steps)
                if self.global_step % LOG_EVERY == 0 or epoch_end or save or self.phase_step == n:
                    # the only host synchronisation: every LOG_EVERY steps and before a save
                    mean = window.mean(self.global_step, ph.name, self.out, bar)
                    bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.4f}", r=r)
                if epoch_end and self.rank == 0:
                    assert log is not None
                    self._log_epoch(log, ph.name, lr, beta, epoch_loss, seen, t0, bar)
                    t0, seen, epoch_loss = time.perf_counter(), 0, _LossWindow()
                if save:
                    self._save()
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    bar.close()
                    return {"stopped_at": self.global_step}
            bar.close()
            self.phase, self.phase_step = i + 1, 0
            self._phase_end(ph, log)
            self._save()
        return self._finish()

    def _phase_end(self, ph: Phase, log: _MetricsLog | None) -> None:
        if log is None or not self.cfg.eval_images:
            return
        acc = {}
        for label, c in (("max", self.space.max_subnet()), ("min", self.space.min_subnet())):
            acc[label] = subnet_accuracy(self.net, c, self.data, "test",
                                         self.cfg.recal_images, limit=self.cfg.eval_images)
        log.write({"phase_end": ph.name, "step": self.global_step,
                   "top1_max": acc["max"], "top1_min": acc["min"]})
        tqdm.write(f"phase {ph.name}: top-1 largest {acc['max']:.2f}%  smallest "
                   f"{acc['min']:.2f}%  (test, {self.cfg.eval_images} images)")

    def _finish(self) -> dict[str, Any]:
        if self.world > 1:
            for b in self.net.buffers():
                dist.broadcast(b, 0)
        info = {"config": asdict(self.cfg), "space": self.space.to_dict(),
                "schedule": self.schedule.to_dict(), "dataset": self.data.name,
                "classes": self.data.classes, "normalisation": self.data.normalisation(),
                "global_steps": self.global_step, "train_seconds": round(self._elapsed(), 1),
                "weights": WEIGHTS}
        if self.rank == 0:
            save_weights(self.out / WEIGHTS, self.net.state_dict(),
                         metadata={"space": json.dumps(self.space.to_dict())})
            atomic_write_json(self.out / RUN_JSON, info)
        return info


#: steps between host reads of the loss (progress bar, divergence check)
LOG_EVERY = 20


class _LossWindow:
    """Losses summed on the device and read on the host only when asked (no per-step sync)."""

    def __init__(self) -> None:
        self.total: Tensor | float = 0.0
        self.n = 0

    def add(self, loss: Tensor) -> None:
        self.total = self.total + loss
        self.n += 1

    def mean(self, step: int, phase: str, out: Path, bar: Any = None) -> float:
        """The mean since the last call, which it resets.

        Raises:
            ValueError: a non-finite loss (training diverged; no checkpoint is written after
                it, so the last good one stays).
        """
        m = float(self.total) / max(1, self.n)
        self.total, self.n = 0.0, 0
        if not math.isfinite(m):
            if bar is not None:
                bar.close()
            raise InputError(f"training diverged by step {step} ({phase}, loss {m}); the last "
                             f"good checkpoint in {out} is kept: lower --lr-scale or "
                             "--batch-size and start again")
        return m


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _tensorboard(out: Path):
    """A TensorBoard ``SummaryWriter`` logging to ``out/tensorboard``, or None when the
    tensorboard package is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


class _MetricsLog:
    """``metrics.jsonl`` (one JSON object per line), mirrored to TensorBoard when installed.

    Per-epoch rows become ``train/<key>`` scalars and phase-end rows ``eval/<key>``
    scalars, both at the row's global ``step``.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / "metrics.jsonl"
        self.writer = _tensorboard(out)

    def write(self, row: dict[str, Any]) -> None:
        _append_jsonl(self.path, row)
        if self.writer is None:
            return
        group = "eval" if "phase_end" in row else "train"
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"{group}/{k}", v, row["step"])
        self.writer.flush()


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a run; see :class:`Trainer`."""
    return Trainer(cfg, resume=resume).run()
