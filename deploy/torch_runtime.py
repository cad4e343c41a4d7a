"""Eager PyTorch as a runtime of :mod:`deploy.ontarget.runtimes` (host side only).

Times an ``nn.Module`` in this process through the same interface and timing loop
(:func:`deploy.ontarget.runtimes.time_interleaved`) as the file-based runtimes, for latency
tables of eager torch (``ofa lut build --runtime torch``). Importing this module registers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.ontarget.runtimes import Runtime, register_runtime
from ofa.errors import InputError

__all__ = ["TorchRuntime"]


@register_runtime
class TorchRuntime(Runtime):
    """Eager CPU PyTorch with ``torch.set_num_threads(threads)``; loads modules, not files."""

    name, suffix, backend = "torch", "", "eager CPU"
    files = False

    def version(self) -> str:
        return torch.__version__

    def load(self, path: str) -> None:
        raise InputError("the torch runtime runs modules in this process (load_module), "
                         f"not files such as {path}")

    def load_module(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Run ``model`` (put in eval mode) on float inputs of ``input_shape`` (NCHW)."""
        torch.set_num_threads(self.threads)
        self.model, self._shape = model.eval(), tuple(input_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def input_dtype(self) -> Any:
        return np.float32

    def set_input(self, x: np.ndarray) -> None:
        self._x = torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def invoke(self) -> None:
        with torch.inference_mode():
            self._out = self.model(self._x)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.set_input(x)
        self.invoke()
        return self._out.numpy()
