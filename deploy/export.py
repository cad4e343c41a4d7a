"""Export static networks to ONNX (and TFLite through litert-torch). Host side (torch).

Which function writes which format is the table in ``deploy/formats.py``.

ONNX: one self-contained file, opset 17, checked with ``onnx.checker``. The TorchScript-based
exporter is used because it turns a small block into a file in tens of milliseconds (the
dynamo exporter takes seconds), which matters when a latency table needs hundreds of them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ofa.errors import InputError
from ofa.fileio import atomic_write

__all__ = ["export_onnx", "export_tflite", "export_onnx_int8", "export_tflite_int8",
           "converter_pool"]

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
            raise InputError(f"exported ONNX graph is invalid: {exc}") from None

    return atomic_write(path, write)


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                  nhwc: bool = False) -> Path:
    """Write a float32 TFLite flatbuffer with litert-torch (no TensorFlow needed).

    ``nhwc=True`` gives the model an NHWC input (what TFLite runtimes prefer).

    Raises:
        RuntimeError: litert-torch is not installed.
    """
    litert_torch = _litert()
    model = model.eval()
    x = torch.zeros(*input_shape)
    if nhwc:
        model = litert_torch.to_channel_last_io(model, args=[0])
        x = x.permute(0, 2, 3, 1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(model, (x,))
    return atomic_write(path, lambda tmp: edge.export(tmp))


def export_onnx_int8(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                     calib: np.ndarray) -> Path:
    """Full-integer ONNX: onnxruntime static quantization (QDQ, int8 per-channel weights,
    int8 activations calibrated with min-max on ``calib`` ``(N, C, H, W)`` float images).

    Raises:
        ValueError: empty calibration set or an invalid graph.
    """
    if len(calib) == 0:
        raise InputError("int8 export needs a non-empty representative set")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i:i + 1].astype(np.float32) for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            fp32, pre = Path(d) / "fp32.onnx", Path(d) / "pre.onnx"
            export_onnx(model, input_shape, fp32)
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), tmp, Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True)

    return atomic_write(path, write)


def export_tflite_int8(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                       calib: np.ndarray, nhwc: bool = False) -> Path:
    """Full-integer TFLite (int8 input, weights, activations and output) via PT2E
    post-training quantization in litert-torch, calibrated on ``calib`` ``(N, C, H, W)``.

    Raises:
        ValueError: empty calibration set.
        RuntimeError: litert-torch is not installed.
    """
    if len(calib) == 0:
        raise InputError("int8 export needs a non-empty representative set")
    litert_torch = _litert()
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = model.eval()
    xs = torch.from_numpy(np.asarray(calib, np.float32))
    if nhwc:
        model = litert_torch.to_channel_last_io(model, args=[0])
        xs = xs.permute(0, 2, 3, 1).contiguous()
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (xs[:1],)).module()
        graph = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for i in range(len(xs)):
                graph(xs[i:i + 1])
        graph = convert_pt2e(graph, fold_quantize=False)
        edge = litert_torch.convert(graph, (xs[:1],),
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return atomic_write(path, lambda tmp: edge.export(tmp))


def _litert():
    # our own progress bars say what is happening; litert-torch's step log would drown them
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import litert_torch
    except ImportError:
        raise RuntimeError("litert-torch is not installed (pip install litert-torch)") from None
    return litert_torch


@contextlib.contextmanager
def converter_pool(jobs: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """A ``map`` that runs conversion tasks (picklable, module-level functions) in ``jobs``
    spawned processes of one thread each (one core per conversion), or here in order when
    ``jobs <= 1``; the processes live as long as the ``with`` block, so their start
    (importing torch and the converter, seconds) is paid once. Callers time nothing while
    the processes convert: they sit idle between ``map`` calls. A litert-torch conversion
    takes ~1 s for a block and ~15-30 s for a whole subnet on this project's 2-core VM."""
    if jobs <= 1:
        yield map
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                               initializer=_converter_init, initargs=(os.getpid(),))
    try:
        yield pool.map
    except BaseException:  # an error or Ctrl-C/SIGTERM: no conversion is waited for
        # (shutdown(wait=True) would finish every submitted one, minutes of LiteRT work);
        # a killed conversion leaves at most its temp file, which the next build removes
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.kill()
        raise
    pool.shutdown(wait=True)


def _converter_init(parent: int) -> None:
    """A converter process: one thread, any core (the parent may be pinned to the core it
    times on, ``bench/drift.py``), ends with its parent (pid ``parent``) and leaves group
    signals to it (:func:`ofa.lifetime.worker_lifetime`)."""
    from ofa.lifetime import worker_lifetime

    worker_lifetime(parent=parent)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
