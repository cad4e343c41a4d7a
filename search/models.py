"""The interfaces the search scores subnets through (``typing.Protocol``, structural).

Any object with these methods can stand in: the search never asks which class it holds.
Implementations: :class:`search.accuracy.AccuracyPredictor` and
:class:`search.accuracy.OFAAccuracyPredictor` (accuracy), :class:`search.latency.LatencyPredictor`
(latency from a lookup table). Batches are :data:`search.encoding.Encoded` arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ofa.space import SearchSpace, SubnetConfig
from search.encoding import Encoded

__all__ = ["AccuracyModel", "LatencyModel", "OBJECTIVES"]

#: what a Pareto front trades accuracy against (``ofa search --objective``)
OBJECTIVES = ("latency_ms", "macs", "params")


@runtime_checkable
class AccuracyModel(Protocol):
    """Predicted top-1 (%) of subnets of ``space``."""

    space: SearchSpace

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """Top-1 (%) ``(N,)`` of an encoded batch."""
        ...

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """Top-1 (%) ``(N,)`` of configs."""
        ...


@runtime_checkable
class LatencyModel(Protocol):
    """Predicted latency (ms) of subnets of ``space`` on one device context."""

    space: SearchSpace

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """Latency (ms) ``(N,)`` of an encoded batch."""
        ...

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """Latency (ms) ``(N,)`` of configs."""
        ...

    def describe(self) -> str:
        """The measurement context in words (device, runtime, threads, precision)."""
        ...
