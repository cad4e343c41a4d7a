"""The OFA search spaces (MobileNetV3 and ProxylessNAS) as data.

Everything that needs the network layout -- the supernet, the analytic MACs counter, the
latency-lookup-table keys and the accuracy-predictor encoding -- reads it from here, so
nothing restates the layout. Torch-free on purpose (numpy and the standard library only).

Reference: Cai et al., *Once-for-All*, ICLR 2020, section 3.1 and appendix (search space);
the CIFAR variant follows Sahni et al. / *DεpS* (ECCV 2024) at 32x32 inputs; the ProxylessNAS
space is OFA's third published supernet (Cai et al., *ProxylessNAS*, ICLR 2019, section 4's
backbone; MIT's ``OFAProxylessNASNets``: ReLU6, no SE, a head without the post-pool conv).
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ofa.errors import InputError

__all__ = [
    "BlockShape",
    "BlockSpec",
    "SearchSpace",
    "StageSpec",
    "SubnetConfig",
    "make_divisible",
    "register_preset",
    "preset_names",
    "get_space",
    "subnet_from_net_config", "net_config_block", "space_for_net_config", "net_config",
]

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (MobileNet convention).

    Adds one ``divisor`` when rounding would go more than 10% below ``value``.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: output width (after the width multiplier), stride, act, SE flag.

    ``fixed_depth`` > 0 makes the stage's depth fixed (its blocks keep elastic kernel and
    expand ratio): the ProxylessNAS space's last stage is one block (MIT's
    ``OFAProxylessNASNets`` sets ``d[-1] = 1``). 0 means the space's ``depth_list``.
    """

    width: int
    stride: int
    act: str  # "relu" | "relu6" | "h_swish"
    se: bool
    fixed_depth: int = 0


@dataclass(frozen=True)
class BlockSpec:
    """The fixed facts of one elastic block of the supernet (what no subnet changes).

    ``index`` counts blocks over all stages (0..``num_blocks - 1``); ``stage`` and
    ``position`` (0 = the stage's first block) place it; ``in_ch``/``out_ch`` are its widths,
    ``stride`` is the stage's stride on the first block and 1 after it, ``shortcut`` is True
    exactly for the blocks after the first. ``act`` (``relu`` | ``h_swish``) and ``se`` come
    from the stage. Computed once per space (:attr:`SearchSpace.blocks`); the supernet,
    :meth:`SearchSpace.block_shapes`, the compiled block sums and the subnet encoding all
    read these rows instead of walking the stage table themselves.
    """

    index: int
    stage: int
    position: int
    in_ch: int
    out_ch: int
    stride: int
    se: bool
    act: str
    shortcut: bool


@dataclass(frozen=True)
class BlockShape:
    """The static shape of one layer group of a subnet, as a latency table keys it.

    ``kind`` is one of ``stem``, ``mbconv``, ``final_expand``, ``pool``, ``feature_mix``,
    ``classifier``. Spatial sizes are square (``in_size`` x ``in_size`` in, ``out_size`` out).
    For ``mbconv`` ``mid`` is the middle (expanded) width; ``expand`` is False only for the
    fixed first block, whose depthwise conv acts directly on its input.
    """

    kind: str
    in_size: int
    out_size: int
    in_ch: int
    out_ch: int
    mid: int = 0
    kernel: int = 0
    stride: int = 1
    shortcut: bool = False
    se: bool = False
    act: str = ""
    expand: bool = True

    def key(self) -> str:
        """OFA-style latency-table key, e.g.
        ``expanded_conv-input:16x16x24-output:8x8x40-expand:144-kernel:5-stride:2-idskip:0-se:1-hs:0``.
        """
        i = f"input:{self.in_size}x{self.in_size}x{self.in_ch}"
        if self.kind == "stem":
            return f"Conv-{i}-output:{self.out_size}x{self.out_size}x{self.out_ch}"
        if self.kind == "final_expand":
            return f"Conv_1-{i}-output:{self.out_size}x{self.out_size}x{self.out_ch}"
        if self.kind == "pool":
            return f"AvgPool2D-{i}-output:1x1x{self.out_ch}"
        if self.kind == "feature_mix":
            return f"Conv_2-{i}-output:1x1x{self.out_ch}"
        if self.kind == "classifier":
            return f"Logits-{i}-output:{self.out_ch}"
        return (
            f"expanded_conv-{i}-output:{self.out_size}x{self.out_size}x{self.out_ch}"
            f"-expand:{self.mid}-kernel:{self.kernel}-stride:{self.stride}"
            f"-idskip:{int(self.shortcut)}-se:{int(self.se)}-hs:{int(self.act == 'h_swish')}"
        )

    def macs(self, se_divisor: int = 8) -> int:
        """Multiply-accumulates of this layer group (OFA convention: convs incl. SE, linear)."""
        o2 = self.out_size * self.out_size
        if self.kind == "stem":
            return o2 * self.in_ch * self.out_ch * 9
        if self.kind in ("final_expand", "feature_mix", "classifier"):
            return o2 * self.in_ch * self.out_ch
        if self.kind == "pool":
            return 0
        macs = 0
        if self.expand:
            macs += self.in_size * self.in_size * self.in_ch * self.mid
        macs += o2 * self.mid * self.kernel * self.kernel
        if self.se:
            se_mid = make_divisible(self.mid // 4, se_divisor)
            macs += 2 * self.mid * se_mid
        macs += o2 * self.mid * self.out_ch
        return macs

    def params(self, se_divisor: int = 8) -> int:
        """Parameters of this layer group (conv/linear weights, biases, BN affine)."""
        if self.kind == "stem":
            return self.in_ch * self.out_ch * 9 + 2 * self.out_ch
        if self.kind == "final_expand":
            return self.in_ch * self.out_ch + 2 * self.out_ch
        if self.kind == "feature_mix":
            return self.in_ch * self.out_ch
        if self.kind == "classifier":
            return self.in_ch * self.out_ch + self.out_ch
        if self.kind == "pool":
            return 0
        p = 0
        if self.expand:
            p += self.in_ch * self.mid + 2 * self.mid
        p += self.mid * self.kernel * self.kernel + 2 * self.mid
        if self.se:
            se_mid = make_divisible(self.mid // 4, se_divisor)
            p += self.mid * se_mid + se_mid + se_mid * self.mid + self.mid
        p += self.mid * self.out_ch + 2 * self.out_ch
        return p


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not allowed; allowed values: {list(allowed)}")


@dataclass(frozen=True)
class SubnetConfig:
    """One architecture of the space: ``ks`` and ``e`` per block, ``d`` per stage, ``r``.

    ``ks`` and ``e`` hold one entry for every block of the supernet (20 for the MobileNetV3
    spaces); entries of blocks beyond a stage's depth are ignored by the network but kept, as
    in OFA's encoding. ``r`` is the square input resolution in pixels. Construction checks the
    structure (types, equal lengths); :meth:`SearchSpace.validate` checks values against a space.

    Raises:
        ValueError: on wrong lengths or non-integer entries.
    """

    ks: tuple[int, ...]
    e: tuple[float, ...]
    d: tuple[int, ...]
    r: int

    def __post_init__(self) -> None:
        for name in ("ks", "e", "d"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise InputError(f"{name} must be a list, got {type(v).__name__}")
            object.__setattr__(self, name, tuple(v))
        if len(self.ks) != len(self.e):
            raise InputError(
                f"ks has {len(self.ks)} entries but e has {len(self.e)}; one per block each"
            )
        if not self.d or len(self.d) > len(self.ks):
            raise InputError(f"d has {len(self.d)} entries for {len(self.ks)} blocks; "
                             "one entry per stage")
        for name in ("ks", "d"):
            for v in getattr(self, name):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InputError(f"{name} entries must be integers, got {v!r}")
        for v in self.e:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"e entries must be numbers, got {v!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise InputError(f"r must be an integer resolution, got {self.r!r}")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict ``{"ks": [...], "e": [...], "d": [...], "r": int}``."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubnetConfig:
        """Build from a dict; ``r`` may also be given as a one-element list (OFA style).

        Raises:
            ValueError: missing or malformed fields.
        """
        if not isinstance(data, dict):
            raise InputError(f"subnet config must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("ks", "e", "d", "r") if k not in data]
        if missing:
            raise InputError(f"subnet config is missing field(s) {missing}")
        r = data["r"]
        if isinstance(r, list) and len(r) == 1:
            r = r[0]
        return cls(ks=data["ks"], e=data["e"], d=data["d"], r=r)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"subnet config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def summary(self) -> str:
        """Compact human string, e.g. ``r32 d[2,3,4,2,3] k[..] e[..]`` of active blocks only.

        Stages hold ``ceil(len(ks) / len(d))`` blocks each, the last one the rest (every
        space's layout: 5 x 4 for MobileNetV3, 5 x 4 + 1 for ProxylessNAS).
        """
        per = -(-len(self.ks) // len(self.d))
        ks, es = [], []
        for s, depth in enumerate(self.d):
            ks.append("".join(str(k) for k in self.ks[s * per: s * per + depth]))
            es.append("".join(f"{e:g}" for e in self.e[s * per: s * per + depth]))
        return f"r{self.r} d{''.join(map(str, self.d))} k{'-'.join(ks)} e{'-'.join(es)}"


@dataclass(frozen=True)
class SearchSpace:
    """An elastic search space (OFA, ICLR 2020, section 3.1): MobileNetV3 or ProxylessNAS.

    Attributes hold the widths after the width multiplier: ``stem_width``, ``first_width``
    (the fixed expand-1 block), the :class:`StageSpec` rows, ``final_expand_width`` (the 1x1
    conv + BN before pooling: 960 at MobileNetV3 w1.0, ProxylessNAS's "feature mix" 1664 at
    w1.3) and ``feature_mix_width`` (MobileNetV3's post-pool 1x1 conv, 1280 at w1.0; 0 =
    none, as in ProxylessNAS). Choice lists: ``ks_list``, ``expand_list``, ``depth_list``
    (per stage, keeps the first d of ``max_depth`` blocks), ``resolutions``. ``family``
    (``mbv3`` | ``proxyless``) names MIT's network class; ``stem_act``, ``first_act`` and
    ``head_act`` are the fixed layers' activations and ``bn_eps`` the BatchNorm epsilon
    (MIT: 1e-5 for MobileNetV3, 1e-3 for ProxylessNAS).
    """

    name: str
    stem_width: int
    stem_stride: int
    first_width: int
    first_stride: int
    stages: tuple[StageSpec, ...]
    final_expand_width: int
    feature_mix_width: int
    ks_list: tuple[int, ...] = (3, 5, 7)
    expand_list: tuple[float, ...] = (3, 4, 6)
    depth_list: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))
    num_classes: int = 1000
    width_mult: float = 1.0
    dropout: float = 0.1
    in_channels: int = 3
    max_depth: int = 4
    divisor: int = 8
    preset: str = field(default="", compare=True)
    family: str = "mbv3"
    stem_act: str = "h_swish"
    first_act: str = "relu"
    head_act: str = "h_swish"
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("ks_list", "expand_list", "depth_list", "resolutions"):
            v = tuple(sorted(set(getattr(self, name))))
            if not v:
                raise InputError(f"{name} must not be empty")
            object.__setattr__(self, name, v)
        for k in self.ks_list:
            if k not in (3, 5, 7):
                raise InputError(f"ks_list entry {k} not allowed; allowed values: [3, 5, 7]")
        for d in self.depth_list:
            if not 1 <= d <= self.max_depth:
                raise InputError(f"depth_list entry {d} not allowed; allowed: 1..{self.max_depth}")
        for e in self.expand_list:
            if e <= 0:
                raise InputError(f"expand_list entry {e} must be positive")
        for r in self.resolutions:
            if r < 8:
                raise InputError(f"resolution {r} too small; must be >= 8")
        if self.num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {self.num_classes}")
        if isinstance(self.bn_eps, bool) or not isinstance(self.bn_eps, (int, float)) or \
                not 0 < self.bn_eps <= 0.1:
            raise InputError(f"bn_eps must be in (0, 0.1], got {self.bn_eps!r}")

    # --- layout ---------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def stage_depths(self, stage: int) -> tuple[int, ...]:
        """The depths stage ``stage`` allows: ``depth_list``, or its fixed depth."""
        fixed = self.stages[stage].fixed_depth
        return (fixed,) if fixed else self.depth_list

    @cached_property
    def blocks(self) -> tuple[BlockSpec, ...]:
        """One :class:`BlockSpec` per elastic block, in forward order (the one layout walk)."""
        out, in_ch = [], self.first_width
        for s, st in enumerate(self.stages):
            for j in range(st.fixed_depth or self.max_depth):
                out.append(BlockSpec(index=len(out), stage=s, position=j, in_ch=in_ch,
                                     out_ch=st.width, stride=st.stride if j == 0 else 1,
                                     se=st.se, act=st.act, shortcut=j > 0))
                in_ch = st.width
        return tuple(out)

    def active_mask(self, d: np.ndarray) -> np.ndarray:
        """Which blocks a depth vector keeps: ``d`` ``(N, S)`` depths -> ``(N, B)`` bool.

        Block ``b`` is active when its position in its stage is below that stage's depth
        (OFA keeps the *first* d blocks of a stage).
        """
        stage, pos = self._stage_position
        return pos[None, :] < np.take(np.asarray(d).reshape(-1, self.num_stages), stage, axis=1)

    @cached_property
    def _stage_position(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([b.stage for b in self.blocks], np.int64),
                np.array([b.position for b in self.blocks], np.int64))

    def mid_width(self, in_ch: int, e: float) -> int:
        """Middle width of an MBConv: ``make_divisible(round(in_ch * e), 8)``."""
        return make_divisible(round(in_ch * e), self.divisor)

    # --- configs ---------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Check ``cfg`` against this space and return it.

        Raises:
            ValueError: naming the field (``ks[3]``, ``d[1]``, ``r``...) and the allowed values.
        """
        if not isinstance(cfg, SubnetConfig):
            raise InputError(f"expected a SubnetConfig, got {type(cfg).__name__}")
        if len(cfg.ks) != self.num_blocks:
            raise InputError(f"ks has {len(cfg.ks)} entries; space {self.name!r} needs "
                             f"{self.num_blocks} (one per block)")
        if len(cfg.d) != self.num_stages:
            raise InputError(f"d has {len(cfg.d)} entries; space {self.name!r} needs "
                             f"{self.num_stages} (one per stage)")
        for i, k in enumerate(cfg.ks):
            _check_choice(f"ks[{i}]", k, self.ks_list)
        for i, e in enumerate(cfg.e):
            _check_choice(f"e[{i}]", e, self.expand_list)
        for i, d in enumerate(cfg.d):
            _check_choice(f"d[{i}]", d, self.stage_depths(i))
        _check_choice("r", cfg.r, self.resolutions)
        return cfg

    def config(self, ks: Sequence[int] | int, e: Sequence[float] | float,
               d: Sequence[int] | int, r: int | None = None) -> SubnetConfig:
        """Build and validate a config; scalars are broadcast (``ks=7`` means all blocks, a
        scalar ``d`` every stage whose depth is elastic)."""
        ks = [ks] * self.num_blocks if isinstance(ks, int) else list(ks)
        e = [e] * self.num_blocks if isinstance(e, (int, float)) else list(e)
        if isinstance(d, int):
            d = [st.fixed_depth or d for st in self.stages]
        d = list(d)
        r = max(self.resolutions) if r is None else r
        return self.validate(SubnetConfig(ks=ks, e=e, d=d, r=r))

    def max_subnet(self, r: int | None = None) -> SubnetConfig:
        return self.config(max(self.ks_list), max(self.expand_list), max(self.depth_list), r)

    def min_subnet(self, r: int | None = None) -> SubnetConfig:
        r = min(self.resolutions) if r is None else r
        return self.config(min(self.ks_list), min(self.expand_list), min(self.depth_list), r)

    def sample(self, generator: random.Random | None = None, r: int | None = None,
               ks_list: Sequence[int] | None = None, expand_list: Sequence[float] | None = None,
               depth_list: Sequence[int] | None = None) -> SubnetConfig:
        """Uniformly sample a subnet; optional sub-lists restrict choices (training phases)."""
        g = generator or random.Random()
        ks_c = list(ks_list or self.ks_list)
        e_c = list(expand_list or self.expand_list)
        d_c = list(depth_list or self.depth_list)
        ks = [g.choice(ks_c) for _ in range(self.num_blocks)]
        e = [g.choice(e_c) for _ in range(self.num_blocks)]
        d = [st.fixed_depth or g.choice(d_c) for st in self.stages]
        r = g.choice(list(self.resolutions)) if r is None else r
        return self.validate(SubnetConfig(ks=ks, e=e, d=d, r=r))

    def num_subnets(self, per_resolution: bool = True) -> int:
        """Exact count of distinct architectures (blocks beyond depth don't count).

        For OFA-MobileNetV3: per stage 9^2 + 9^3 + 9^4 = 7371, so 7371^5 per resolution
        (ProxylessNAS: 7371^5 x 9, its last stage one block).
        """
        per_block = len(self.ks_list) * len(self.expand_list)
        n = 1
        for s in range(self.num_stages):
            n *= sum(per_block ** d for d in self.stage_depths(s))
        return n if per_resolution else n * len(self.resolutions)

    def active_blocks(self, cfg: SubnetConfig) -> Iterator[int]:
        """Indices of the elastic blocks that ``cfg`` keeps, in forward order."""
        return (b.index for b in self.blocks if b.position < cfg.d[b.stage])

    def block_in_sizes(self, r: int) -> tuple[int, ...]:
        """Input spatial size of every elastic block at resolution ``r``.

        A stage's first block carries its stride and is always active, so the sizes do not
        depend on the depths.
        """
        size = _conv_out(_conv_out(r, self.stem_stride), self.first_stride)
        out = []
        for b in self.blocks:
            out.append(size)
            size = _conv_out(size, b.stride)
        return tuple(out)

    def block_shape(self, b: int, r: int, k: int, e: float) -> BlockShape:
        """The shape of elastic block ``b`` with kernel ``k`` and expand ratio ``e`` at
        resolution ``r``."""
        spec, size = self.blocks[b], self.block_in_sizes(r)[b]
        return BlockShape("mbconv", size, _conv_out(size, spec.stride), spec.in_ch, spec.out_ch,
                          mid=self.mid_width(spec.in_ch, e), kernel=k, stride=spec.stride,
                          shortcut=spec.shortcut, se=spec.se, act=spec.act)

    def fixed_shapes(self, r: int) -> tuple[list[BlockShape], list[BlockShape]]:
        """The layer groups every subnet has at resolution ``r``: ``(stem, head)`` where stem
        is [stem conv, fixed first block] and head is [final expand, pool, feature mix,
        classifier] (no feature mix when ``feature_mix_width`` is 0, as in ProxylessNAS)."""
        s_out = _conv_out(r, self.stem_stride)
        f_out = _conv_out(s_out, self.first_stride)
        stem = [BlockShape("stem", r, s_out, self.in_channels, self.stem_width, kernel=3,
                           stride=self.stem_stride, act=self.stem_act),
                BlockShape("mbconv", s_out, f_out, self.stem_width, self.first_width,
                           mid=self.stem_width, kernel=3, stride=self.first_stride,
                           shortcut=self.first_stride == 1 and self.stem_width == self.first_width,
                           se=False, act=self.first_act, expand=False)]
        last = self.blocks[-1]
        size = _conv_out(self.block_in_sizes(r)[-1], last.stride)
        fe, fm = self.final_expand_width, self.feature_mix_width
        head = [BlockShape("final_expand", size, size, last.out_ch, fe, act=self.head_act),
                BlockShape("pool", size, 1, fe, fe)]
        if fm:
            head.append(BlockShape("feature_mix", 1, 1, fe, fm, act=self.head_act))
        head.append(BlockShape("classifier", 1, 1, fm or fe, self.num_classes))
        return stem, head

    def block_shapes(self, cfg: SubnetConfig) -> list[BlockShape]:
        """Every layer group of ``cfg`` at resolution ``cfg.r``, in forward order.

        MACs, params, latency-table keys and the table builder all derive from this,
        :meth:`fixed_shapes` and :meth:`block_shape`.
        """
        stem, head = self.fixed_shapes(cfg.r)
        return stem + [self.block_shape(b, cfg.r, cfg.ks[b], cfg.e[b])
                       for b in self.active_blocks(cfg)] + head

    def all_block_shapes(self, resolutions: Sequence[int] | None = None) -> list[BlockShape]:
        """Every distinct layer-group shape any subnet can contain at ``resolutions``.

        Used by the latency-table builder; order is deterministic.
        """
        seen: dict[str, BlockShape] = {}
        dmax = max(self.depth_list)
        for r in resolutions or self.resolutions:
            _check_choice("resolution", r, self.resolutions)
            stem, head = self.fixed_shapes(r)
            shapes = list(stem) + head
            shapes += [self.block_shape(b.index, r, k, e) for b in self.blocks
                       if b.position < dmax for k in self.ks_list for e in self.expand_list]
            for bs in shapes:
                seen.setdefault(bs.key(), bs)
        return list(seen.values())

    def macs(self, cfg: SubnetConfig) -> int:
        """Analytic MACs of ``cfg`` at ``cfg.r`` (OFA convention: convs incl. SE + classifier;
        no BN, activations or pooling). No model is built."""
        self.validate(cfg)
        return sum(b.macs(self.divisor) for b in self.block_shapes(cfg))

    def params(self, cfg: SubnetConfig) -> int:
        """Parameters of the extracted subnet (weights, biases and BN affine parameters)."""
        self.validate(cfg)
        return sum(b.params(self.divisor) for b in self.block_shapes(cfg))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Enough to rebuild the space: preset name plus every override (``bn_eps`` only
        when it is not the preset's, as for a published network trained with another)."""
        out = {
            "preset": self.preset or self.name,
            "num_classes": self.num_classes,
            "width_mult": self.width_mult,
            "ks_list": list(self.ks_list),
            "expand_list": list(self.expand_list),
            "depth_list": list(self.depth_list),
            "resolutions": list(self.resolutions),
            "dropout": self.dropout,
        }
        if _preset_bn_eps(self.preset or self.name) not in (None, self.bn_eps):
            out["bn_eps"] = self.bn_eps
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """The space :meth:`to_dict` describes.

        Raises:
            ValueError: not such a description (unknown preset or option, bad values).
        """
        if not isinstance(data, dict) or not isinstance(data.get("preset"), str):
            raise InputError("a search-space description needs a 'preset' name")
        data = dict(data)
        preset = data.pop("preset")
        try:
            return get_space(preset, **data)
        except (TypeError, KeyError, OverflowError) as exc:
            raise InputError(f"bad search-space description ({exc})") from None

    def with_choices(self, **kw: Any) -> SearchSpace:
        return replace(self, **kw)


def _conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv: ``(size - 1) // stride + 1``."""
    return (size - 1) // stride + 1


# --- presets ---------------------------------------------------------------------------------
_PRESETS: dict[str, Callable[..., SearchSpace]] = {}  # name -> builder


@functools.cache
def _preset_bn_eps(name: str) -> float | None:
    """The BN epsilon of preset ``name`` (None: no such preset), built once."""
    preset = _PRESETS.get(name)
    return None if preset is None else preset().bn_eps


PresetBuilder = Callable[..., SearchSpace]


def register_preset(name: str) -> Callable[[PresetBuilder], PresetBuilder]:
    """Register a preset builder under ``name`` (``f(**overrides) -> SearchSpace``)."""

    def deco(fn: PresetBuilder) -> PresetBuilder:
        _PRESETS[name] = fn
        return fn

    return deco


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_space(name: str, **overrides: Any) -> SearchSpace:
    """Build a registered preset, e.g. ``get_space("mbv3-w1.2", num_classes=10, ks_list=[3, 5])``.

    Raises:
        ValueError: unknown preset name or invalid override.
    """
    if name not in _PRESETS:
        raise InputError(f"unknown search space {name!r}; known presets: {preset_names()}")
    unknown = set(overrides) - {"num_classes", "width_mult", "ks_list", "expand_list",
                                "depth_list", "resolutions", "dropout", "bn_eps"}
    if unknown:
        raise InputError(f"unknown search-space option(s) {sorted(unknown)}")
    return _PRESETS[name](**overrides)


_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
_SES = (False, True, False, True, True)


def _mbv3(name: str, preset: str, default_width: float, stem_stride: int,
          stage_strides: Sequence[int], default_res: Sequence[int], default_classes: int,
          **overrides: Any) -> SearchSpace:
    width_mult = float(overrides.pop("width_mult", default_width))
    if width_mult <= 0:
        raise InputError(f"width_mult must be positive, got {width_mult}")
    w = [make_divisible(b * width_mult, 8) for b in BASE_WIDTHS]
    stages = tuple(StageSpec(w[2 + i], stage_strides[i], _ACTS[i], _SES[i]) for i in range(5))
    kw: dict[str, Any] = {"resolutions": tuple(default_res), "num_classes": default_classes}
    kw.update(overrides)
    return SearchSpace(name=name, preset=preset, stem_width=w[0], stem_stride=stem_stride,
                       first_width=w[1], first_stride=1, stages=stages,
                       final_expand_width=w[7], feature_mix_width=w[8],
                       width_mult=width_mult, **kw)


@register_preset("mbv3-w1.0")
def _mbv3_w10(**kw: Any) -> SearchSpace:
    """OFA ImageNet space, width 1.0 (``ofa_mbv3_d234_e346_k357_w1.0``)."""
    return _mbv3("mbv3-w1.0", "mbv3-w1.0", 1.0, 2, (2, 2, 2, 1, 2), range(128, 225, 4), 1000, **kw)


@register_preset("mbv3-w1.2")
def _mbv3_w12(**kw: Any) -> SearchSpace:
    """OFA ImageNet space, width 1.2 (``ofa_mbv3_d234_e346_k357_w1.2``, the Note10 tables)."""
    return _mbv3("mbv3-w1.2", "mbv3-w1.2", 1.2, 2, (2, 2, 2, 1, 2), range(128, 225, 4), 1000, **kw)


@register_preset("mbv3-cifar")
def _mbv3_cifar(**kw: Any) -> SearchSpace:
    """DεpS CIFAR-10 space: stem stride 1, strides [1, 1, 2, 2, 1, 2] incl. the first block."""
    return _mbv3("mbv3-cifar", "mbv3-cifar", 1.0, 1, (1, 2, 2, 1, 2), range(24, 33, 4), 10, **kw)


@register_preset("mbv3-digits")
def _mbv3_digits(**kw: Any) -> SearchSpace:
    """Small CIFAR-layout space for the embedded 8x8 digits (upsampled to 12..20 px), w0.5.

    Sized so that the end-to-end job trains in minutes on 2 CPU cores.
    """
    return _mbv3("mbv3-digits", "mbv3-digits", 0.5, 1, (1, 2, 2, 1, 2), range(12, 21, 4), 10, **kw)


PROXYLESS_BASE_WIDTHS = (32, 16, 24, 40, 80, 96, 192, 320, 1280)


@register_preset("proxyless-w1.3")
def _proxyless_w13(**overrides: Any) -> SearchSpace:
    """OFA's ProxylessNAS space, width 1.3 (``ofa_proxyless_d234_e346_k357_w1.3``; MIT's
    ``OFAProxylessNASNets``): stem 40 channels, ReLU6 everywhere, no SE, six stages with
    strides [2, 2, 2, 1, 2, 1] whose last is one block (elastic kernel and expand ratio,
    fixed depth), and a 1x1 conv + BN + ReLU6 to 1664 channels before pooling as the head
    (no post-pool conv). BN epsilon 1e-3, as MIT trains it.
    """
    width_mult = float(overrides.pop("width_mult", 1.3))
    if width_mult <= 0:
        raise InputError(f"width_mult must be positive, got {width_mult}")
    w = [make_divisible(b * width_mult, 8) for b in PROXYLESS_BASE_WIDTHS]
    strides = (2, 2, 2, 1, 2, 1)
    stages = tuple(StageSpec(w[2 + i], strides[i], "relu6", False, fixed_depth=1 if i == 5
                             else 0) for i in range(6))
    kw: dict[str, Any] = {"resolutions": tuple(range(128, 225, 4)), "num_classes": 1000,
                          "bn_eps": 1e-3}
    kw.update(overrides)
    return SearchSpace(name="proxyless-w1.3", preset="proxyless-w1.3", stem_width=w[0],
                       stem_stride=2, first_width=w[1], first_stride=1, stages=stages,
                       final_expand_width=w[8], feature_mix_width=0, width_mult=width_mult,
                       family="proxyless", stem_act="relu6", first_act="relu6",
                       head_act="relu6", **kw)


#: the layer names of an inverted-residual block in MIT's two net.config forms
_MB_LAYERS = ("MBConvLayer", "MBInvertedConvLayer")


def net_config_block(block: Any, i: int = 0) -> dict[str, Any]:
    """The inverted-residual layer of one ``net.config`` block, in either form MIT wrote:
    the current ``{"name": "ResidualBlock", "conv": {"name": "MBConvLayer", ...}}`` or the
    published specialised networks' ``{"name": "MobileInvertedResidualBlock",
    "mobile_inverted_conv": {"name": "MBInvertedConvLayer", ...}}`` (MIT's own reader takes
    both: ``ofa/utils/layers.py``, ``ResidualBlock.build_from_config``).

    Raises:
        ValueError: a block with neither layer, or a layer that is not an inverted residual
            (a ResNet's bottleneck, say), naming block ``i``.
    """
    c = None
    if isinstance(block, dict):
        c = block.get("conv", block.get("mobile_inverted_conv"))
    if not isinstance(c, dict):
        raise InputError(f"net.config block {i}: no inverted-residual layer ('conv' or "
                         "'mobile_inverted_conv')")
    if c.get("name") not in _MB_LAYERS:
        raise InputError(f"net.config block {i}: layer {c.get('name')!r} is not an inverted "
                         f"residual ({' or '.join(_MB_LAYERS)}): not a MobileNetV3 network")
    return c


def _head_widths(sp: SearchSpace) -> tuple[int, int | None, int]:
    """(stem, final expand, feature mix) widths as a net.config of ``sp`` names them:
    ProxylessNAS has no ``final_expand_layer`` and calls its pre-pool conv the feature mix."""
    if sp.feature_mix_width:
        return sp.stem_width, sp.final_expand_width, sp.feature_mix_width
    return sp.stem_width, None, sp.final_expand_width


def space_for_net_config(net_config: Any, num_classes: int | None = None) -> SearchSpace:
    """The preset whose stem (width, stride) and final widths match an OFA ``net.config``
    (w1.0: stem 16, 960/1280; w1.2: 24, 1152/1536; ProxylessNAS w1.3: 40, feature mix
    1664 and no final expand layer; ImageNet stem stride 2), with the net.config's class
    count.

    Raises:
        ValueError: not a net.config, or a network of a space ofa-edge does not have (the
            message names the spaces it has).
    """
    if not isinstance(net_config, dict) or not isinstance(net_config.get("blocks"), list):
        raise InputError("not an OFA net.config (no 'blocks' list)")
    first = net_config.get("first_conv") or {}
    fel = net_config.get("final_expand_layer") or {}
    fml = net_config.get("feature_mix_layer") or {}
    cls = net_config.get("classifier") or {}
    n = num_classes or cls.get("out_features")
    got = (first.get("out_channels"), fel.get("out_channels"), fml.get("out_channels"))
    stride = first.get("stride")  # ImageNet spaces 2, the CIFAR-layout ones 1
    for name in preset_names():
        try:
            sp = get_space(name, num_classes=n) if isinstance(n, int) and n > 0 else \
                get_space(name)
        except ValueError:
            continue
        if _head_widths(sp) == got and stride in (None, sp.stem_stride):
            return sp
    have = ", ".join(f"{p} {_head_widths(get_space(p))}" for p in preset_names())
    raise InputError(f"net.config widths (stem, final expand, feature mix) = {got} match no "
                     f"space of ofa-edge; it has {have}")


def _conv_layer(i: int, o: int, k: int, s: int, act: str | None, bn: bool = True
                ) -> dict[str, Any]:
    return {"name": "ConvLayer", "kernel_size": k, "stride": s, "dilation": 1, "groups": 1,
            "bias": False, "has_shuffle": False, "use_se": False, "in_channels": i,
            "out_channels": o, "use_bn": bn, "act_func": act, "dropout_rate": 0,
            "ops_order": "weight_bn_act"}


def _mb_block(i: int, o: int, k: int, s: int, e: float, act: str, se: bool,
              shortcut: bool) -> dict[str, Any]:
    return {"name": "ResidualBlock",
            "conv": {"name": "MBConvLayer", "in_channels": i, "out_channels": o,
                     "kernel_size": k, "stride": s, "expand_ratio": e, "mid_channels": None,
                     "act_func": act, "use_se": se, "groups": None},
            "shortcut": {"name": "IdentityLayer", "in_channels": i, "out_channels": i,
                         "use_bn": False, "act_func": None, "dropout_rate": 0,
                         "ops_order": "weight_bn_act"} if shortcut else None}


def net_config(space: SearchSpace, cfg: SubnetConfig) -> dict[str, Any]:
    """The ``net.config`` of subnet ``cfg`` in MIT's current form, as its
    ``MobileNetV3.config`` / ``ProxylessNASNets.config`` writes it (``ResidualBlock`` /
    ``MBConvLayer``; the inverse of :func:`subnet_from_net_config`). MIT's
    ``build_from_config`` builds the network from it.

    Raises:
        ValueError: ``cfg`` is not a subnet of ``space``.
    """
    sp = space
    sp.validate(cfg)
    blocks = [_mb_block(sp.stem_width, sp.first_width, 3, sp.first_stride, 1, sp.first_act,
                        False, sp.first_stride == 1 and sp.stem_width == sp.first_width)]
    for b in sp.active_blocks(cfg):
        spec = sp.blocks[b]
        blocks.append(_mb_block(spec.in_ch, spec.out_ch, cfg.ks[b], spec.stride, cfg.e[b],
                                spec.act, spec.se, spec.shortcut))
    last = sp.stages[-1].width
    head_in = sp.feature_mix_width or sp.final_expand_width
    out: dict[str, Any] = {
        "name": "MobileNetV3" if sp.feature_mix_width else "ProxylessNASNets",
        "bn": {"momentum": 0.1, "eps": sp.bn_eps},
        "first_conv": _conv_layer(sp.in_channels, sp.stem_width, 3, sp.stem_stride,
                                  sp.stem_act),
        "blocks": blocks}
    fe = _conv_layer(last, sp.final_expand_width, 1, 1, sp.head_act)
    if sp.feature_mix_width:
        out["final_expand_layer"] = fe
        out["feature_mix_layer"] = _conv_layer(sp.final_expand_width, sp.feature_mix_width,
                                               1, 1, sp.head_act, bn=False)
    else:
        out["feature_mix_layer"] = fe
    out["classifier"] = {"name": "LinearLayer", "in_features": head_in,
                         "out_features": sp.num_classes, "bias": True, "use_bn": False,
                         "act_func": None, "dropout_rate": sp.dropout,
                         "ops_order": "weight_bn_act"}
    return out


def subnet_from_net_config(space: SearchSpace, net_config: dict[str, Any], r: int
                           ) -> SubnetConfig:
    """OFA's published ``net.config`` (a static MobileNetV3: ``first_conv``, ``blocks``,
    ``final_expand_layer``, ``feature_mix_layer``, ``classifier``) as a subnet of ``space``
    at resolution ``r``.

    Blocks after the fixed first one are grouped into stages by their output width; a stage
    of depth d fills its first d blocks (kernel, expand ratio) and the blocks beyond it are
    padded with the smallest choices (they are inactive, as in OFA's encoding). Every block's
    widths, stride, activation and SE flag are checked against :attr:`SearchSpace.blocks`.

    Raises:
        ValueError: a ``net.config`` that is not a subnet of ``space`` (names the block).
    """
    if not isinstance(net_config, dict) or not isinstance(net_config.get("blocks"), list):
        raise InputError("not an OFA net.config (no 'blocks' list)")
    head = (net_config.get("first_conv") or {}).get("out_channels"), \
        (net_config.get("classifier") or {}).get("out_features")
    if head != (space.stem_width, space.num_classes):
        try:
            other = f": it is a network of space {space_for_net_config(net_config).name}"
        except ValueError as exc:
            other = f" ({exc})"
        raise InputError(f"net.config stem/classes {head} != space {space.name}'s "
                         f"{(space.stem_width, space.num_classes)}{other}")
    blocks = [net_config_block(b, i + 1) for i, b in enumerate(net_config["blocks"][1:])]
    ks, e, d = [], [], []
    i = 0
    for st in range(space.num_stages):
        stage = [b for b in space.blocks if b.stage == st]
        n = 0
        while i + n < len(blocks) and n < len(stage) and blocks[i + n].get("out_channels") \
                == stage[0].out_ch:
            n += 1
        if n not in space.stage_depths(st):
            raise InputError(f"net.config stage {st + 1} has {n} blocks of width "
                             f"{stage[0].out_ch}; space {space.name} allows depths "
                             f"{list(space.stage_depths(st))}")
        for j, spec in enumerate(stage):
            if j < n:
                c = blocks[i + j]
                got = (c.get("in_channels"), c.get("out_channels"), c.get("stride"),
                       c.get("act_func"), bool(c.get("use_se")))
                want = (spec.in_ch, spec.out_ch, spec.stride, spec.act, spec.se)
                if got != want:
                    raise InputError(f"net.config block {i + j + 1} (in, out, stride, act, se) "
                                     f"= {got}, space {space.name} has {want}")
                ks.append(c.get("kernel_size"))
                e.append(c.get("expand_ratio"))
            else:
                ks.append(min(space.ks_list))
                e.append(min(space.expand_list))
        d.append(n)
        i += n
    if i != len(blocks):
        raise InputError(f"net.config has {len(blocks) - i} block(s) more than space "
                         f"{space.name} can hold")
    return space.validate(SubnetConfig(ks=ks, e=e, d=d, r=r))


def describe(space: SearchSpace) -> dict[str, Any]:
    """The facts ``ofa space`` prints: choices, exact counts, MACs/params of the extremes."""
    rmin, rmax = min(space.resolutions), max(space.resolutions)
    extremes = {}
    for label, cfg_fn in (("largest", space.max_subnet), ("smallest", space.min_subnet)):
        for r in (rmax, rmin):
            cfg = cfg_fn(r)
            extremes[f"{label}@{r}"] = {"macs": space.macs(cfg), "params": space.params(cfg)}
    return {
        "name": space.name,
        "num_classes": space.num_classes,
        "width_mult": space.width_mult,
        "widths": [space.stem_width, space.first_width] + [s.width for s in space.stages]
        + [space.final_expand_width, space.feature_mix_width],
        "strides": [space.stem_stride, space.first_stride] + [s.stride for s in space.stages],
        "ks_list": list(space.ks_list),
        "expand_list": list(space.expand_list),
        "depth_list": list(space.depth_list),
        "fixed_depths": {str(s + 1): st.fixed_depth for s, st in enumerate(space.stages)
                         if st.fixed_depth},
        "family": space.family,
        "resolutions": list(space.resolutions),
        "num_subnets_per_resolution": space.num_subnets(),
        "num_subnets_total": space.num_subnets(per_resolution=False),
        "log10_num_subnets": math.log10(space.num_subnets(per_resolution=False)),
        "extremes": extremes,
    }
