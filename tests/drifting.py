"""A fake runtime whose speed changes over time, for the latency-truth tests.

:class:`DriftingRuntime` "runs" a model of a fixed amount of work (``work_ms`` at speed 1) by
busy-waiting ``work_ms * factor(now)``, where ``factor`` is a function of the time the
invoke starts: the slow-downs of a throttling board or a shared VM, exactly known.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from deploy.ontarget.runtimes import Runtime


class DriftingRuntime(Runtime):
    """A model of ``work_ms`` (ms at speed 1) slowed by ``factor(t)`` (t: perf_counter s)."""

    name, suffix, backend = "drifting", "", "busy-wait"

    def __init__(self, work_ms: float, factor: Callable[[float], float]) -> None:
        super().__init__(1)
        self.work_ms, self.factor = work_ms, factor

    def version(self) -> str:
        return "0"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 1, 1, 1)

    def set_input(self, x: np.ndarray) -> None:
        pass

    def invoke(self) -> None:
        t = time.perf_counter()
        end = t + self.work_ms * self.factor(t) * 1e-3
        while time.perf_counter() < end:
            pass


def steps(levels: tuple[float, ...], period_s: float) -> Callable[[float], float]:
    """A speed schedule: ``levels`` in turn, each held ``period_s`` seconds."""
    t0 = time.perf_counter()
    return lambda t: levels[int((t - t0) / period_s) % len(levels)]
