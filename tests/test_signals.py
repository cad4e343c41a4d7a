"""SIGINT and SIGTERM in a long command: exit code 130 / 143, no temporary files anywhere,
the partial output kept and resumed by the same command."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_lut_build_cleans_up_and_resumes(tmp_path, sig, code):
    """Interrupted while converting (a local build converts every model before it times
    any): the converted models stay in `t.json.models/` with no temp file beside them, and
    the re-run converts only the rest, then removes the folder with the table written."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    out = tmp_path / "t.json"
    models = tmp_path / "t.json.models"
    argv = [sys.executable, "-m", "ofa.cli", "lut", "build", "--space", "mbv3-digits",
            "--resolutions", "12", "--runs", "2", "--warmup", "1", "--trials", "1",
            "--calib", "0", "--jobs", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(models.glob("*.onnx"))) >= 5:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
    left = sorted(p.name for p in tmpdir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json.models", "tmpdir"]
    assert not [p for p in left if p != ".ses"], left
    assert not list(models.glob(".*"))  # no temp file of a conversion cut short
    done = len(list(models.glob("*.onnx")))
    assert done >= 5
    clean = tmp_path / "tmpdir-clean"
    clean.mkdir()
    res = subprocess.run(argv, env={**env, "TMPDIR": str(clean)}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    # what the interrupted run left in TMPDIR, a finished run leaves too (onnxruntime's
    # .ses file); nothing of ours
    assert left == sorted(p.name for p in clean.iterdir())
    table = json.loads(out.read_text())
    blocks = len(table["entries"]["12"])
    assert table["build"]["blocks"] == blocks and table["build"]["converted"] == blocks - done
    assert not models.exists()


def test_swallowed_interrupt_is_honoured_at_the_next_atomic_write(tmp_path):
    """A converter that catches Ctrl-C must not publish its output: the write raises
    KeyboardInterrupt, the old file stays and no temp file is left."""
    from ofa.fileio import atomic_write_text, clear_interrupts, note_interrupt

    out = tmp_path / "bundle.json"
    out.write_text("old")
    note_interrupt(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write_text(out, "new")
    finally:
        clear_interrupts()
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["bundle.json"]
    atomic_write_text(out, "new")
    assert out.read_text() == "new"
