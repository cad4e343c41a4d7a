"""OFA's published specialised networks (net.config + run.config + init) imported as
fine-tuned networks, at their own resolution, even outside the elastic range."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from test_net_config import _net_config, _published

from ofa.space import get_space, net_config
from ofa.supernet import build_supernet
from ofa.train.finetune import load_finetuned
from ofa.train.import_specialized import import_ofa_specialized

_RULES = [(r"^stem\.0\.", "first_conv.conv."), (r"^stem\.1\.", "first_conv.bn."),
          (r"^blocks\.(\d+)\.(inverted_bottleneck|depth_conv|point_linear)\.0\.",
           r"blocks.\1.mobile_inverted_conv.\2.conv."),
          (r"^blocks\.(\d+)\.(inverted_bottleneck|depth_conv|point_linear)\.1\.",
           r"blocks.\1.mobile_inverted_conv.\2.bn."),
          (r"^blocks\.(\d+)\.se\.(reduce|expand)\.",
           r"blocks.\1.mobile_inverted_conv.depth_conv.se.fc.\2."),
          (r"^final_expand\.0\.", "final_expand_layer.conv."),
          (r"^final_expand\.1\.", "final_expand_layer.bn."),
          (r"^feature_mix\.0\.", "feature_mix_layer.conv."),
          (r"^classifier\.1\.", "classifier.linear.")]


def _published_key(k: str) -> str:
    for pat, rep in _RULES:
        k2 = re.sub(pat, rep, k)
        if k2 != k:
            return k2
    raise AssertionError(f"no rule for {k}")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A random-weight w1.0 network at 236 px (above the elastic range) in the published
    form: net.config with mobile_inverted_conv blocks, run.config, init (a state_dict under
    'state_dict' with .mobile_inverted_conv. keys)."""
    torch.manual_seed(0)
    space = get_space("mbv3-w1.0", num_classes=1000)
    cfg = space.sample(random.Random(5), r=224)
    cfg = type(cfg)(ks=cfg.ks, e=cfg.e, d=cfg.d, r=236)
    sp = space.with_choices(resolutions=(236,))
    net = build_supernet(sp)
    randomize_bn(net, seed=1)
    net.set_active_subnet(cfg)
    static = net.get_active_subnet().eval()
    folder = tmp_path_factory.mktemp("ofa_specialized") / "cpu_lat@17ms_top1@75.7_finetune@25"
    folder.mkdir()
    (folder / "net.config").write_text(json.dumps(_published(_net_config(sp, cfg))))
    (folder / "run.config").write_text(json.dumps({"image_size": 236, "dataset": "imagenet"}))
    sd = {_published_key(k): v for k, v in static.state_dict().items()}
    torch.save({"state_dict": sd}, folder / "init")
    return folder, static, cfg, sd


def test_a_published_network_imports_exactly_at_its_own_resolution(published, tmp_path):
    folder, static, cfg, _ = published
    info = import_ofa_specialized(folder, tmp_path / "net")
    assert info["imported"]["image_size"] == 236 and info["subnet"]["r"] == 236
    model, sub, ft = load_finetuned(tmp_path / "net")
    space = get_space("mbv3-w1.0", num_classes=1000).with_choices(resolutions=(236,))
    assert sub.d == cfg.d and space.macs(sub) == space.macs(cfg)
    x = torch.randn(2, 3, 236, 236)
    with torch.no_grad():
        assert (model(x) - static(x)).abs().max() <= 1e-5
    # the supernet written beside it holds the network as its active subnet
    from ofa.train.run import load_run

    net, _, run = load_run(ft["source_run"])
    assert run["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    net.set_active_subnet(sub)
    with torch.no_grad():
        assert (net.get_active_subnet().eval()(x) - static(x)).abs().max() <= 1e-5


def test_a_236_px_network_exports_to_onnx_and_benchmarks(published, tmp_path):
    from deploy.formats import format_for
    from deploy.ontarget.agent import benchmark
    from deploy.ontarget.runtimes import TimingProtocol

    folder, static, _, _ = published
    import_ofa_specialized(folder, tmp_path / "net")
    model, _, _ = load_finetuned(tmp_path / "net")
    path = format_for("onnxruntime").export(model, (1, 3, 236, 236), tmp_path / "m.onnx")
    res = benchmark(path, protocol=TimingProtocol(warmup=1, runs=2, trials=1))
    assert res["input_shape"] == [1, 3, 236, 236] and res["latency_ms"]["median"] > 0
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 236, 236)).astype(np.float32)
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        assert np.abs(got - static(torch.from_numpy(x)).numpy()).max() <= 1e-4


def test_a_wrong_init_is_a_one_line_error_naming_the_tensor(published, tmp_path):
    folder, _, _, sd = published
    bad = dict(sd)
    gone = "blocks.3.mobile_inverted_conv.point_linear.conv.weight"
    del bad[gone]
    torch.save(bad, folder.parent / "init_missing")
    wrong = folder.parent / "wrong"
    wrong.mkdir()
    for f in ("net.config", "run.config"):
        (wrong / f).write_text((folder / f).read_text())
    torch.save(bad, wrong / "init")
    with pytest.raises(ValueError, match=r"tensor 'blocks\.3\.conv\.point_linear\.conv\."
                       r"weight' is missing") as exc:
        import_ofa_specialized(wrong, tmp_path / "a")
    assert "\n" not in str(exc.value) and not (tmp_path / "a").exists()
    extra = {**sd, "blocks.99.mobile_inverted_conv.depth_conv.conv.weight": torch.zeros(1)}
    torch.save(extra, wrong / "init")
    with pytest.raises(ValueError, match=r"unexpected tensor 'blocks\.99\."):
        import_ofa_specialized(wrong, tmp_path / "b")
    k = "blocks.2.mobile_inverted_conv.inverted_bottleneck.conv.weight"
    torch.save({**sd, k: torch.zeros(4000, 24, 1, 1)}, wrong / "init")
    with pytest.raises(ValueError, match=r"inverted_bottleneck.conv.weight' has shape "
                       r"\(4000, 24, 1, 1\)"):
        import_ofa_specialized(wrong, tmp_path / "c")
    (wrong / "init").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        import_ofa_specialized(wrong, tmp_path / "d")


ROOT = Path(__file__).resolve().parents[1]
MIT = ROOT / ".mit-ofa"


@pytest.mark.parametrize("preset,r,eps", [("mbv3-w1.2", 260, None),
                                          ("proxyless-w1.3", 240, 1e-5)])
def test_mits_own_network_imports_and_exports_with_mits_logits(preset, r, eps, tmp_path):
    """MIT's package builds the network from a published-form net.config (its
    ``build_from_config``), gives it random weights and saves them as OFA publishes them
    (tools/mit_ofa_reference.py, in a separate process); the import and its ONNX export
    reproduce MIT's logits at the network's own resolution, above the elastic range, with
    the BatchNorm epsilon the net.config names (published files carry 1e-5 or 1e-3)."""
    if not (MIT / "ofa" / "imagenet_classification").is_dir():
        pytest.skip(f"MIT's Once-for-All package is not in {MIT} (pip install --no-deps "
                    f"--target .mit-ofa ofa==0.1.0.post202307202001, as .ci/run does)")
    from deploy.formats import format_for

    space = get_space(preset)
    cfg = space.sample(random.Random(7), r=224)
    sp = space.with_choices(resolutions=(r,))
    cfg = type(cfg)(ks=cfg.ks, e=cfg.e, d=cfg.d, r=r)
    folder = tmp_path / f"{preset}_lat@1ms_top1@1.0_finetune@25"
    folder.mkdir()
    nc = _published(net_config(sp, cfg))
    if eps is not None:
        nc["bn"] = {"momentum": 0.1, "eps": eps, "ws_eps": None}
    (folder / "net.config").write_text(json.dumps(nc))
    (folder / "run.config").write_text(json.dumps({"image_size": r}))
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "mit_ofa_reference.py"),
                        "--net-config", str(folder / "net.config"), "--resolution", str(r),
                        "--out", str(folder)], env={**os.environ, "PYTHONPATH": str(MIT)},
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = json.loads((folder / "reference.json").read_text())
    assert ref["class"] == ("ProxylessNASNets" if preset.startswith("proxyless")
                            else "MobileNetV3")
    x, want = torch.load(folder / "inputs.pt")[str(r)], np.array(ref["logits"])
    info = import_ofa_specialized(folder, tmp_path / "net")
    assert info["space"]["preset"] == preset and info["subnet"]["r"] == r
    model, _, _ = load_finetuned(tmp_path / "net")
    with torch.no_grad():
        assert np.abs(model(x).numpy() - want).max() <= 1e-5
    path = format_for("onnxruntime").export(model, (1, 3, r, r), tmp_path / "m.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    for i in range(len(x)):
        got = sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].numpy()})[0]
        assert np.abs(got - want[i:i + 1]).max() <= 1e-5
