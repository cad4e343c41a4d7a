import random

import pytest
import torch
from conftest import randomize_bn
from torch.utils.flop_counter import FlopCounterMode

from ofa.bn import recalibrate_bn
from ofa.space import get_space
from ofa.static import MBConv, MobileNetV3
from ofa.supernet import OFAMobileNetV3

PRESETS = ["mbv3-cifar", "mbv3-digits", "mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"]


def _perturbed_supernet(space, seed=0):
    torch.manual_seed(seed)
    net = OFAMobileNetV3(space)
    randomize_bn(net, seed)
    with torch.no_grad():  # make the kernel transforms non-identity, as after training
        for blk in net.blocks:
            for p in blk.depth_conv.transforms.values():
                p.add_(0.05 * torch.randn_like(p))
            if blk.se is not None:
                blk.se.reduce_bias.uniform_(-0.1, 0.1)
                blk.se.expand_bias.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_extracted_subnet_equals_supernet(preset):
    kw = {"num_classes": 10}
    if preset.startswith(("mbv3-w", "proxyless")):
        kw["resolutions"] = [32, 40, 48]  # the network is resolution-agnostic; keeps CI fast
    space = get_space(preset, **kw)
    net = _perturbed_supernet(space)
    g = random.Random(0)
    cfgs = [space.max_subnet(), space.min_subnet()] + [space.sample(g) for _ in range(20)]
    with torch.no_grad():
        for cfg in cfgs:
            net.set_active_subnet(cfg)
            assert net.get_active_subnet_config() == cfg
            x = torch.randn(2, 3, cfg.r, cfg.r)
            sub = net.get_active_subnet().eval()
            assert (net(x) - sub(x)).abs().max().item() <= 1e-5
            # a standalone network of plain layers
            kinds = {type(m) for m in sub.modules()}
            assert not any("Elastic" in k.__name__ for k in kinds)
            assert len([m for m in sub.modules() if isinstance(m, MBConv)]) == 1 + sum(cfg.d)


@pytest.mark.parametrize("preset", ["mbv3-cifar", "mbv3-w1.2", "proxyless-w1.3"])
def test_analytic_macs_match_flop_counter(preset):
    space = get_space(preset, num_classes=10, resolutions=[24, 32])
    net = OFAMobileNetV3(space).eval()
    g = random.Random(3)
    for cfg in [space.max_subnet(), space.min_subnet()] + [space.sample(g) for _ in range(10)]:
        net.set_active_subnet(cfg)
        sub = net.get_active_subnet().eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            sub(torch.zeros(1, 3, cfg.r, cfg.r))
        assert fc.get_total_flops() // 2 == space.macs(cfg)
        assert sum(p.numel() for p in sub.parameters()) == space.params(cfg)


def test_sort_channels_keeps_function():
    space = get_space("mbv3-cifar")
    net = _perturbed_supernet(space, seed=1)
    x = torch.randn(2, 3, 32, 32)
    net.set_max_subnet()
    with torch.no_grad():
        before = net(x)
        w_before = net.blocks[5].project_conv.weight.clone()
        net.sort_channels()
        after = net(x)
    assert (before - after).abs().max().item() < 1e-5
    assert not torch.equal(w_before, net.blocks[5].project_conv.weight)  # it did permute
    imp = net.blocks[5].project_conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(imp[:-1] >= imp[1:])


def test_sort_channels_nested_keeps_prefix_set():
    space = get_space("mbv3-cifar")
    net = _perturbed_supernet(space, seed=2)
    blk = net.blocks[6]
    w4 = blk.mid_width(4)
    prefix = {tuple(r.flatten().tolist()) for r in blk.expand_conv.weight[:w4]}
    x = torch.randn(2, 3, 32, 32)
    net.set_max_subnet()
    with torch.no_grad():
        before = net(x)
        net.sort_channels(nested_ratios=[4])
        after = net(x)
    assert {tuple(r.flatten().tolist()) for r in blk.expand_conv.weight[:w4]} == prefix
    imp = blk.project_conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(imp[: w4 - 1] >= imp[1:w4]) and torch.all(imp[w4:-1] >= imp[w4 + 1:])
    assert (before - after).abs().max().item() < 1e-5


def test_elastic_kernel_transform_identity_init():
    space = get_space("mbv3-cifar")
    net = OFAMobileNetV3(space)
    dw = net.blocks[0].depth_conv
    assert set(dw.transforms.keys()) == {"7to5", "5to3"}
    assert dw.transforms["7to5"].shape == (25, 25) and dw.transforms["5to3"].shape == (9, 9)
    c = 8
    assert torch.equal(dw.get_active_filter(c, 3), dw.weight[:c, :, 2:5, 2:5])
    assert torch.equal(dw.get_active_filter(c, 5), dw.weight[:c, :, 1:6, 1:6])


def test_invalid_subnet_rejected():
    net = OFAMobileNetV3(get_space("mbv3-cifar"))
    with pytest.raises(ValueError, match="r=64"):
        net.set_active_subnet(net.space.max_subnet().__class__(
            net.space.max_subnet().ks, net.space.max_subnet().e, net.space.max_subnet().d, 64))


def test_recalibrate_bn_matches_batch_statistics():
    space = get_space("mbv3-digits")
    net = OFAMobileNetV3(space)
    net.set_active_subnet(space.min_subnet())
    sub: MobileNetV3 = net.get_active_subnet().eval()
    torch.manual_seed(0)
    data = torch.randn(64, 3, 12, 12) * 2 + 1
    loader = [(data[i:i + 16], None) for i in range(0, 64, 16)]
    assert recalibrate_bn(sub, loader, num_images=48) == 48
    assert not sub.training
    stem_bn = sub.stem[1]
    with torch.no_grad():
        y = sub.stem[0](data[:48])
    batch_means = torch.stack([y[i:i + 16].mean((0, 2, 3)) for i in range(0, 48, 16)]).mean(0)
    assert torch.allclose(stem_bn.running_mean, batch_means, atol=1e-5)
    # the supernet's active subnet recalibrates the same way and then matches the subnet
    net.eval()
    recalibrate_bn(net, loader, num_images=48)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert (net(x) - sub(x)).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(sub, [], num_images=10)
