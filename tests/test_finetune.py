"""`ofa finetune`: a chosen subnet trained further with distillation, resumed exactly, then
evaluated and exported from its folder."""

import json

import pytest
import torch

from ofa.cli import main
from ofa.train.checkpoint import load_weights
from ofa.train.finetune import FINETUNE_CKPT, FinetuneConfig, finetune, load_finetuned


def _cfg(tiny_run, out, **kw):
    from ofa.space import get_space

    sub = get_space("mbv3-digits", resolutions=[12, 16]).config(5, 4, 3, 16)
    return FinetuneConfig(run=str(tiny_run), subnet=sub.to_dict(), out=str(out),
                          **{"epochs": 0.3, "batch_size": 32, **kw})


def test_finetune_improves_resumes_exactly_and_exports(tiny_run, tmp_path, capsys):
    straight = finetune(_cfg(tiny_run, tmp_path / "a"))
    assert straight["steps"] == 12 and straight["kd"] is True
    assert straight["top1_after"] > straight["top1_before"]  # a briefly trained supernet
    assert finetune(_cfg(tiny_run, tmp_path / "b", max_steps=5, ckpt_every=5)) == {
        "stopped_at": 5}
    resumed = finetune(_cfg(tiny_run, tmp_path / "b"), resume=True)
    a = load_weights(tmp_path / "a" / "finetuned.safetensors")
    b = load_weights(tmp_path / "b" / "finetuned.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1_after"] == straight["top1_after"]
    model, cfg, info = load_finetuned(tmp_path / "a")
    assert cfg.summary() == info["summary"] and not model.training
    with pytest.raises(ValueError, match="already holds a fine-tune"):
        finetune(_cfg(tiny_run, tmp_path / "a"))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(straight["top1_after"])
    assert main(["export", "--checkpoint", str(tmp_path / "a"), "--formats", "onnx-fp32",
                 "--out", str(tmp_path / "bundle"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["config"] == info["subnet"]
    assert rep["supernet_top1"] == pytest.approx(straight["top1_after"], abs=0.5)
    assert rep["models"]["onnx-fp32"]["top1_agreement"] == 100.0


def test_finetune_without_kd_and_cli(tiny_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["finetune", "--checkpoint", str(tiny_run), "--subnet", "min", "--epochs",
                 "0.2", "--no-kd", "--out", str(tmp_path / "f")]) == 0
    info = json.loads((tmp_path / "f" / "finetune.json").read_text())
    assert info["kd"] is False and info["summary"].startswith("r12 d22222")
    assert "->" in capsys.readouterr().out
    # the from-scratch baseline: same subnet, fresh weights (chance level before training)
    assert main(["finetune", "--checkpoint", str(tiny_run), "--subnet", "min", "--epochs",
                 "0.2", "--no-kd", "--scratch", "--lr", "1.0", "--out",
                 str(tmp_path / "s")]) == 0
    scratch = json.loads((tmp_path / "s" / "finetune.json").read_text())
    assert scratch["config"]["scratch"] is True and scratch["top1_before"] < 30.0
    assert scratch["top1_before"] < info["top1_before"]
    a = load_weights(tmp_path / "f" / "finetuned.safetensors")
    b = load_weights(tmp_path / "s" / "finetuned.safetensors")
    first = next(iter(a))  # the stem convolution: trained from other starting weights
    assert not torch.equal(a[first], b[first])


def test_finetune_fp16_keeps_its_loss_scale_across_a_resume(tiny_run, tmp_path):
    """fp16 autocast with a gradient scaler on the CPU: the scaler's state is checkpointed and
    restored, so an interrupted fp16 fine-tune resumes to the same weights."""
    # fp16 autocast is slow on a CPU: 4 steps, interrupted after 2
    straight = finetune(_cfg(tiny_run, tmp_path / "a", autocast="fp16", epochs=0.1))
    assert straight["steps"] == 4
    assert finetune(_cfg(tiny_run, tmp_path / "b", autocast="fp16", epochs=0.1, max_steps=2,
                         ckpt_every=2)) == {"stopped_at": 2}
    st = torch.load(tmp_path / "b" / FINETUNE_CKPT, weights_only=False)
    assert st["scaler"]["scale"] == 65536.0 and st["scaler"]["_growth_tracker"] == 2
    resumed = finetune(_cfg(tiny_run, tmp_path / "b", autocast="fp16", epochs=0.1),
                       resume=True)
    a = load_weights(tmp_path / "a" / "finetuned.safetensors")
    b = load_weights(tmp_path / "b" / "finetuned.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1_after"] == straight["top1_after"]
