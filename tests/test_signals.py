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


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry reaches ``pid`` (read from /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_build_leaves_no_converter_behind(tmp_path, sig):
    """SIGKILL (a scheduler's time limit, the OOM killer) or SIGTERM during the conversions
    of a 2-process build (signalled while its 20 calibration subnets convert): within 10 s
    no process it started is left; SIGTERM ends it with 143 and kills the conversions in
    flight instead of waiting for them (a LiteRT subnet takes 15-30 s)."""
    out = tmp_path / "t.json"
    proc = subprocess.Popen([sys.executable, "-m", "ofa.cli", "lut", "build", "--space",
                             "mbv3-digits", "--resolutions", "12,16", "--calib", "20",
                             "--jobs", "2", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    kids: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        kids = _descendants(proc.pid)
        if len(kids) >= 2 and list((tmp_path / "t.json.models" / "calibration").glob(
                "*.onnx")):
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(kids) >= 2, "no converter pool seen"
    proc.send_signal(sig)
    t = time.time()
    code = proc.wait(timeout=60)
    assert code == (143 if sig == signal.SIGTERM else -9)
    assert time.time() - t < 10, "the build waited for its submitted conversions"
    while _alive(kids) and time.time() - t < 10:
        time.sleep(0.2)
    assert not _alive(kids), f"left running: {_alive(kids)}"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_ends_training_in_one_line(tmp_path, sig, code):
    """`timeout`, a terminal's Ctrl-C and many schedulers signal the whole process group:
    the data-loading workers must not die first and turn the clean exit into a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "ofa.cli", "train", "--space",
                             "mbv3-digits", "--resolutions", "12,16", "--epochs", "2",
                             "--batch-size", "32", "--workers", "2", "--out",
                             str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(_descendants(proc.pid)) >= 2:  # the workers are up
            break
        time.sleep(0.2)
    time.sleep(3.0)  # training steps under way
    assert proc.poll() is None, "training ended before it could be interrupted"
    kids = _descendants(proc.pid)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    # one line after the progress bars (which share lines through carriage returns)
    assert "Traceback" not in err and "Error" not in err, err[-2000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert err.count("ofa: interrupted") == 1 and "ofa: interrupted" in last
    t = time.time()
    while _alive(kids) and time.time() - t < 10:
        time.sleep(0.2)
    assert not _alive(kids)


_PEER_GONE = """
import os, socket, sys, time
from multiprocessing import resource_sharer
from ofa.lifetime import worker_lifetime
worker_lifetime()
r, w = os.pipe()
address = resource_sharer.DupFd(r)._id[0]  # starts the fd-sharing thread of this process
s = socket.socket(socket.AF_UNIX)
s.connect(address)
s.close()  # a parent that dies before it takes the batch's file descriptor
time.sleep(1.0)
sys.excepthook(ValueError, ValueError("not a peer's error"), None)
"""


def test_a_worker_whose_parent_went_prints_no_traceback():
    """The group-signal race that `test_a_signal_to_the_process_group_ends_training_in_one_line`
    meets now and then, made certain: a DataLoader worker serves a batch's file descriptor
    through multiprocessing's fd-sharing thread, the parent dies mid-handshake; the worker
    prints no traceback for the broken connection, and still prints any other error."""
    res = subprocess.run([sys.executable, "-c", _PEER_GONE], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "EOFError" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == ["ValueError: not a peer's error"]
