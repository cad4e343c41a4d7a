"""Training schedules as data: progressive shrinking (``ps``) and delayed ε-shrinking (``deps``).

A schedule is a YAML file (see ``schedules/*.yaml``) listing phases. Each phase says which
choices are elastic, how many subnets a step trains (``mode``: ``full`` = the largest only,
``random`` = ``subnets`` random subnets [OFA PS], ``sandwich`` = largest + smallest +
``subnets`` random [BigNAS/DεpS]), where distillation comes from (``kd``: ``none``,
``teacher`` = the trained full network, ``inplace`` = the largest subnet's detached logits),
whether channels are sorted at its start, and whether the DεpS ε ramp applies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ofa.errors import InputError
from ofa.space import SearchSpace

__all__ = ["Phase", "Schedule", "load_schedule", "run_settings", "lr_at", "eps_beta"]

SCHEDULE_DIR = Path(__file__).resolve().parent / "schedules"
_CHOICE_WORDS = ("all", "max", "min", "top2")


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: float
    lr: float
    mode: str = "full"
    warmup_epochs: float = 0.0
    lr_group: str = ""
    subnets: int = 1
    ks: Any = "max"
    expand: Any = "max"
    depth: Any = "max"
    kd: str = "none"
    sort_channels: str = "none"
    eps_ramp: bool = False

    def __post_init__(self) -> None:
        where = f"phase {self.name!r}"
        if self.mode not in ("full", "random", "sandwich"):
            raise InputError(f"{where}: mode {self.mode!r} not in full/random/sandwich")
        if self.kd not in ("none", "teacher", "inplace"):
            raise InputError(f"{where}: kd {self.kd!r} not in none/teacher/inplace")
        if self.sort_channels not in ("none", "full", "nested"):
            raise InputError(f"{where}: sort_channels {self.sort_channels!r} not in "
                             "none/full/nested")
        if self.kd == "inplace" and self.mode != "sandwich":
            raise InputError(f"{where}: in-place distillation needs mode: sandwich")
        if not (self.epochs > 0 and self.lr > 0 and self.warmup_epochs >= 0 and self.subnets >= 0):
            raise InputError(f"{where}: epochs and lr must be > 0, warmup_epochs/subnets >= 0")
        for k in ("ks", "expand", "depth"):
            v = getattr(self, k)
            if not (v in _CHOICE_WORDS or isinstance(v, list)):
                raise InputError(f"{where}: {k} must be one of {_CHOICE_WORDS} or a list")

    @property
    def group(self) -> str:
        return self.lr_group or self.name

    def choices(self, space: SearchSpace) -> dict[str, list]:
        """Resolve the choice words against ``space`` -> ``{ks_list, expand_list, depth_list}``."""
        out = {}
        for key, full in (("ks", space.ks_list), ("expand", space.expand_list),
                          ("depth", space.depth_list)):
            v = getattr(self, key)
            full = sorted(full)
            if v == "all":
                sel = full
            elif v == "max":
                sel = full[-1:]
            elif v == "min":
                sel = full[:1]
            elif v == "top2":
                sel = full[-2:]
            else:
                sel = sorted(x for x in full if x in v)
                if not sel:
                    raise InputError(f"phase {self.name!r}: {key} {v} shares nothing with the "
                                     f"space's {full}")
            out[f"{key}_list"] = sel
        return out


@dataclass(frozen=True)
class Schedule:
    name: str
    phases: tuple[Phase, ...]
    lr_batch: int = 2048
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    short_run: dict = field(default_factory=dict)  # {"epochs", "lr_scale"} for minutes-long runs
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "schedule") -> Schedule:
        if not isinstance(data, dict) or "phases" not in data:
            raise InputError(f"{source}: a schedule needs a 'phases' list")
        data = dict(data)
        try:
            phases = tuple(Phase(**p) for p in data.pop("phases"))
        except TypeError as exc:
            raise InputError(f"{source}: bad phase entry ({exc})") from None
        if not phases:
            raise InputError(f"{source}: 'phases' is empty")
        known = {"name", "lr_batch", "momentum", "nesterov", "weight_decay", "label_smoothing",
                 "kd_ratio", "short_run", "extra"}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"{source}: unknown schedule key(s) {sorted(unknown)}")
        short = data["short_run"] = data.get("short_run") or {}
        if not isinstance(short, dict) or set(short) - {"epochs", "lr_scale"} or not all(
                isinstance(v, (int, float)) and v > 0 for v in short.values()):
            raise InputError(f"{source}: short_run must map epochs / lr_scale to positive "
                             f"numbers, got {short!r}")
        if "name" not in data:
            raise InputError(f"{source}: a schedule needs a 'name'")
        return cls(phases=phases, **data)

    def scaled(self, total_epochs: float) -> Schedule:
        """The same schedule with its phases' epochs scaled to sum to ``total_epochs``."""
        if total_epochs <= 0:
            raise InputError(f"--epochs must be positive, got {total_epochs}")
        f = total_epochs / sum(p.epochs for p in self.phases)
        phases = tuple(Phase(**{**asdict(p), "epochs": p.epochs * f,
                                "warmup_epochs": p.warmup_epochs * f}) for p in self.phases)
        return Schedule(**{**asdict(self), "phases": phases})

    def phase_steps(self, steps_per_epoch: int) -> list[int]:
        return [max(1, round(p.epochs * steps_per_epoch)) for p in self.phases]


def load_schedule(name_or_path: str) -> Schedule:
    """``ps``/``deps`` (shipped YAML) or a path to a user's YAML/JSON copy.

    Raises:
        ValueError: unknown name, unreadable or malformed file (names the file).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SCHEDULE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in SCHEDULE_DIR.glob("*.yaml"))
            raise InputError(f"unknown schedule {name_or_path!r}; shipped: {known} "
                             "(or pass a .yaml path)")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"schedule file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return Schedule.from_dict(data, source=str(path))


def run_settings(schedule: str, epochs: float | None = None,
                 lr_scale: float | None = None) -> tuple[float, float]:
    """``(epochs, lr_scale)`` for a run: the values given, else the schedule's ``short_run``
    settings (the minutes-long default run), else 14 epochs at the reference rates.

    Raises:
        ValueError: unknown or malformed schedule (see :func:`load_schedule`).
    """
    if epochs is not None and lr_scale is not None:
        return float(epochs), float(lr_scale)
    short = load_schedule(schedule).short_run
    return (float(epochs if epochs is not None else short.get("epochs", 14.0)),
            float(lr_scale if lr_scale is not None else short.get("lr_scale", 1.0)))


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warmup over ``warmup`` steps then per-iteration cosine decay to 0 (OFA)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, t)))


def eps_beta(ramp_step: int, ramp_steps: int, lr_now: float, lr_end: float) -> float:
    """DεpS gradient scale β during the ε ramp (section 3.2).

    The subnets' effective learning rate ``β * lr_now`` rises linearly per iteration from
    ``lr_end / ramp_steps`` (≈0, the ε) to ``lr_end``, the learning rate at ``T_w``.
    """
    if lr_now <= 0:
        return 0.0
    target = lr_end * (ramp_step + 1) / ramp_steps
    return min(1.0, target / lr_now)
