"""Elastic operations of the OFA supernet (Cai et al., ICLR 2020, section 3.3).

- :class:`ElasticDepthwiseConv`: elastic kernel. One ``max_k x max_k`` weight; a smaller kernel
  is the centre of the next larger (already transformed) kernel, flattened and multiplied by a
  learned ``k^2 x k^2`` matrix shared across channels (7 -> 5 -> 3), initialised to identity.
- :class:`ElasticPointwiseConv`, :class:`ElasticBatchNorm2d`, :class:`ElasticSE`: elastic width,
  the active channels are a prefix ``[:C]`` of the shared weights and BN statistics.
- :class:`ElasticMBConv`: one elastic inverted-residual block; extracts a static
  :class:`ofa.static.MBConv` and re-sorts its middle channels by importance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofa.errors import InputError
from ofa.space import make_divisible
from ofa.static import MBConv

__all__ = [
    "ElasticBatchNorm2d",
    "ElasticDepthwiseConv",
    "ElasticMBConv",
    "ElasticPointwiseConv",
    "ElasticSE",
]


def _act(x: Tensor, name: str) -> Tensor:
    if name == "relu":
        return F.relu(x)
    return F.relu6(x) if name == "relu6" else F.hardswish(x)


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel size and width.

    Input ``(N, C, H, W)`` with ``C <= max_channels``; output ``(N, C, ceil(H/s), ceil(W/s))``.
    """

    def __init__(self, max_channels: int, ks_list: Sequence[int], stride: int) -> None:
        super().__init__()
        self.ks_list = sorted(set(ks_list))
        self.max_ks = self.ks_list[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, self.max_ks, self.max_ks))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # one matrix per consecutive pair, large -> small: "7to5", "5to3"
        self.transforms = nn.ParameterDict()
        for src, dst in zip(self.ks_list[::-1][:-1], self.ks_list[::-1][1:]):
            self.transforms[f"{src}to{dst}"] = nn.Parameter(torch.eye(dst * dst))
        self.active_ks = self.max_ks

    def get_active_filter(self, channels: int, ks: int) -> Tensor:
        """The ``(channels, 1, ks, ks)`` kernel of the active configuration.

        Raises:
            ValueError: ``ks`` not in the kernel list.
        """
        if ks not in self.ks_list:
            raise InputError(f"kernel {ks} not in {self.ks_list}")
        w = self.weight[:channels]
        cur = self.max_ks
        for tgt in reversed(self.ks_list):
            if tgt >= cur:
                continue
            if tgt < ks:
                break
            s = (cur - tgt) // 2
            flat = w[:, :, s:s + tgt, s:s + tgt].reshape(channels, tgt * tgt)
            w = F.linear(flat, self.transforms[f"{cur}to{tgt}"]).view(channels, 1, tgt, tgt)
            cur = tgt
        return w

    def forward(self, x: Tensor) -> Tensor:
        c = x.size(1)
        ks = self.active_ks
        return F.conv2d(x, self.get_active_filter(c, ks), None, self.stride, ks // 2, 1, c)


class ElasticPointwiseConv(nn.Module):
    """1x1 conv (no bias) whose input width follows the input and output width is settable.

    Input ``(N, Cin<=max_in, H, W)`` -> ``(N, active_out, H, W)``.
    """

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.active_out = max_out

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight[: self.active_out, : x.size(1)]
        return F.conv2d(x, w)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics and affine parameters are sliced to the input width.

    Running statistics of the active prefix are updated in place (the slices are views), so
    BN recalibration of a subnet recomputes exactly the channels it uses.
    """

    def forward(self, x: Tensor) -> Tensor:
        c = x.size(1)
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        use_batch = self.training or not self.track_running_stats
        rm = self.running_mean[:c] if self.running_mean is not None else None
        rv = self.running_var[:c] if self.running_var is not None else None
        return F.batch_norm(x, rm, rv, self.weight[:c], self.bias[:c], use_batch, factor, self.eps)


class ElasticSE(nn.Module):
    """Squeeze-excite over an elastic width: hidden width ``make_divisible(C // 4, 8)``.

    Input and output ``(N, C, H, W)``.
    """

    def __init__(self, max_channels: int, divisor: int = 8) -> None:
        super().__init__()
        self.divisor = divisor
        hidden = make_divisible(max_channels // 4, divisor)
        self.reduce_weight = nn.Parameter(torch.empty(hidden, max_channels, 1, 1))
        self.reduce_bias = nn.Parameter(torch.zeros(hidden))
        self.expand_weight = nn.Parameter(torch.empty(max_channels, hidden, 1, 1))
        self.expand_bias = nn.Parameter(torch.zeros(max_channels))
        for w in (self.reduce_weight, self.expand_weight):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def hidden(self, channels: int) -> int:
        return make_divisible(channels // 4, self.divisor)

    def forward(self, x: Tensor) -> Tensor:
        c = x.size(1)
        h = self.hidden(c)
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, self.reduce_weight[:h, :c], self.reduce_bias[:h]))
        s = F.hardsigmoid(F.conv2d(s, self.expand_weight[:c, :h], self.expand_bias[:c]))
        return x * s


class ElasticMBConv(nn.Module):
    """Elastic inverted-residual block: elastic kernel (``active_ks``) and expand (``active_e``).

    Input ``(N, in_ch, H, W)`` -> ``(N, out_ch, ceil(H/stride), ceil(W/stride))``. In/out widths
    are fixed; the middle width is ``make_divisible(round(in_ch * e), divisor)``.
    """

    def __init__(self, in_ch: int, out_ch: int, ks_list: Sequence[int],
                 expand_list: Sequence[float], stride: int, se: bool, act: str,
                 shortcut: bool, divisor: int = 8) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.act, self.shortcut, self.divisor = act, shortcut, divisor
        self.expand_list = sorted(set(expand_list))
        max_mid = self.mid_width(self.expand_list[-1])
        self.expand_conv = ElasticPointwiseConv(in_ch, max_mid)
        self.expand_bn = ElasticBatchNorm2d(max_mid)
        self.depth_conv = ElasticDepthwiseConv(max_mid, ks_list, stride)
        self.depth_bn = ElasticBatchNorm2d(max_mid)
        self.se = ElasticSE(max_mid, divisor) if se else None
        self.project_conv = ElasticPointwiseConv(max_mid, out_ch)
        self.project_bn = nn.BatchNorm2d(out_ch)
        self.active_e = self.expand_list[-1]

    def mid_width(self, e: float) -> int:
        return make_divisible(round(self.in_ch * e), self.divisor)

    @property
    def active_ks(self) -> int:
        return self.depth_conv.active_ks

    def set_active(self, ks: int, e: float) -> None:
        if e not in self.expand_list:
            raise InputError(f"expand ratio {e} not in {self.expand_list}")
        if ks not in self.depth_conv.ks_list:
            raise InputError(f"kernel {ks} not in {self.depth_conv.ks_list}")
        self.depth_conv.active_ks = ks
        self.active_e = e
        self.expand_conv.active_out = self.mid_width(e)

    def forward(self, x: Tensor) -> Tensor:
        y = _act(self.expand_bn(self.expand_conv(x)), self.act)
        y = _act(self.depth_bn(self.depth_conv(y)), self.act)
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        return x + y if self.shortcut else y

    # --- extraction --------------------------------------------------------------------
    @torch.no_grad()
    def get_active_block(self) -> MBConv:
        """A static :class:`MBConv` holding copies of the active (sliced, transformed) weights."""
        mid, ks = self.mid_width(self.active_e), self.active_ks
        blk = MBConv(self.in_ch, mid, self.out_ch, ks, self.stride, self.se is not None,
                     self.act, self.shortcut)
        assert blk.inverted_bottleneck is not None
        blk.inverted_bottleneck[0].weight.copy_(self.expand_conv.weight[:mid])
        _copy_bn(blk.inverted_bottleneck[1], self.expand_bn, mid)
        blk.depth_conv[0].weight.copy_(self.depth_conv.get_active_filter(mid, ks))
        _copy_bn(blk.depth_conv[1], self.depth_bn, mid)
        if self.se is not None and blk.se is not None:
            h = self.se.hidden(mid)
            blk.se.reduce.weight.copy_(self.se.reduce_weight[:h, :mid])
            blk.se.reduce.bias.copy_(self.se.reduce_bias[:h])
            blk.se.expand.weight.copy_(self.se.expand_weight[:mid, :h])
            blk.se.expand.bias.copy_(self.se.expand_bias[:mid])
        blk.point_linear[0].weight.copy_(self.project_conv.weight[:, :mid])
        _copy_bn(blk.point_linear[1], self.project_bn, self.out_ch)
        return blk

    # --- channel sorting ---------------------------------------------------------------
    @torch.no_grad()
    def sort_channels(self, nested_ratios: Sequence[float] = ()) -> Tensor:
        """Re-order middle channels by importance (L1 norm of the projection conv's input
        slices), applying one permutation to every layer that touches them, so the function
        of the block is unchanged (OFA section 3.3, elastic width).

        ``nested_ratios``: expand ratios whose width prefixes must keep their channel *sets*
        (OFA's second expand phase keeps channels already within the previously supported
        width in front). Returns the permutation ``(max_mid,)``.
        """
        importance = self.project_conv.weight.abs().sum(dim=(0, 2, 3))
        order = torch.sort(importance, descending=True, stable=True).indices
        if nested_ratios:
            bounds = sorted({self.mid_width(e) for e in nested_ratios})
            group = torch.zeros_like(importance, dtype=torch.long)
            for b in bounds:
                group[b:] += 1
            order = order[torch.sort(group[order], stable=True).indices]
        self._permute_mid(order)
        if self.se is not None:
            # SE hidden channels sorted by the L1 norm of the SE expand conv's input slices
            se_imp = self.se.expand_weight.abs().sum(dim=(0, 2, 3))
            se_order = torch.sort(se_imp, descending=True, stable=True).indices
            self.se.expand_weight.copy_(self.se.expand_weight[:, se_order])
            self.se.reduce_weight.copy_(self.se.reduce_weight[se_order])
            self.se.reduce_bias.copy_(self.se.reduce_bias[se_order])
        return order

    def _permute_mid(self, idx: Tensor) -> None:
        self.project_conv.weight.copy_(self.project_conv.weight[:, idx])
        self.expand_conv.weight.copy_(self.expand_conv.weight[idx])
        self.depth_conv.weight.copy_(self.depth_conv.weight[idx])
        for bn in (self.expand_bn, self.depth_bn):
            bn.weight.copy_(bn.weight[idx])
            bn.bias.copy_(bn.bias[idx])
            bn.running_mean.copy_(bn.running_mean[idx])
            bn.running_var.copy_(bn.running_var[idx])
        if self.se is not None:
            self.se.expand_weight.copy_(self.se.expand_weight[idx])
            self.se.expand_bias.copy_(self.se.expand_bias[idx])
            self.se.reduce_weight.copy_(self.se.reduce_weight[:, idx])


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
    dst.eps, dst.momentum = src.eps, src.momentum
