"""MIT's published supernets imported by structure (ofa/train/import_mit.py), proven equal to
MIT's own code: its package builds random-weight supernets in a separate process
(tools/mit_ofa_reference.py) and our import must reproduce its logits, its extracted subnets,
its net.config files and its MACs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa.cli import main
from ofa.cli.args import load_subnet
from ofa.space import SubnetConfig, get_space, net_config, subnet_from_net_config
from ofa.train.run import load_run

ROOT = Path(__file__).resolve().parents[1]
MIT = ROOT / ".mit-ofa"
#: w1.2 and ProxylessNAS w1.3 (w1.0 is w1.2's code at another width: the wrong-width case
#: below imports w1.2's checkpoint as w1.0)
SPACES = ("mbv3-w1.2", "proxyless-w1.3")
#: another space of the same input layout, whose net.configs the first must refuse
OTHER = {"mbv3-w1.2": "mbv3-w1.0", "proxyless-w1.3": "mbv3-w1.2"}


@pytest.fixture(scope="module", params=SPACES)
def reference(request, tmp_path_factory):
    if not (MIT / "ofa" / "imagenet_classification").is_dir():
        pytest.skip(f"MIT's Once-for-All package is not in {MIT} (pip install --no-deps "
                    f"--target .mit-ofa ofa==0.1.0.post202307202001, as .ci/run does)")
    out = tmp_path_factory.mktemp(f"mit-{request.param}")
    env = {**os.environ, "PYTHONPATH": str(MIT)}
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "mit_ofa_reference.py"),
                        "--space", request.param, "--out", str(out), "--subnets", "24"],
                       env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    run = out / "run"
    assert main(["import-ofa-supernet", str(out / "state_dict.pt"), "--space",
                 request.param, "--out", str(run)]) == 0
    ref = json.loads((out / "reference.json").read_text())
    return out, run, ref, torch.load(out / "inputs.pt")


def test_imported_supernet_reproduces_mits_logits(reference):
    out, run, ref, xs = reference
    net, _, info = load_run(run)
    assert info["imported"]["kind"] == "mit-once-for-all" and net.space.num_classes == 1000
    assert len(ref["subnets"]) >= 20 and len({s["r"] for s in ref["subnets"]}) >= 3
    worst = 0.0
    for i, s in enumerate(ref["subnets"]):
        cfg = net.space.validate(SubnetConfig(ks=s["ks"], e=s["e"], d=s["d"], r=s["r"]))
        net.set_active_subnet(cfg)
        x, want = xs[str(s["r"])], torch.tensor(s["logits"])
        with torch.no_grad():
            worst = max(worst, float((net(x) - want).abs().max()))
            if i < 4:  # the extracted static network too
                static = net.get_active_subnet().eval()
                assert float((static(x) - want).abs().max()) <= 1e-6
    assert worst <= 1e-6, worst


def test_exported_onnx_matches_mits_logits(reference, tmp_path):
    from deploy.formats import get_format
    from deploy.ontarget.runtimes import get_runtime

    _, run, ref, xs = reference
    net, _, _ = load_run(run)
    for s in ref["subnets"][:2]:
        cfg = net.space.validate(SubnetConfig(ks=s["ks"], e=s["e"], d=s["d"], r=s["r"]))
        net.set_active_subnet(cfg)
        path = get_format("onnx-fp32").export(net.get_active_subnet().eval(),
                                              (1, 3, cfg.r, cfg.r), tmp_path / "m.onnx")
        rt = get_runtime("onnxruntime")
        rt.load(str(path))
        got = rt.logits(xs[str(cfg.r)].numpy())
        assert np.abs(got - np.array(s["logits"])).max() <= 1e-5


def test_net_configs_convert_to_the_same_subnets_and_macs(reference, tmp_path):
    _, run, ref, _ = reference
    space = load_run(run)[0].space
    for s in ref["subnets"]:
        cfg = subnet_from_net_config(space, s["net_config"], s["r"])
        assert list(cfg.d) == s["d"]
        for b in space.active_blocks(cfg):
            assert (cfg.ks[b], cfg.e[b]) == (s["ks"][b], s["e"][b])
        # MIT sums its count in float32: equal to within a few float32 steps (32 at 3e8)
        assert abs(space.macs(cfg) - s["macs"]) <= 4 * np.spacing(np.float32(s["macs"]))
    # as OFA publishes it: net.config with run.config (image_size) beside it
    s = ref["subnets"][0]
    (tmp_path / "net.config").write_text(json.dumps(s["net_config"]))
    (tmp_path / "run.config").write_text(json.dumps({"image_size": s["r"]}))
    assert load_subnet(str(tmp_path / "net.config"), space) == subnet_from_net_config(
        space, s["net_config"], s["r"])
    assert net_config(space, cfg)["name"] == s["net_config"]["name"]
    other = get_space(OTHER[space.preset])
    with pytest.raises(ValueError, match="net.config"):
        subnet_from_net_config(other, s["net_config"], s["r"])


def test_truncated_and_foreign_checkpoints_are_one_line_errors(reference, tmp_path, capsys):
    out, _, ref, _ = reference
    sd = torch.load(out / "state_dict.pt")
    first = next(iter(sd))
    truncated = dict(sd)
    del truncated["blocks.3.conv.point_linear.bn.bn.running_var"]
    torch.save({"state_dict": truncated}, tmp_path / "truncated.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02 not a checkpoint")
    name = ref["space"]
    cases = [("truncated.pth", name, "blocks.3.conv.point_linear.bn.bn.running_var"),
             ("resnet.pth", name, first), ("garbage.pth", name, "not a readable"),
             (str(out / "state_dict.pt"), OTHER[name], OTHER[name])]  # names a tensor
    for ckpt, space, named in cases:
        capsys.readouterr()
        code = main(["import-ofa-supernet", str(tmp_path / ckpt), "--space", space, "--out",
                     str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and named in err[0], err
        assert "not a readable" in err[0] or "tensor '" in err[0], err
        assert not (tmp_path / "run").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_imported_run_works_with_every_command(reference, tmp_path, capsys):
    """eval, predictor build and export read an imported run with an ImageFolder --data tree
    (tiny and random here: the point is the plumbing, not ImageNet accuracy)."""
    from PIL import Image

    _, run, ref, _ = reference
    if ref["space"] != "proxyless-w1.3":
        pytest.skip("one space is enough for the plumbing (the one with the most layout "
                    "differences)")
    rng = np.random.default_rng(0)
    tree = tmp_path / "imagenet"
    for split, n in (("train", 12), ("val", 4)):
        for c in ("n01440764", "n01443537"):
            (tree / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(
                    tree / split / c / f"{i}.JPEG")
    assert main(["eval", "--checkpoint", str(run), "--subnet", "min", "--data", str(tree),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"].startswith("r128 d222221")
    assert main(["predictor", "build", "--checkpoint", str(run), "--data", str(tree),
                 "--samples", "10", "--epochs", "5", "--out",
                 str(tmp_path / "p.safetensors"), "--json"]) == 0
    capsys.readouterr()
    # the search over the space, with the predictor just built, under a MACs budget
    assert main(["search", "--space", ref["space"], "--predictor",
                 str(tmp_path / "p.safetensors"), "--macs", "200e6", "--population", "16",
                 "--generations", "3", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["best"][0]
    space = get_space(ref["space"])
    cfg = space.validate(SubnetConfig.from_dict(best["config"]))
    assert cfg.d[-1] == 1 and space.macs(cfg) <= 200e6
    assert main(["export", "--checkpoint", str(run), "--subnet", "min", "--data", str(tree),
                 "--formats", "onnx-fp32", "--parity-images", "8", "--calib-images", "4",
                 "--out", str(tmp_path / "bundle"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["models"]["onnx-fp32"]["top1_agreement"] == 100.0
    # without --data the imported run says what it needs, in one line
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "imagefolder needs --data" in capsys.readouterr().err
