"""Run the whole bad-input table (tests/bad_inputs.py) as real ``ofa`` processes.

For every case: exit code, stderr lines, traceback or not, and whether any file under the
working folder or the run folder was written or changed (hidden temp files included).
Prints the counts by category and writes bench/results/bad_input.json.
Target: 0 tracebacks, 0 silent wrong results (exit 0), 0 files left.

    python bench/bad_input.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from _common import print_table, write_json  # noqa: E402
from bad_inputs import CASES, make_inputs, snapshot  # noqa: E402


def _tiny_run(folder: Path) -> Path:
    from ofa.train.run import TrainConfig
    from ofa.train.trainer import train

    out = folder / "tiny"
    train(TrainConfig(out=str(out), space="mbv3-digits",
                      space_overrides={"resolutions": [12, 16]}, epochs=0.4, batch_size=32,
                      eval_images=0, recal_images=64, seed=0, device="cpu"))
    return out


def _classify(proc: subprocess.CompletedProcess, changed: bool) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if "Traceback" in proc.stderr:
        return "traceback"
    if proc.returncode == 0:
        return "silent_exit_0"
    if changed:
        return "files_left"
    return "clean_one_line" if len(lines) == 1 else "multi_line_error"


def main() -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = _tiny_run(tmp / "runs")
        work = tmp / "work"
        work.mkdir()
        make_inputs(work)
        results = []
        for case in CASES:
            if case.needs_no_gpu and torch.cuda.is_available():
                continue
            argv = [a.replace("{run}", str(run)).replace("{good}", "good.json")
                    for a in case.argv]
            before = snapshot(work, run)
            proc = subprocess.run([sys.executable, "-m", "ofa.cli", *argv], cwd=work,
                                  capture_output=True, text=True, timeout=600)
            verdict = _classify(proc, snapshot(work, run) != before)
            results.append({"category": case.category, "argv": " ".join(case.argv),
                            "exit": proc.returncode, "verdict": verdict,
                            "stderr": proc.stderr.strip().splitlines()[-1:]})
            if verdict != "clean_one_line":
                print(f"{verdict}: ofa {' '.join(argv)}\n  {proc.stderr.strip()[-300:]}")
    verdicts = ("clean_one_line", "traceback", "silent_exit_0", "files_left", "multi_line_error")
    rows = []
    for cat in dict.fromkeys(r["category"] for r in results):
        mine = [r for r in results if r["category"] == cat]
        rows.append({"category": cat, "probes": len(mine),
                     **{v: sum(r["verdict"] == v for r in mine) for v in verdicts}})
    rows.append({"category": "all", "probes": len(results),
                 **{v: sum(r["verdict"] == v for r in results) for v in verdicts}})
    print_table(rows)
    write_json("bad_input", {"rows": rows, "cases": results})


if __name__ == "__main__":
    main()
