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

__all__ = ["device_facts"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    model = _read("/proc/device-tree/model")
    return (model or platform.processor() or platform.machine()).strip("\x00")


def device_facts() -> dict[str, Any]:
    """Name, CPU model, cores, OS, arch, governor; temperature and throttling on a Pi."""
    facts: dict[str, Any] = {
        "name": platform.node(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    }
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
