"""Small helpers shared by the benchmark scripts: a timer, a table printer, a JSON writer."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ofa.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(fn: Callable[[], Any], runs: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(width[c]) for c in cols))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _strict(v: Any) -> Any:
    """``v`` with every NaN/inf float replaced by None (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def write_json(name: str, data: Any) -> Path:
    """Write ``data`` to ``bench/results/<name>.json`` atomically, NaN as null."""
    path = atomic_write_text(RESULTS / f"{name}.json",
                             json.dumps(_strict(data), indent=2, allow_nan=False))
    print(f"wrote {path}")
    return path


def run_facts() -> dict[str, Any]:
    """What a measured figure must carry: date (UTC), the commit, the machine (CPU model,
    cores) and the runtime versions."""
    import datetime
    import platform
    import subprocess

    from deploy.ontarget.facts import machine_facts

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    versions = {}
    for pkg in ("onnxruntime", "ai-edge-litert", "torch"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 (a package that is not installed)
            versions[pkg] = None
    facts = machine_facts()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "machine": {"cpu_model": facts.get("cpu_model"),
                                          "cores": facts.get("cores"),
                                          "python": platform.python_version()},
            "versions": versions}


def add_ssh_target_args(ap: Any) -> None:
    """The options that name an SSH device, as ``ofa lut build --target`` takes them
    (``--target``, ``--python``, ``--identity``, ``--known-hosts``), on argparse parser
    ``ap``: what ``python tools/emulated_pi.py start`` prints."""
    ap.add_argument("--target", required=True)
    ap.add_argument("--python", default="python3")
    ap.add_argument("--identity")
    ap.add_argument("--known-hosts")
