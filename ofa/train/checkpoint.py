"""Atomic, resumable checkpoints and the run folder's weight files.

A checkpoint is one ``torch.save`` dict (loadable with ``weights_only=True``) written to a temp
file and renamed over the old one, so a killed run never leaves a half-written checkpoint.
Final weights are also written as ``supernet.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ofa.errors import InputError
from ofa.fileio import atomic_write

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "save_weights", "load_weights"]

FORMAT = "ofa-edge-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save ``state`` (+ format tag) with ``torch.save``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        ValueError: missing, truncated/corrupt, or not an ofa-edge checkpoint (one line).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"checkpoint {path} is truncated or corrupt ({first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not an ofa-edge checkpoint (foreign file)")
    if state.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {state.get('version')} != {VERSION}")
    return state


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically write a state dict as safetensors."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict.

    Raises:
        ValueError: missing or corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(f"{path} is not a readable safetensors file ({exc})") from None
