"""This machine as a target: the device agent in a fresh interpreter. Torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from deploy.targets.base import (
    PKG,
    OneBatchAtATime,
    agent_args,
    agent_json,
    batch_rows,
)

__all__ = ["LocalTarget"]

_ONE_INVOKE = TimingProtocol(warmup=0, runs=1, trials=1)  # an accuracy run's timing: unused


class LocalTarget(OneBatchAtATime):
    """This machine; the agent runs in a fresh interpreter (``python``, default: this one)."""

    name = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def check(self) -> None:
        """This machine is always there."""

    def bench(self, model: str | Path, threads: int = 1, protocol: TimingProtocol | None = None,
              data: str | Path | None = None) -> dict[str, Any]:
        protocol = protocol or TimingProtocol()
        # absolute paths: the agent runs beside the deploy package, not in the caller's cwd
        res = self._agent(agent_args([str(Path(model).resolve())], threads, protocol,
                                      str(Path(data).resolve()) if data else None))
        res["target"] = "local"
        return res

    def bench_many(self, models: list[Path], threads: int = 1,
                   protocol: TimingProtocol | None = None) -> list[dict[str, Any]]:
        """Every model in one agent run (interleaved trials)."""
        protocol = protocol or TimingProtocol()
        args = agent_args([str(Path(m).resolve()) for m in models], threads, protocol, None)
        return batch_rows(self._agent(args), models, "local")

    def top1(self, models: list[Path], data: list[Path], threads: int = 1
             ) -> list[dict[str, Any] | None]:
        """One agent run per model (its one timed invoke is not used)."""
        rows = []
        for m, d in zip(models, data, strict=True):
            acc = self.bench(m, threads, _ONE_INVOKE, data=d)["accuracy"]
            rows.append({"model": Path(m).name, **acc})
        return rows

    def start(self, runtime: str) -> None:
        """Nothing to start: each batch runs in a fresh interpreter here."""

    def _agent(self, args: list[str]) -> dict[str, Any]:
        """Run the agent beside the deploy package with ``args``; its JSON answer."""
        proc = subprocess.run([self.python, "-m", "deploy.ontarget.agent", *args],
                              capture_output=True, text=True, cwd=PKG.parent)
        return agent_json(proc, "local")
