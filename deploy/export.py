"""Export static networks to ONNX (and TFLite through litert-torch). Host side (torch).

ONNX: one self-contained file, opset 17, checked with ``onnx.checker``. The TorchScript-based
exporter is used because it turns a small block into a file in tens of milliseconds (the
dynamo exporter takes seconds), which matters when a latency table needs hundreds of them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ofa.fileio import atomic_write

__all__ = ["export_onnx", "export_tflite", "export_model", "EXPORTERS"]

OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Write ``model`` (eval mode) for a float input ``input_shape`` (NCHW) to ``path``.

    Raises:
        ValueError: the exported graph fails ``onnx.checker``.
    """
    import onnx

    model = model.eval()
    x = torch.zeros(*input_shape)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"])
        try:
            onnx.checker.check_model(onnx.load(tmp))
        except onnx.checker.ValidationError as exc:
            raise ValueError(f"exported ONNX graph is invalid: {exc}") from None

    return atomic_write(path, write)


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                  nhwc: bool = False) -> Path:
    """Write a float32 TFLite flatbuffer with litert-torch (no TensorFlow needed).

    ``nhwc=True`` gives the model an NHWC input (what TFLite runtimes prefer).

    Raises:
        RuntimeError: litert-torch is not installed.
    """
    try:
        import litert_torch
    except ImportError:
        raise RuntimeError("litert-torch is not installed (pip install litert-torch)") from None
    model = model.eval()
    x = torch.zeros(*input_shape)
    if nhwc:
        model = litert_torch.to_channel_last_io(model, args=[0])
        x = x.permute(0, 2, 3, 1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(model, (x,))
    return atomic_write(path, lambda tmp: edge.export(tmp))


EXPORTERS = {"onnxruntime": export_onnx, "litert": export_tflite}


def export_model(runtime: str, model: nn.Module, input_shape: tuple[int, ...],
                 path: str | Path) -> Path:
    """Export for the runtime that will run it (``onnxruntime`` -> .onnx, ``litert`` -> .tflite).

    Raises:
        ValueError: unknown runtime.
    """
    if runtime not in EXPORTERS:
        raise ValueError(f"no exporter for runtime {runtime!r}; allowed: {sorted(EXPORTERS)}")
    return EXPORTERS[runtime](model, input_shape, path)
