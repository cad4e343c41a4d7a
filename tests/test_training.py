import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ofa.cli import main
from ofa.train.checkpoint import load_checkpoint
from ofa.train.run import TrainConfig, load_run
from ofa.train.schedule import eps_beta, load_schedule, lr_at, run_settings
from ofa.train.trainer import Trainer

# A tiny schedule that exercises every mode: full net, PS-style random subnets with a teacher
# and channel sorting, and the DεpS ε ramp + sandwich with in-place distillation.
TINY = {
    "name": "tiny", "lr_batch": 32,
    "phases": [
        {"name": "full", "epochs": 1, "lr": 0.05, "mode": "full"},
        {"name": "expand", "epochs": 1, "lr": 0.05, "mode": "random", "subnets": 2,
         "ks": "all", "expand": "top2", "depth": "all", "kd": "teacher", "sort_channels": "full"},
        {"name": "ramp", "epochs": 1, "lr": 0.05, "mode": "sandwich", "subnets": 1,
         "ks": "all", "expand": "all", "depth": "all", "kd": "inplace", "eps_ramp": True,
         "sort_channels": "nested"},
    ],
}


@pytest.fixture()
def tiny_schedule(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return str(p)


def _cfg(out, schedule, **kw):
    base = dict(out=str(out), space="mbv3-digits", space_overrides={"resolutions": [12, 16]},
                schedule=schedule, epochs=0.3, batch_size=32, eval_images=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_weights(a: dict, b: dict) -> None:
    """Two state dicts hold the same tensor names and bit-identical values."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_shipped_schedules_follow_reference():
    ps = load_schedule("ps")
    assert [p.name for p in ps.phases] == ["full", "elastic_kernel", "elastic_depth_1",
                                           "elastic_depth_2", "elastic_expand_1",
                                           "elastic_expand_2"]
    assert [p.lr for p in ps.phases] == [2.6, 0.96, 0.08, 0.24, 0.08, 0.24]
    assert [p.subnets for p in ps.phases[1:]] == [1, 2, 2, 4, 4]
    assert sum(p.epochs for p in ps.phases) == 605
    scaled = ps.scaled(40)
    assert abs(sum(p.epochs for p in scaled.phases) - 40) < 1e-9
    assert abs(scaled.phases[0].epochs - 40 * 180 / 605) < 1e-9
    deps = load_schedule("deps")
    assert [p.mode for p in deps.phases] == ["full", "sandwich", "sandwich"]
    assert deps.phases[1].eps_ramp and deps.phases[1].sort_channels == "full"
    assert {p.group for p in deps.phases} == {"main"}


def test_schedule_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        load_schedule("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases: [{name: a, epochs: 1, lr: 0.1, mode: zigzag}]")
    with pytest.raises(ValueError, match="mode 'zigzag'"):
        load_schedule(str(bad))
    bad.write_text("phases: [oops")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_schedule(str(bad))
    phases = "phases: [{name: a, epochs: 1, lr: 0.1, mode: full}]"
    bad.write_text("name: x\nshort_run: {epochs: -2}\n" + phases)
    with pytest.raises(ValueError, match="bad.yaml: short_run must map"):
        load_schedule(str(bad))
    bad.write_text(phases)
    with pytest.raises(ValueError, match="bad.yaml: a schedule needs a 'name'"):
        load_schedule(str(bad))
    bad.write_text("name: x\nshort_run:\n" + phases)  # empty: the reference rates, 14 epochs
    assert run_settings(str(bad)) == (14.0, 1.0)


def test_short_run_settings_come_from_the_schedule(tmp_path, tiny_schedule):
    # the minutes-long default run: deps at reference rates, ps with 3x rates over 24 epochs
    assert run_settings("deps") == (14.0, 1.0)
    assert run_settings("ps") == (24.0, 3.0)
    assert run_settings("ps", epochs=40) == (40.0, 3.0)
    assert run_settings("ps", lr_scale=1) == (24.0, 1.0)
    assert run_settings(tiny_schedule) == (14.0, 1.0)  # no short_run: reference rates
    cfg = TrainConfig(out=str(tmp_path / "r"), schedule="ps")
    assert (cfg.epochs, cfg.lr_scale) == (24.0, 3.0)
    from ofa.pipeline import RunConfig

    ps = RunConfig(train=TrainConfig(schedule="ps")).train
    assert (ps.epochs, ps.lr_scale) == (24.0, 3.0)
    six = RunConfig(name="x", train=TrainConfig(epochs=6)).train
    assert (six.epochs, six.lr_scale, six.out) == (6.0, 1.0, str(Path("runs") / "x" / "supernet"))


def test_lr_and_eps_ramp_values():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)
    # effective subnet lr beta * lr rises linearly from lr_end/n to lr_end
    lr_now = [1.0, 0.98, 0.96, 0.94]
    eff = [eps_beta(i, 4, lr_now[i], 0.92) * lr_now[i] for i in range(4)]
    assert eff == pytest.approx([0.23, 0.46, 0.69, 0.92])
    assert eps_beta(0, 1000, 1.0, 1.0) == pytest.approx(0.001)  # the epsilon


def test_phase_transitions_and_resume_equivalence(tmp_path, tiny_schedule):
    straight = Trainer(_cfg(tmp_path / "a", tiny_schedule))
    assert straight.phase_steps == [4, 4, 4]
    straight.run()
    assert straight.phase == 3 and straight.global_step == 12
    assert (tmp_path / "a" / "teacher.safetensors").exists()  # PS teacher snapshot

    # kill mid-phase (step 6: inside the PS phase), then resume
    r1 = Trainer(_cfg(tmp_path / "b", tiny_schedule, max_steps=6)).run()
    assert r1 == {"stopped_at": 6}
    st = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (st["phase"], st["phase_step"], st["global_step"]) == (1, 2, 6)
    resumed = Trainer(_cfg(tmp_path / "b", tiny_schedule), resume=True)
    assert (resumed.phase, resumed.phase_step) == (1, 2)
    assert resumed.train_seconds == st["train_seconds"] > 0  # wall time carries over
    info = resumed.run()
    assert info["train_seconds"] >= round(st["train_seconds"], 1)
    _assert_same_weights(straight.net.state_dict(), resumed.net.state_dict())


def test_sigkill_mid_epoch_then_resume_matches_straight_run(tmp_path, tiny_schedule):
    """`ofa train` killed with SIGKILL between checkpoints loses only the steps since the last
    checkpoint: `--resume` ends with the straight run's weights, bit for bit."""
    from ofa.train.checkpoint import load_weights

    def cmd(out, *extra):
        return [sys.executable, "-m", "ofa.cli", "train", "--space", "mbv3-digits",
                "--resolutions", "12,16", "--schedule", tiny_schedule, "--epochs", "0.75",
                "--batch-size", "32", "--seed", "3", "--ckpt-every", "5", "--eval-images", "0",
                "--device", "cpu", "--out", str(out), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the straight run beside the one killed (one thread each: the results do not depend
    # on what else runs)
    straight = subprocess.Popen(cmd(tmp_path / "a"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc = subprocess.Popen(cmd(tmp_path / "b"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        ck = tmp_path / "b" / "checkpoint.pt"
        while not ck.exists() and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "b" / "run.json").exists()  # killed before the end
        killed_at = load_checkpoint(ck)["global_step"]
        resumed = subprocess.run(cmd(tmp_path / "b", "--resume"), capture_output=True,
                                 text=True, env=env)
        _, err = straight.communicate()
    finally:
        if straight.poll() is None:
            straight.kill()
            straight.wait()
    assert straight.returncode == 0, err[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    total = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["global_step"]
    assert killed_at % 5 == 0 and 0 < killed_at < total
    assert f"global step {killed_at})" in resumed.stdout
    _assert_same_weights(load_weights(tmp_path / "a" / "supernet.safetensors"),
                         load_weights(tmp_path / "b" / "supernet.safetensors"))


def test_refuses_to_overwrite_and_mismatched_resume(tmp_path, tiny_schedule):
    Trainer(_cfg(tmp_path, tiny_schedule, max_steps=1)).run()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(_cfg(tmp_path, tiny_schedule))
    with pytest.raises(ValueError, match="schedule/epochs differ"):
        Trainer(_cfg(tmp_path, tiny_schedule, epochs=0.5), resume=True)


def test_truncated_and_foreign_checkpoints(tmp_path, tiny_schedule):
    Trainer(_cfg(tmp_path, tiny_schedule, max_steps=1)).run()
    ck = tmp_path / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(ck)
    torch.save({"hello": torch.zeros(1)}, ck)
    with pytest.raises(ValueError, match="not an ofa-edge checkpoint"):
        load_checkpoint(ck)
    p = subprocess.run([sys.executable, "-m", "ofa.cli", "eval", "--checkpoint", str(ck)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_load_run_from_unfinished_checkpoint(tmp_path, tiny_schedule):
    Trainer(_cfg(tmp_path, tiny_schedule, max_steps=2)).run()
    net, cfg, _ = load_run(tmp_path)
    assert cfg.schedule == tiny_schedule and net.space.name == "mbv3-digits"


def test_ddp_two_ranks_equal_weights(tmp_path, tiny_schedule):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29533", str(Path(__file__).parent / "_ddp_worker.py"),
         str(tmp_path), tiny_schedule],
        capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    _assert_same_weights(torch.load(tmp_path / "rank0.pt", weights_only=True),
                         torch.load(tmp_path / "rank1.pt", weights_only=True))
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "run.json").exists()


def test_metrics_mirrored_to_tensorboard(tmp_path, monkeypatch):
    import json

    import ofa.train.trainer as trainer_mod

    full_only = tmp_path / "full.yaml"  # one epoch row and one phase-end row, cheaply
    full_only.write_text(yaml.safe_dump({**TINY, "phases": TINY["phases"][:1]}))

    class Recorder:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            pass

    rec = Recorder()
    monkeypatch.setattr(trainer_mod, "_tensorboard", lambda out: rec)
    Trainer(_cfg(tmp_path, str(full_only), epochs=1.0, eval_images=40, recal_images=64)).run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("phase_end" in r for r in rows) and any("epoch" in r for r in rows)
    expected = [(("eval/" if "phase_end" in r else "train/") + k, v, r["step"])
                for r in rows for k, v in r.items()
                if k != "step" and isinstance(v, (int, float))]
    assert rec.scalars == expected


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_schedule,
                                                                   monkeypatch):
    cfg = _cfg(tmp_path / "r", tiny_schedule, ckpt_every=2)
    t = Trainer(cfg)
    real = Trainer._train_step
    calls = []

    def step(self, *a):
        calls.append(1)
        return float("nan") if len(calls) == 6 else real(self, *a)

    monkeypatch.setattr(Trainer, "_train_step", step)
    with pytest.raises(ValueError, match="training diverged by step 6 .* last good checkpoint"):
        t.run()
    st = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert st["global_step"] == 4  # the checkpoint before the NaN step, not after it
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    assert not (tmp_path / "r" / "run.json").exists()


def test_batches_are_the_same_with_any_number_of_workers():
    from ofa.data import StepBatches, load_dataset, train_loader

    data = load_dataset("digits", seed=0)
    b = StepBatches(data, 16, [12, 16, 20], seed=3, steps_per_epoch=20)
    zero = list(train_loader(b, 17, 24, workers=0))
    two = list(train_loader(b, 17, 24, workers=2))
    assert [r for _, _, r in zero] == [r for _, _, r in two] == [b.resolution(s)
                                                                  for s in range(17, 24)]
    assert len({r for _, _, r in zero}) > 1
    for (x0, y0, _), (x2, y2, _) in zip(zero, two):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert torch.equal(b[18][0], zero[1][0])  # a step is a step, wherever it is read


def test_resume_with_workers_is_exact(tmp_path, tiny_schedule):
    straight = Trainer(_cfg(tmp_path / "a", tiny_schedule, workers=2))
    straight.run()
    assert Trainer(_cfg(tmp_path / "b", tiny_schedule, workers=2, max_steps=7)).run() == {
        "stopped_at": 7}
    resumed = Trainer(_cfg(tmp_path / "b", tiny_schedule, workers=2), resume=True)
    resumed.run()
    _assert_same_weights(straight.net.state_dict(), resumed.net.state_dict())


def test_bf16_and_fp16_steps_on_cpu(tmp_path, tiny_schedule):
    t = Trainer(_cfg(tmp_path / "bf", tiny_schedule, autocast="bf16", max_steps=2))
    assert t.amp_dtype is torch.bfloat16 and t.run() == {"stopped_at": 2}
    st = load_checkpoint(tmp_path / "bf" / "checkpoint.pt")
    assert all(v.dtype == torch.float32 for v in st["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    # fp16: the gradient scaler's state is checkpointed and restored
    t = Trainer(_cfg(tmp_path / "fp", tiny_schedule, autocast="fp16", max_steps=2))
    assert t.scaler.is_enabled() and t.run() == {"stopped_at": 2}
    saved = load_checkpoint(tmp_path / "fp" / "checkpoint.pt")["scaler"]
    assert saved["scale"] > 0
    resumed = Trainer(_cfg(tmp_path / "fp", tiny_schedule, autocast="fp16"), resume=True)
    assert resumed.scaler.get_scale() == saved["scale"]
    assert resumed.scaler.state_dict()["_growth_tracker"] == saved["_growth_tracker"]


def test_corrupt_jpeg_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from ofa.cli import main

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tree" / "train" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "tree" / "train" / c / f"{i}.jpg")
    for i in range(12):  # every image of class b, so the first batch meets one
        (tmp_path / "tree" / "train" / "b" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code = main(["train", "--dataset", "imagefolder", "--data", str(tmp_path / "tree"),
                 "--space", "mbv3-digits", "--epochs", "1", "--batch-size", "8", "--workers",
                 "2", "--eval-images", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(tmp_path / "tree" / "train" / "b") in err[0] and "cannot decode" in err[0], err


def test_bf16_evaluation_and_predictor_dataset(tiny_run, tmp_path, capsys):
    """`ofa eval --autocast bf16` lands within a few points of fp32 on the same subnet, and an
    accuracy dataset measured at bf16 says so in its header: an fp32 build refuses its cache."""
    from search.acc_dataset import build_accuracy_dataset, read_dataset

    top1 = {}
    for prec, workers in (("fp32", "0"), ("bf16", "0"), ("fp32", "2")):
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(tiny_run), "--subnet", "max", "--device",
                     "cpu", "--autocast", prec, "--workers", workers, "--json"]) == 0
        top1[prec, workers] = json.loads(capsys.readouterr().out)["top1"]
    assert 10.0 < top1["fp32", "0"] <= 100.0
    assert abs(top1["bf16", "0"] - top1["fp32", "0"]) <= 3.0
    assert top1["fp32", "2"] == top1["fp32", "0"]  # images decoded by 2 worker processes
    out = tmp_path / "acc.jsonl"
    _, rows = build_accuracy_dataset(tiny_run, out, 4, autocast="bf16", progress=False)
    assert len(rows) == 4 and all(0.0 <= r["acc"] <= 100.0 for r in rows)
    assert json.loads(out.read_text().splitlines()[0])["autocast"] == "bf16"
    assert len(read_dataset(out)) == 4
    with pytest.raises(ValueError, match="cached for another autocast"):
        build_accuracy_dataset(tiny_run, out, 4, autocast="fp32", progress=False)


def test_measured_subnets_are_cached_by_config(tiny_run, tmp_path):
    """`measure_subnets` measures each distinct subnet once, answers a repeat from its cache
    (the same numbers, no new line) and matches what `build_accuracy_dataset` measures; a
    subnet of another space is refused before anything is measured."""
    from ofa.space import get_space
    from search.acc_dataset import build_accuracy_dataset, choose_measured, measure_subnets

    out, ds = tmp_path / "m.jsonl", tmp_path / "acc.jsonl"
    _, rows = build_accuracy_dataset(tiny_run, ds, 3, progress=False)
    cfgs = [r["config"] for r in rows]
    first = measure_subnets(tiny_run, out, [cfgs[0], cfgs[1], cfgs[0]], progress=False)
    assert first == [rows[0]["acc"], rows[1]["acc"], rows[0]["acc"]]
    lines = out.read_text().splitlines()
    assert len(lines) == 3  # header + 2 distinct subnets
    again = measure_subnets(tiny_run, out, [cfgs[1], cfgs[2]], progress=False)
    assert again == [rows[1]["acc"], rows[2]["acc"]]
    assert out.read_text().splitlines()[:3] == lines and len(out.read_text().splitlines()) == 4
    picks = choose_measured(tiny_run, [[{"config": c, "acc": 0.0} for c in cfgs]], out,
                            progress=False)
    best = max(range(3), key=lambda j: rows[j]["acc"])
    assert picks[0]["shortlist_pick"] == best and picks[0]["config"] == cfgs[best]
    other = get_space("mbv3-cifar").max_subnet().to_dict()
    with pytest.raises(ValueError):
        measure_subnets(tiny_run, out, [other], progress=False)
    assert len(out.read_text().splitlines()) == 4


def test_conv_layout_keeps_depthwise_off_cudnn_on_cuda(monkeypatch):
    """CPU: channels-last. CUDA: the native depthwise kernel where torch has the switch
    (channels-last stays), else channels-first, where torch does not pick cuDNN for bf16/fp32
    depthwise convolutions (docs/gpu.md: cuDNN built a plan per new shape, 7.6 s steps)."""
    import types

    from ofa.device import conv_memory_format

    assert conv_memory_format(torch.device("cpu")) is torch.channels_last
    cudnn = torch.backends.cudnn
    old = cudnn.depthwise_kernel
    try:
        assert conv_memory_format(torch.device("cuda")) is torch.channels_last
        assert cudnn.depthwise_kernel == "native"
    finally:
        cudnn.depthwise_kernel = old
    monkeypatch.setattr(torch.backends, "cudnn", types.SimpleNamespace(enabled=True))
    assert conv_memory_format(torch.device("cuda")) is torch.contiguous_format


def test_epoch_time_probe(tmp_path, tiny_schedule):
    """The probe times single steps of every phase (what bench/train_compare.py and
    bench/gpu_train.py size their runs by) and scales them to an epoch."""
    t = Trainer(_cfg(tmp_path / "p", tiny_schedule))
    times = t.time_steps(0, 3)
    assert len(times) == 3 and all(0.0 < s < 60.0 for s in times)
    sec = Trainer(_cfg(tmp_path / "q", tiny_schedule)).estimate_epoch_seconds(steps=2)
    assert sec > t.steps_per_epoch * min(times) / 10
