"""The target side's error for bad input (a missing or corrupt model or data file, a
malformed request), told apart from a bug as :class:`ofa.errors.InputError` is on the host;
kept here because the target package imports nothing of the host. Torch-free."""

from __future__ import annotations

__all__ = ["TargetInputError"]


class TargetInputError(ValueError):
    """Bad input on the target side, reported in one line."""
