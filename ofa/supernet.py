"""The elastic OFA supernet, MobileNetV3 or ProxylessNAS (Cai et al., *Once-for-All*, ICLR 2020).

Method names follow the reference implementation (``set_active_subnet``,
``sample_active_subnet``, ``get_active_subnet``, ``get_active_subnet_config``) since OFA's users
already know them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ofa.elastic import ElasticMBConv
from ofa.space import SearchSpace, SubnetConfig, get_space
from ofa.static import (
    MBConv,
    MobileNetV3,
    classifier_layer,
    feature_mix_layer,
    final_expand_layer,
    stem_layer,
)

__all__ = ["OFAMobileNetV3", "build_supernet"]


class OFAMobileNetV3(nn.Module):
    """Elastic supernet over a :class:`SearchSpace` (MobileNetV3 or ProxylessNAS layout).

    ``forward``: ``(N, 3, R, R)`` -> ``(N, num_classes)`` logits of the active subnet, for any
    input resolution ``R`` (the config's ``r`` tells data loaders which one to feed).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        sp = space
        self.stem = stem_layer(sp.in_channels, sp.stem_width, sp.stem_stride, sp.stem_act)
        self.first_block = MBConv(sp.stem_width, sp.stem_width, sp.first_width, 3,
                                  sp.first_stride, False, sp.first_act,
                                  shortcut=sp.first_stride == 1 and sp.stem_width == sp.first_width,
                                  expand=False)
        self.blocks = nn.ModuleList(
            ElasticMBConv(b.in_ch, b.out_ch, sp.ks_list, sp.expand_list, b.stride, b.se, b.act,
                          shortcut=b.shortcut, divisor=sp.divisor) for b in sp.blocks)
        self.final_expand = final_expand_layer(sp.stages[-1].width, sp.final_expand_width,
                                               sp.head_act)
        self.feature_mix = feature_mix_layer(sp.final_expand_width, sp.feature_mix_width,
                                             sp.head_act)
        self.classifier = classifier_layer(sp.feature_mix_width or sp.final_expand_width,
                                           sp.num_classes, sp.dropout)
        self._init_weights()
        self.active_depth = [max(sp.stage_depths(s)) for s in range(sp.num_stages)]
        self.active_r = max(sp.resolutions)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.eps = self.space.bn_eps
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # --- forward ---------------------------------------------------------------------------
    def active_block_indices(self) -> list[int]:
        """Elastic blocks the active depths keep (:meth:`SearchSpace.active_blocks`)."""
        return [b.index for b in self.space.blocks if b.position < self.active_depth[b.stage]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.first_block(self.stem(x))
        for b in self.active_block_indices():
            x = self.blocks[b](x)
        x = self.final_expand(x)
        x = x.mean((2, 3), keepdim=True)
        x = self.feature_mix(x)
        return self.classifier(x.flatten(1))

    # --- elastic control -------------------------------------------------------------------
    def set_active_subnet(self, cfg: SubnetConfig) -> None:
        """Activate ``cfg`` (validated against the space).

        Raises:
            ValueError: ``cfg`` is not a member of the space.
        """
        self.space.validate(cfg)
        for b, blk in enumerate(self.blocks):
            blk.set_active(cfg.ks[b], cfg.e[b])
        self.active_depth = list(cfg.d)
        self.active_r = cfg.r

    def set_max_subnet(self) -> None:
        self.set_active_subnet(self.space.max_subnet())

    def set_min_subnet(self) -> None:
        self.set_active_subnet(self.space.min_subnet())

    def sample_active_subnet(self, generator: random.Random | None = None,
                             **restrict: Sequence) -> SubnetConfig:
        """Sample a subnet uniformly (optionally from restricted choice lists), activate it
        and return its config."""
        cfg = self.space.sample(generator, **restrict)
        self.set_active_subnet(cfg)
        return cfg

    def get_active_subnet_config(self) -> SubnetConfig:
        return SubnetConfig(ks=[b.active_ks for b in self.blocks],
                            e=[b.active_e for b in self.blocks],
                            d=list(self.active_depth), r=self.active_r)

    @torch.no_grad()
    def get_active_subnet(self, preserve_weight: bool = True) -> MobileNetV3:
        """A standalone static network of the active subnet (plain conv/BN/linear layers with
        copied, sliced and kernel-transformed weights). In eval mode its outputs equal the
        supernet's outputs with that subnet active.
        """
        blocks: list[nn.Module] = [copy.deepcopy(self.first_block)]
        blocks += [self.blocks[b].get_active_block() for b in self.active_block_indices()]
        net = MobileNetV3(copy.deepcopy(self.stem), blocks, copy.deepcopy(self.final_expand),
                          copy.deepcopy(self.feature_mix), copy.deepcopy(self.classifier))
        if not preserve_weight:
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return net.train(self.training)

    # --- channel sorting -------------------------------------------------------------------
    @torch.no_grad()
    def sort_channels(self, nested_ratios: Sequence[float] = ()) -> None:
        """Sort every elastic block's middle channels by importance (OFA elastic width).

        The network function (every subnet whose width ratios are all in ``nested_ratios`` or
        the largest) is unchanged. See :meth:`ElasticMBConv.sort_channels`.
        """
        for blk in self.blocks:
            blk.sort_channels(nested_ratios)


def build_supernet(space: SearchSpace | str, **overrides) -> OFAMobileNetV3:
    """The single entry point: a supernet from a space or a preset name (+ overrides)."""
    if isinstance(space, str):
        space = get_space(space, **overrides)
    return OFAMobileNetV3(space)
