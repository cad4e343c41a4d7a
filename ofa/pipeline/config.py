"""What ``ofa run`` does (:class:`RunConfig`) and the small facts its steps share."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from ofa.train.run import TrainConfig

__all__ = ["RunConfig", "PredictorSettings", "TableSettings", "SearchSettings", "DeploySettings",
           "RANK_TAU", "default_samples", "log"]


@dataclass
class PredictorSettings:
    """The accuracy predictor of a run: ``samples`` subnets measured on the hold-out split
    (None: :func:`default_samples`), each after BN recalibration on ``recal_images``."""

    samples: int | None = None
    recal_images: int = 500


@dataclass
class TableSettings:
    """The latency table of a run: ``path`` (a given table; None: a shipped one verified
    here, or one built), ``tables_dir`` (where tables of this machine are looked for;
    None: the ``latency_tables`` package), the timing ``protocol`` and the number of
    whole subnets ``calib`` that calibrate (and verify) it."""

    path: str | None = None
    tables_dir: str | None = None
    protocol: dict[str, Any] = field(default_factory=lambda: asdict(TimingProtocol()))
    calib: int = 10


@dataclass
class SearchSettings:
    """The search of a run: latency ``budgets`` (ms; None: 3 spread over the table's
    range) at the device ``speed`` (``nominal`` | ``sustained``,
    ``search.latency_table.SPEEDS``), NSGA-II ``population`` x ``generations``,
    ``shortlist`` subnets per budget measured on the hold-out split (1: the search's best;
    ``docs/cifar10.md`` measured no gain from 8) and ``budget_candidates`` measured on the
    target before choosing (``deploy/budget.py``; 0: unmeasured)."""

    budgets: list[float] | None = None
    speed: str = "nominal"
    population: int = 100
    generations: int = 12
    shortlist: int = 1
    budget_candidates: int = 6


@dataclass
class DeploySettings:
    """Where and how the chosen subnets run: ``runtime`` and ``precision`` (``fp32`` |
    ``int8``) of the deployed models and their table, ``threads``, the ``target``
    (``local`` | ``ssh://...`` | ``adb[:serial]``) with its connection options, the export
    ``formats`` and the ``bench_protocol`` of the final measurement."""

    runtime: str = "onnxruntime"
    precision: str = "fp32"
    threads: int = 1
    target: str = "local"
    target_options: dict[str, Any] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: ["onnx-fp32", "tflite-fp32"])
    bench_protocol: dict[str, int] = field(default_factory=lambda: {"warmup": 3, "runs": 30,
                                                                    "trials": 10})


@dataclass
class RunConfig:
    """What ``ofa run`` does: a run folder ``root/name``, a supernet to reuse (a trained or
    imported run folder: no training) or the training of one (``train``, the
    :class:`ofa.train.run.TrainConfig` of ``ofa train``; its ``out`` is set to the run
    folder's ``supernet/``), and the settings of the predictor, table, search, deployment
    and fine-tuning (``finetune_epochs``; 0: no fine-tuning step; ``finetune_recal_images``:
    the images of each BN recalibration there, None: the supernet run's) steps.
    """

    name: str = "demo"
    root: str = "runs"
    supernet: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    table: TableSettings = field(default_factory=TableSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    finetune_epochs: float = 0.0
    finetune_recal_images: int | None = None

    def __post_init__(self) -> None:
        self.train = dataclasses.replace(self.train, out=str(self.folder / "supernet"))

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name

    @property
    def resolutions(self) -> list[int] | None:
        """The training's ``--resolutions`` override, or None."""
        return self.train.space_overrides.get("resolutions")


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
