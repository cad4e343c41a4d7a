"""What ``ofa run`` does (:class:`RunConfig`) and the small facts its steps share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol

__all__ = ["RunConfig", "RANK_TAU", "default_samples", "log"]


@dataclass
class RunConfig:
    """What ``ofa run`` does; every field has a CLI flag of the same name."""

    name: str = "demo"
    root: str = "runs"
    supernet: str | None = None  # a trained (or imported) run folder to reuse: no training
    dataset: str = "digits"
    data: str | None = None
    space: str = "mbv3-digits"
    resolutions: list[int] | None = None
    schedule: str = "deps"
    epochs: float | None = None  # None: the schedule's short_run epochs (deps 14, ps 24)
    batch_size: int = 64
    lr_scale: float | None = None  # None: the schedule's short_run lr_scale (deps 1, ps 3)
    seed: int = 0
    samples: int | None = None  # subnets measured for the accuracy predictor (None:
    # default_samples(dataset))
    predictor_recal_images: int = 500  # BN-recalibration images per predictor sample
    runtime: str = "onnxruntime"
    precision: str = "fp32"  # deployed models and their latency table: fp32 | int8
    threads: int = 1
    target: str = "local"
    target_options: dict[str, Any] = field(default_factory=dict)
    budgets: list[float] | None = None  # ms; None = 3 spread over the table's range
    table: str | None = None  # explicit table; default: shipped match or build one
    tables_dir: str | None = None  # where tables of this machine are looked for (None:
    # the tables shipped in the latency_tables package)
    lut_protocol: dict[str, int] = field(default_factory=lambda: asdict(TimingProtocol()))
    lut_calib: int = 10
    formats: list[str] = field(default_factory=lambda: ["onnx-fp32", "tflite-fp32"])
    population: int = 100
    generations: int = 12
    bench_protocol: dict[str, int] = field(default_factory=lambda: {"warmup": 3, "runs": 30,
                                                                    "trials": 10})
    device: str = "auto"
    autocast: str = "auto"  # training's forward-pass dtype: auto (bf16 on CUDA, fp32 on CPU) | ...
    workers: int = 0  # data-loading processes (training, predictor-dataset evaluation)
    finetune_epochs: float = 0.0  # fine-tune every chosen subnet this long (0: no step)
    shortlist: int = 1  # subnets per budget measured on the hold-out split before choosing
    # (1: the search's best, unmeasured; docs/cifar10.md measured no gain from 8)
    speed: str = "nominal"  # the device speed budgets mean: nominal | sustained (the slow
    # end of the probe's range; search.latency_table.SPEEDS)
    budget_candidates: int = 6  # subnets per budget measured on the target before choosing
    # (deploy/budget.py); 0: the search's choice, unmeasured

    def __post_init__(self) -> None:
        from ofa.train.schedule import run_settings

        self.epochs, self.lr_scale = run_settings(self.schedule, self.epochs, self.lr_scale)

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name


#: below this held-out Kendall tau an accuracy predictor cannot rank subnets
RANK_TAU = 0.5


def log(msg: str) -> None:
    """One progress line of ``ofa run`` on stdout."""
    print(f"[ofa run] {msg}", flush=True)


def default_samples(dataset: str) -> int:
    """Subnets measured for the accuracy predictor when ``--samples`` is not given: 300, where
    on CIFAR-10 the held-out Kendall tau reached 0.76 (0.57 at 100; ``docs/cifar10.md``); 100 on
    the embedded digits, where every subnet scores 97-99% and more samples do not rank them."""
    return 100 if dataset == "digits" else 300
