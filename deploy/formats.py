"""The one table of export formats: name, file kind, precision, the runtime that runs it.

Every place that turns a runtime into a file format or back reads this table (``ofa export
--formats``, the bundle writer, the latency-table builder, ``ofa deploy``); the device agent
finds a file's runtime by suffix from :data:`deploy.ontarget.runtimes.RUNTIMES`, which agrees
with it (a test checks). Torch-free: the exporters of :mod:`deploy.export` are imported when
a model is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa.errors import InputError

__all__ = ["ExportFormat", "FORMATS", "get_format", "format_for", "parse_formats"]


@dataclass(frozen=True)
class ExportFormat:
    """One deployable model format.

    Attributes:
        name: ``<kind>-<precision>``, e.g. ``tflite-int8``.
        kind: ``onnx`` | ``tflite`` (also the file suffix).
        precision: ``fp32`` | ``int8``.
        runtime: the :mod:`deploy.ontarget.runtimes` runtime that runs the file.
        exporter: the :mod:`deploy.export` function that writes it.
    """

    name: str
    kind: str
    precision: str
    runtime: str
    exporter: str

    @property
    def suffix(self) -> str:
        return f".{self.kind}"

    def export(self, model: Any, input_shape: tuple[int, ...], path: str | Path,
               calib: np.ndarray | None = None, nhwc: bool = False) -> Path:
        """Write ``model`` (a torch ``nn.Module`` in eval mode) for a float NCHW input
        ``input_shape`` to ``path``; int8 formats calibrate on ``calib`` ``(N, C, H, W)``;
        ``nhwc`` gives TFLite models an NHWC input.

        Raises:
            ValueError: an int8 format without calibration images.
        """
        from deploy import export as ex

        fn = getattr(ex, self.exporter)
        kw: dict[str, Any] = {"nhwc": nhwc} if self.kind == "tflite" else {}
        if self.precision == "int8":
            if calib is None or len(calib) == 0:
                raise InputError(f"{self.name} export needs a non-empty representative set")
            return fn(model, input_shape, path, calib, **kw)
        return fn(model, input_shape, path, **kw)


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx-fp32", "onnx", "fp32", "onnxruntime", "export_onnx"),
    ExportFormat("onnx-int8", "onnx", "int8", "onnxruntime", "export_onnx_int8"),
    ExportFormat("tflite-fp32", "tflite", "fp32", "litert", "export_tflite"),
    ExportFormat("tflite-int8", "tflite", "int8", "litert", "export_tflite_int8"),
)}


def get_format(name: str) -> ExportFormat:
    """Raises ``ValueError`` naming the allowed formats."""
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; allowed: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_for(runtime: str, precision: str = "fp32") -> ExportFormat:
    """The format a runtime runs at ``precision`` (``onnxruntime`` -> ``onnx-fp32``).

    Raises:
        ValueError: no format for that runtime and precision.
    """
    for f in FORMATS.values():
        if f.runtime == runtime and f.precision == precision:
            return f
    raise InputError(f"no {precision} model format for runtime {runtime!r}; runtimes: "
                     f"{sorted({f.runtime for f in FORMATS.values()})}")


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """A comma list (or list) of format names -> checked, de-duplicated list, in order.

    Raises:
        ValueError: an unknown name, or no format at all.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n.strip() for n in items if n.strip()))
    if not names:
        raise InputError(f"no export format given; allowed: {', '.join(FORMATS)}")
    for n in names:
        get_format(n)
    return names
