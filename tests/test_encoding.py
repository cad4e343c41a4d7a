"""Property tests (hypothesis) of the one subnet encoding and the space's layout walk."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ofa.space import SubnetConfig, get_space, preset_names
from search.encoding import ArchEncoder

SPACES = {name: get_space(name) for name in preset_names()}


@st.composite
def subnets(draw, space_name=st.sampled_from(sorted(SPACES))):
    space = SPACES[draw(space_name)]
    nb, ns = space.num_blocks, space.num_stages
    cfg = SubnetConfig(ks=draw(st.lists(st.sampled_from(space.ks_list), min_size=nb,
                                        max_size=nb)),
                       e=draw(st.lists(st.sampled_from(space.expand_list), min_size=nb,
                                       max_size=nb)),
                       d=[draw(st.sampled_from(space.stage_depths(i))) for i in range(ns)],
                       r=draw(st.sampled_from(space.resolutions)))
    return space, cfg


@settings(max_examples=200, deadline=None)
@given(subnets())
def test_decode_encode_and_genes_round_trip(sc):
    space, cfg = sc
    enc = ArchEncoder(space)
    assert enc.decode(enc.encode([cfg]), 0) == cfg
    assert enc.from_params(enc.to_params(cfg)) == cfg
    assert list(enc.to_params(cfg)) == enc.genes


@settings(max_examples=200, deadline=None)
@given(subnets())
def test_features_and_mask_follow_the_depths(sc):
    space, cfg = sc
    enc = ArchEncoder(space)
    e = enc.encode([cfg])
    active = list(space.active_blocks(cfg))
    assert np.nonzero(space.active_mask(e["d"])[0])[0].tolist() == active
    f = enc.onehot(e)[0]
    assert f.shape == (enc.feature_dim(),) and f.sum() == 2 * len(active) + 1
    # the layout walk: stem + first block + one shape per active block + the head groups
    # (4 for MobileNetV3, 3 for ProxylessNAS: no post-pool conv)
    head = 4 if space.feature_mix_width else 3
    assert len(space.block_shapes(cfg)) == 2 + len(active) + head
    assert space.macs(cfg) == sum(s.macs(space.divisor) for s in space.block_shapes(cfg))


@settings(max_examples=100, deadline=None)
@given(subnets(), st.data())
def test_genes_of_inactive_blocks_do_not_change_the_network(sc, data):
    space, cfg = sc
    enc = ArchEncoder(space)
    inactive = [b for b in range(space.num_blocks) if b not in set(space.active_blocks(cfg))]
    ks = list(cfg.ks)
    for b in inactive:
        ks[b] = data.draw(st.sampled_from(space.ks_list))
    other = SubnetConfig(ks=ks, e=cfg.e, d=cfg.d, r=cfg.r)
    rows = enc.network_rows(enc.encode([cfg, other]))
    assert (rows[0] == rows[1]).all()
    assert space.block_shapes(cfg) == space.block_shapes(other)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(SPACES)), st.integers(0, 2**32 - 1), st.integers(1, 300),
       st.booleans())
def test_every_sampled_subnet_validates(name, seed, n, cycle):
    space = SPACES[name]
    enc = ArchEncoder(space)
    batch = enc.sample_stratified(n, np.random.default_rng(seed), cycle_resolutions=cycle)
    assert all(len(v) == n for v in batch.values())
    for cfg in enc.decode_all(batch):
        space.validate(cfg)
    cfgs = enc.stratified_configs(n, seed)
    assert len(cfgs) == n and cfgs == enc.stratified_configs(n, seed)
    for cfg in cfgs:
        space.validate(cfg)
