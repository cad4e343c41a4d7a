"""Every bad invocation in tests/bad_inputs.py fails at the door: non-zero exit code, one
line on stderr, no traceback, nothing written, every existing file (good outputs too) intact."""

import os

import pytest
import torch
from bad_inputs import CASES, make_inputs, snapshot

from ofa.cli import main


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad-input")
    make_inputs(w)
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_invocation_fails_cleanly(case, work, tiny_run, capsys, monkeypatch):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here, so --device cuda is not bad input")
    monkeypatch.chdir(work)
    argv = [a.replace("{run}", str(tiny_run)).replace("{good}", "good.json")
            for a in case.argv]
    before = snapshot(work, tiny_run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses the arguments
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit 0 for {case.name}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("ofa")
    assert snapshot(work, tiny_run) == before, "files written or changed"
    assert not [p for p in os.listdir(work) if p.startswith(".")], "hidden temp files left"


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    commands = {c.argv[0] for c in CASES}
    assert commands >= {"train", "eval", "lut", "predictor", "search", "export", "bench",
                        "deploy", "run", "space"}


def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys):
    """A ValueError from deep inside a step (numpy's, say) is a bug, not the user's input:
    the traceback is printed, then one line that says so, and the exit code is 70; the
    same command's bad input stays a one-line error with exit code 2."""
    import ofa.cli.space_cmd as space_cmd
    from ofa.cli import BUG_EXIT

    def broken(args):
        import numpy as np

        np.reshape(np.arange(3), (2, 2))  # raises ValueError inside numpy

    monkeypatch.setattr(space_cmd, "run", broken)
    assert main(["space", "mbv3-cifar"]) == BUG_EXIT == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "np.reshape" in err
    assert err.strip().splitlines()[-1].startswith("ofa space: this is a bug in ofa-edge")
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exc:
        main(["space", "no-such-space"])
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err
