"""OFA's net.config in both of MIT's forms: the published specialised networks'
(``MobileInvertedResidualBlock`` / ``mobile_inverted_conv`` / ``MBInvertedConvLayer``) and
the current one (``ResidualBlock`` / ``conv`` / ``MBConvLayer``)."""

import copy
import json
import random

import pytest

from ofa.cli.args import load_subnet
from ofa.space import get_space, net_config, space_for_net_config, subnet_from_net_config


def _net_config(space, cfg) -> dict:
    """A net.config of ``cfg`` in MIT's current form (ofa.space.net_config)."""
    return net_config(space, cfg)


def _published(nc: dict) -> dict:
    """The same net.config in the form of OFA's published specialised networks."""
    out = copy.deepcopy(nc)
    for b in out["blocks"]:
        b["name"] = "MobileInvertedResidualBlock"
        b["mobile_inverted_conv"] = b.pop("conv")
        b["mobile_inverted_conv"]["name"] = "MBInvertedConvLayer"
    return out


@pytest.mark.parametrize("preset", ["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"])
def test_both_net_config_forms_convert_to_the_same_subnet(preset):
    space = get_space(preset)
    g = random.Random(0)
    for _ in range(10):
        cfg = space.sample(g, r=g.choice(space.resolutions))
        nc = _net_config(space, cfg)
        assert space_for_net_config(nc).name == preset
        assert space_for_net_config(_published(nc)).name == preset
        a = subnet_from_net_config(space, nc, cfg.r)
        b = subnet_from_net_config(space, _published(nc), cfg.r)
        assert a == b and a.d == cfg.d and space.macs(a) == space.macs(cfg)


def test_a_published_net_config_loads_wherever_a_subnet_does(tmp_path):
    space = get_space("mbv3-w1.0")
    cfg = space.sample(random.Random(3), r=192)
    (tmp_path / "net.config").write_text(json.dumps(_published(_net_config(space, cfg))))
    (tmp_path / "run.config").write_text(json.dumps({"image_size": 192}))
    assert space.macs(load_subnet(str(tmp_path / "net.config"), space)) == space.macs(cfg)


def test_a_wrong_net_config_is_a_one_line_error():
    space = get_space("mbv3-w1.0")
    cfg = space.max_subnet(224)
    nc = _published(_net_config(space, cfg))
    truncated = copy.deepcopy(nc)
    truncated["blocks"] = truncated["blocks"][:5]
    with pytest.raises(ValueError, match="stage 2 has 0 blocks") as exc:
        subnet_from_net_config(space, truncated, 224)
    assert "\n" not in str(exc.value)
    resnet = copy.deepcopy(nc)
    resnet["blocks"][3]["mobile_inverted_conv"]["name"] = "ResNetBottleneckBlock"
    with pytest.raises(ValueError, match="block 3: layer 'ResNetBottleneckBlock' is not an "
                       "inverted residual"):
        subnet_from_net_config(space, resnet, 224)
    wide = copy.deepcopy(nc)
    wide["first_conv"]["out_channels"] = 32  # MobileNetV2's stem
    wide["final_expand_layer"]["out_channels"] = 1280
    with pytest.raises(ValueError, match=r"match no space of ofa-edge; it has .*mbv3-w1.0 "
                       r"\(16, 960, 1280\).*proxyless-w1.3 \(40, None, 1664\)"):
        space_for_net_config(wide)
    proxyless = get_space("proxyless-w1.3")
    px = _net_config(proxyless, proxyless.max_subnet(224))
    with pytest.raises(ValueError, match="it is a network of space proxyless-w1.3"):
        subnet_from_net_config(space, px, 224)
    w12 = _net_config(get_space("mbv3-w1.2"), get_space("mbv3-w1.2").max_subnet(224))
    with pytest.raises(ValueError, match="it is a network of space mbv3-w1.2"):
        subnet_from_net_config(space, w12, 224)
