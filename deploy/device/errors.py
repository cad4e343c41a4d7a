"""The device side's error for bad input (a missing or corrupt model or data file, a
malformed request), told apart from a bug as :class:`ofa.errors.InputError` is on the host;
kept here because the device package imports nothing of the host. Torch-free."""

from __future__ import annotations

__all__ = ["DeviceInputError"]


class DeviceInputError(ValueError):
    """Bad input on the device side, reported in one line."""
