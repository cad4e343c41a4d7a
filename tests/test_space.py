import json
import random

import pytest

from ofa.space import SubnetConfig, get_space, make_divisible, preset_names


def test_make_divisible_reference_widths():
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    assert [make_divisible(b * 1.0) for b in base] == base
    assert [make_divisible(b * 1.2) for b in base] == [24, 24, 32, 48, 96, 136, 192, 1152, 1536]


def test_presets_exist():
    assert {"mbv3-w1.0", "mbv3-w1.2", "mbv3-cifar", "mbv3-digits"} <= set(preset_names())


def test_exact_subnet_count():
    sp = get_space("mbv3-w1.0")
    assert sp.num_subnets() == 7371**5 == 21758655492572485851
    assert sp.num_subnets(per_resolution=False) == 7371**5 * 25
    assert get_space("mbv3-w1.0", ks_list=[3, 5]).num_subnets() == (36 + 216 + 1296) ** 5


@pytest.mark.parametrize(
    "r,label,macs,params",
    [(224, "max", 566.2e6, 7.67e6), (224, "min", 121.3e6, 3.41e6),
     (128, "max", 188.3e6, None), (128, "min", 41.5e6, None)],
)
def test_ofa_published_macs(r, label, macs, params):
    sp = get_space("mbv3-w1.0", num_classes=1000)
    cfg = sp.max_subnet(r) if label == "max" else sp.min_subnet(r)
    assert abs(sp.macs(cfg) - macs) / macs < 0.005
    if params:
        assert abs(sp.params(cfg) - params) / params < 0.005


def test_proxyless_space_is_ofas_third_supernet():
    """``ofa_proxyless_d234_e346_k357_w1.3``: stem 40, six stages (the last one block of
    fixed depth), ReLU6, no SE, a 1664-wide pre-pool head, no post-pool conv."""
    sp = get_space("proxyless-w1.3")
    assert (sp.stem_width, sp.first_width, sp.final_expand_width, sp.feature_mix_width) == \
        (40, 24, 1664, 0)
    assert [st.width for st in sp.stages] == [32, 56, 104, 128, 248, 416]
    assert [st.stride for st in sp.stages] == [2, 2, 2, 1, 2, 1]
    assert sp.num_blocks == 21 and sp.num_stages == 6 and sp.stage_depths(5) == (1,)
    assert {b.act for b in sp.blocks} == {"relu6"} and not any(b.se for b in sp.blocks)
    assert sp.num_subnets() == 7371**5 * 9
    cfg = sp.min_subnet(224)
    assert cfg.d == (2, 2, 2, 2, 2, 1) and cfg.summary().endswith("-3 e33-33-33-33-33-3")
    with pytest.raises(ValueError, match=r"d\[5\]=2 is not allowed; allowed values: \[1\]"):
        sp.validate(SubnetConfig(ks=cfg.ks, e=cfg.e, d=(2,) * 6, r=224))
    assert [b.kind for b in sp.block_shapes(cfg)][-3:] == ["final_expand", "pool", "classifier"]


def test_cifar_space_layout():
    sp = get_space("mbv3-cifar")
    assert sp.stem_stride == 1 and [s.stride for s in sp.stages] == [1, 2, 2, 1, 2]
    assert sp.resolutions == (24, 28, 32) and sp.num_classes == 10
    # DεpS figure: largest ~180 M MACs, smallest (d2 e3 k7) ~45 M MACs at 32x32
    assert abs(sp.macs(sp.max_subnet(32)) / 1e6 - 180) < 5
    assert abs(sp.macs(sp.config(7, 3, 2, 32)) / 1e6 - 45) < 5


def test_config_validation_names_field():
    sp = get_space("mbv3-cifar")
    good = sp.max_subnet()
    with pytest.raises(ValueError, match=r"ks\[3\]=4 .*\[3, 5, 7\]"):
        sp.validate(SubnetConfig(good.ks[:3] + (4,) + good.ks[4:], good.e, good.d, good.r))
    with pytest.raises(ValueError, match=r"r=30 .*\[24, 28, 32\]"):
        sp.validate(SubnetConfig(good.ks, good.e, good.d, 30))
    with pytest.raises(ValueError, match=r"d\[0\]=5"):
        sp.config(7, 6, [5, 2, 2, 2, 2], 32)
    with pytest.raises(ValueError, match="ks has 19 entries"):
        SubnetConfig(good.ks[:19], good.e, good.d, good.r)
    with pytest.raises(ValueError, match="needs 20"):
        sp.validate(SubnetConfig(good.ks[:16], good.e[:16], good.d[:4], good.r))
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("mbv3-w9")
    with pytest.raises(ValueError, match="ks_list entry 9"):
        get_space("mbv3-cifar", ks_list=[3, 9])


def test_config_json_roundtrip_and_hash():
    sp = get_space("mbv3-w1.2")
    g = random.Random(1)
    cfgs = [sp.sample(g) for _ in range(10)]
    for c in cfgs:
        back = SubnetConfig.from_json(c.to_json())
        assert back == c and hash(back) == hash(c)
        sp.validate(back)
    assert len(set(cfgs + cfgs)) == 10
    # OFA's own dicts store r as a one-element list
    d = cfgs[0].to_dict()
    d["r"] = [d["r"]]
    assert SubnetConfig.from_dict(d) == cfgs[0]
    with pytest.raises(ValueError, match="missing field"):
        SubnetConfig.from_dict({"ks": [3]})
    with pytest.raises(ValueError, match="not valid JSON"):
        SubnetConfig.from_json("{oops")


def test_restricted_choices_and_sampling():
    sp = get_space("mbv3-cifar", ks_list=[3, 5], expand_list=[4, 6], depth_list=[3, 4])
    g = random.Random(0)
    for _ in range(50):
        c = sp.sample(g)
        assert set(c.ks) <= {3, 5} and set(c.e) <= {4, 6} and set(c.d) <= {3, 4}
    assert sp.max_subnet().ks == (5,) * 20 and sp.min_subnet().d == (3,) * 5


def test_space_dict_roundtrip():
    sp = get_space("mbv3-cifar", num_classes=7, ks_list=[3, 5])
    from ofa.space import SearchSpace

    assert SearchSpace.from_dict(json.loads(json.dumps(sp.to_dict()))) == sp
    drop = get_space("mbv3-w1.0", dropout=0.3)
    assert SearchSpace.from_dict(json.loads(json.dumps(drop.to_dict()))).dropout == 0.3
    with pytest.raises(ValueError, match="preset"):
        SearchSpace.from_dict({"ks_list": [3]})
    with pytest.raises(ValueError):
        SearchSpace.from_dict({"preset": "mbv3-cifar", "ks_list": [[3]]})


def test_block_specs_are_the_layout():
    sp = get_space("mbv3-cifar")
    assert [b.in_ch for b in sp.blocks[:5]] == [16, 24, 24, 24, 24]
    assert [(b.stage, b.position, b.stride, b.shortcut) for b in sp.blocks[4:8]] == [
        (1, 0, 2, False), (1, 1, 1, True), (1, 2, 1, True), (1, 3, 1, True)]
    assert sp.block_in_sizes(32)[:5] == (32, 32, 32, 32, 32) and sp.block_in_sizes(32)[-1] == 4
    mask = sp.active_mask([[2, 3, 4, 2, 3]])
    assert mask.shape == (1, 20) and mask.sum() == 14
    assert mask[0].nonzero()[0].tolist() == list(sp.active_blocks(sp.config(3, 3, [2, 3, 4, 2, 3])))
