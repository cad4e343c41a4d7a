"""BN recalibration (OFA section 3.4 / appendix): recompute a subnet's BN running statistics.

A subnet's channels are shared with many others, so the supernet's running statistics do not
fit any single subnet; before evaluating or exporting one, its statistics are recomputed as
the plain average over ``num_images`` training images (OFA: 2000 images, batches of 200).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ofa.device import autocast_context
from ofa.errors import InputError

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_images: int = 2000,
                   autocast: str = "fp32") -> int:
    """Reset and recompute the running mean/var of every BatchNorm in ``model``.

    Works on an extracted static subnet and on the supernet (only the active subnet's channel
    prefix is recomputed). ``loader`` yields ``images`` or ``(images, labels)`` with images
    ``(N, 3, r, r)`` at the subnet's resolution. Statistics are the cumulative average over
    batches (``momentum=None``); the model's train/eval mode and momenta are restored.

    Returns:
        The number of images used.

    Raises:
        ValueError: ``num_images`` < 1 or the loader yields no images.
    """
    if num_images < 1:
        raise InputError(f"num_images must be >= 1, got {num_images}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in loader:
            x: Tensor = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[: num_images - seen].to(device, non_blocking=True)
            with autocast_context(device, autocast):
                model(x)
            seen += x.size(0)
            if seen >= num_images:
                break
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    if seen == 0:
        raise InputError("BN recalibration loader yielded no images")
    return seen
