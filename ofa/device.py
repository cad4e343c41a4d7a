"""Where and in which dtype the training side computes: torch devices, autocast dtypes.

Training (:mod:`ofa.train.trainer`), fine-tuning, BN recalibration, evaluation and the
accuracy-predictor dataset all take ``device`` (the torch device: ``auto | cpu | cuda |
cuda:N``) and ``autocast`` (the forward pass's dtype: ``auto | fp32 | bf16 | fp16``) by these
names. Weights stay fp32 everywhere; a lower dtype only applies to the forward pass, through
:func:`torch.autocast` (Micikevicius et al., *Mixed Precision Training*, ICLR 2018).

Not to be confused with the deployed side's words: a deployed model's *precision* is its
numeric format (``fp32 | int8``, :mod:`deploy.formats`), and the machine that runs it is the
*target* (``--target``, :mod:`deploy.targets`).
"""

from __future__ import annotations

import contextlib

import torch

from ofa.errors import InputError

__all__ = ["AUTOCASTS", "amp_dtype", "autocast_context", "conv_memory_format", "grad_scaler",
           "resolve_device", "resolve_autocast"]

AUTOCASTS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where no GPU is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA GPU is visible here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    return dev


def resolve_autocast(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; else the name itself.

    fp32 on a CPU because bf16 autocast is slower there even where the CPU has bf16
    instructions: a supernet's fwd+bwd (``mbv3-cifar``, batch 64 at 32 px, channels-last, 2
    threads of an Intel Xeon with AVX512-BF16 and no AMX) took 1.4-2.4x longer in bf16
    (``python bench/supernet_speed.py --channels-last [--autocast bf16]``, 2026-11-27).

    Raises:
        ValueError: an unknown autocast dtype.
    """
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in _DTYPES:
        raise InputError(f"unknown autocast dtype {name!r}; use auto, fp32, bf16 or fp16")
    return name


def amp_dtype(autocast: str, device: torch.device) -> torch.dtype | None:
    """The torch dtype of ``autocast`` on ``device`` (None: fp32, no autocast)."""
    return _DTYPES[resolve_autocast(autocast, device)]


def autocast_context(device: torch.device, autocast: str = "fp32"
                     ) -> contextlib.AbstractContextManager:
    """A :func:`torch.autocast` context for ``autocast`` on ``device``, or a no-op for fp32.

    Raises:
        ValueError: an unknown autocast dtype.
    """
    dtype = amp_dtype(autocast, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, autocast: str) -> torch.amp.GradScaler:
    """A gradient scaler for ``autocast`` on ``device``: active for fp16 (whose small range
    needs loss scaling), a pass-through otherwise; its state belongs in checkpoints."""
    return torch.amp.GradScaler(device.type,
                                enabled=amp_dtype(autocast, device) is torch.float16)


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """The activation and weight layout for training an elastic supernet on ``device``, and
    on CUDA the switch that keeps depthwise convolutions off cuDNN.

    An elastic supernet meets new convolution shapes at almost every step (each sampled
    subnet has its own widths and kernels), and cuDNN 9 builds, for some depthwise engines
    compiles, an execution plan for every new shape (NVIDIA/cudnn-frontend issue 1066:
    ~1.5 s per new depthwise shape). Measured on an H200 (torch 2.11, cuDNN 9, bf16, NHWC,
    ``mbv3-cifar``, batch 512): 16.6 steps/s with the largest subnet alone, 0.13 steps/s once
    sandwich steps sample subnets (``docs/gpu.md``). PyTorch's own depthwise kernel needs no
    plan: where torch has ``torch.backends.cudnn.depthwise_kernel`` it is set to ``native``
    and channels-last stays; on older torch, channels-first keeps bf16/fp32 depthwise
    convolutions off cuDNN (torch uses cuDNN for them only in NHWC or fp16). On the CPU:
    channels-last (depthwise convolutions train 1.5-1.8x faster there in NHWC).

    Returns:
        ``torch.channels_last`` or ``torch.contiguous_format``.
    """
    if device.type != "cuda":
        return torch.channels_last
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "depthwise_kernel"):
        cudnn.depthwise_kernel = "native"
        return torch.channels_last
    return torch.contiguous_format
