"""Facts about the machine a measurement runs on (CPU model, cores, OS, governor, Pi sensors).

Torch-free and dependency-free: runs on a Raspberry Pi as it is.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["machine_facts"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# Arm's part numbers (/proc/cpuinfo "CPU part" where "CPU implementer" is 0x41): the cores of
# Raspberry Pi boards and common phones, so that an aarch64 device names its core.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77",
             "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
             "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715",
             "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2"}


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
        if key in ("cpu implementer", "cpu part") and ":" in line:
            fields.setdefault(key, line.split(":", 1)[1].strip().lower())
    if fields.get("cpu implementer") == "0x41" and fields.get("cpu part") in ARM_PARTS:
        return f"ARM {ARM_PARTS[fields['cpu part']]}"
    model = _read("/proc/device-tree/model")
    return (model or platform.processor() or platform.machine()).strip("\x00")


def emulated() -> str | None:
    """Why this machine's timings are not a real board's, or None: QEMU's ``virt`` board
    (``-M virt``, the emulated Raspberry Pi of ``tools/emulated_pi.py``: its times are
    those of an emulation, hundreds of times slower than the core it imitates)."""
    compat = _read("/proc/device-tree/compatible") or ""
    if "linux,dummy-virt" in compat:
        return "QEMU virt board (emulated)"
    return None


def machine_facts() -> dict[str, Any]:
    """Name, CPU model, cores, OS, arch, governor; temperature and throttling on a Pi;
    ``emulated`` (a reason) under QEMU's virt board, whose timings mean nothing as a device's
    speed."""
    facts: dict[str, Any] = {
        "name": platform.node(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    }
    why = emulated()
    if why:
        facts["emulated"] = why
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    if temp and temp.lstrip("-").isdigit():
        facts["temperature_c"] = int(temp) / 1000.0
    model = _read("/proc/device-tree/model")
    if model:
        facts["board"] = model.strip("\x00")
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            facts["throttled"] = out.split("=")[-1] if out else None
        except (OSError, subprocess.SubprocessError):
            facts["throttled"] = None
    return facts
