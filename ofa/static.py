"""Static (non-elastic) MobileNetV3 / ProxylessNAS modules: what an extracted subnet is made of.

Plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` and standard activations only, so a
subnet exports to ONNX/TFLite as is. The same :class:`MBConv` builds single blocks for the
latency-table builder from a :class:`ofa.space.BlockShape`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ofa.errors import InputError
from ofa.space import BlockShape, make_divisible

__all__ = ["MBConv", "MobileNetV3", "SqueezeExcite", "act_layer", "build_block", "build_layer"]


def act_layer(name: str) -> nn.Module:
    """``relu`` -> ReLU, ``relu6`` -> ReLU6, ``h_swish`` -> Hardswish, ``h_sigmoid`` ->
    Hardsigmoid.

    Raises:
        ValueError: unknown activation name.
    """
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "h_swish":
        return nn.Hardswish(inplace=True)
    if name == "h_sigmoid":
        return nn.Hardsigmoid(inplace=True)
    raise InputError(f"unknown activation {name!r}; allowed: relu, relu6, h_swish, h_sigmoid")


class SqueezeExcite(nn.Module):
    """SE: global pool -> 1x1 reduce (+bias) -> ReLU -> 1x1 expand (+bias) -> h-sigmoid.

    Input/output ``(N, C, H, W)``; hidden width ``make_divisible(C // 4, 8)`` unless given.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = make_divisible(channels // 4, 8) if hidden is None else hidden
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2/V3): [1x1 expand] -> kxk depthwise -> [SE] -> 1x1.

    Input ``(N, in_ch, H, W)``, output ``(N, out_ch, ceil(H/stride), ceil(W/stride))``.
    ``expand=False`` is the expand-ratio-1 block (depthwise directly on the input, mid == in).
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, kernel: int, stride: int,
                 se: bool, act: str, shortcut: bool, expand: bool = True) -> None:
        super().__init__()
        if shortcut and (stride != 1 or in_ch != out_ch):
            raise InputError(f"identity shortcut needs stride 1 and in == out, got stride "
                             f"{stride}, {in_ch} -> {out_ch}")
        if not expand and mid != in_ch:
            raise InputError(f"a block without expansion needs mid == in ({mid} != {in_ch})")
        self.shortcut = shortcut
        self.inverted_bottleneck = (
            nn.Sequential(nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), act_layer(act))
            if expand else None
        )
        self.depth_conv = nn.Sequential(
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            act_layer(act),
        )
        self.se = SqueezeExcite(mid) if se else None
        self.point_linear = nn.Sequential(nn.Conv2d(mid, out_ch, 1, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        y = self.depth_conv(y)
        if self.se is not None:
            y = self.se(y)
        y = self.point_linear(y)
        return x + y if self.shortcut else y


class MobileNetV3(nn.Module):
    """A standalone subnet: stem, blocks, head (final expand, pool, feature mix, classifier).

    A ProxylessNAS subnet is the same with ``nn.Identity()`` as its feature mix (its head is
    the 1x1 conv + BN before pooling). ``forward``: ``(N, 3, r, r)`` float ->
    ``(N, num_classes)`` logits.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], final_expand: nn.Module,
                 feature_mix: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        x = self.final_expand(x)
        x = x.mean((2, 3), keepdim=True)
        x = self.feature_mix(x)
        return self.classifier(x.flatten(1))


def stem_layer(in_ch: int, out_ch: int, stride: int, act: str = "h_swish") -> nn.Sequential:
    """3x3 conv + BN + ``act``: ``(N, in_ch, H, W)`` -> ``(N, out_ch, ceil(H/s), ceil(W/s))``."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_ch), act_layer(act))


def final_expand_layer(in_ch: int, out_ch: int, act: str = "h_swish") -> nn.Sequential:
    """1x1 conv + BN + ``act`` before pooling (ProxylessNAS calls it the feature mix layer)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
                         act_layer(act))


def feature_mix_layer(in_ch: int, out_ch: int, act: str = "h_swish") -> nn.Module:
    """MobileNetV3's post-pool 1x1 conv + ``act`` (no BN); ``out_ch`` 0: none (identity)."""
    if not out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), act_layer(act))


def classifier_layer(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def build_block(shape: BlockShape) -> MBConv:
    """An :class:`MBConv` with random weights for one ``mbconv`` :class:`BlockShape`."""
    return MBConv(shape.in_ch, shape.mid, shape.out_ch, shape.kernel, shape.stride, shape.se,
                  shape.act, shape.shortcut, expand=shape.expand)


class _Pool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


class _Logits(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


def build_layer(shape: BlockShape) -> nn.Module:
    """A small module for any :class:`BlockShape` (used to time it in isolation).

    Input ``(1, shape.in_ch, shape.in_size, shape.in_size)``.
    """
    if shape.kind == "mbconv":
        return build_block(shape)
    if shape.kind == "stem":
        return stem_layer(shape.in_ch, shape.out_ch, shape.stride, shape.act or "h_swish")
    if shape.kind == "final_expand":
        return final_expand_layer(shape.in_ch, shape.out_ch, shape.act or "h_swish")
    if shape.kind == "pool":
        return _Pool()
    if shape.kind == "feature_mix":
        return feature_mix_layer(shape.in_ch, shape.out_ch, shape.act or "h_swish")
    if shape.kind == "classifier":
        return _Logits(shape.in_ch, shape.out_ch)
    raise InputError(f"unknown layer kind {shape.kind!r}")
