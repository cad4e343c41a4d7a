"""Top-1 evaluation of subnets, always after BN recalibration (OFA section 3.4)."""

from __future__ import annotations

import torch
from torch import nn

from ofa.bn import recalibrate_bn
from ofa.data import BatchLoader, Dataset
from ofa.space import SubnetConfig
from ofa.supernet import OFAMobileNetV3

__all__ = ["evaluate", "recalibrated_subnet", "subnet_accuracy"]


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str, r: int, batch_size: int = 200,
             limit: int | None = None) -> float:
    """Top-1 accuracy in % of ``model`` on ``split`` at resolution ``r`` (eval transforms)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in BatchLoader(data, split, batch_size, r, train=False, limit=limit):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += y.numel()
    return 100.0 * correct / max(1, total)


def recalibrated_subnet(net: OFAMobileNetV3, cfg: SubnetConfig, data: Dataset,
                        num_images: int = 2000, batch_size: int = 200, seed: int = 0) -> nn.Module:
    """Extract ``cfg`` as a static network and recompute its BN statistics on ``num_images``
    training images (training transforms at ``cfg.r``, fixed seed, as OFA). The supernet is
    left untouched. Returns the subnet in eval mode."""
    net.set_active_subnet(cfg)
    sub = net.get_active_subnet()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        loader = BatchLoader(data, "train", batch_size, cfg.r, train=True, seed=seed,
                             drop_last=False, limit=num_images)
        recalibrate_bn(sub, loader, num_images=num_images)
    finally:
        torch.set_rng_state(state)
    return sub.eval()


def subnet_accuracy(net: OFAMobileNetV3, cfg: SubnetConfig, data: Dataset,
                    split: str = "test", recal_images: int = 2000,
                    limit: int | None = None) -> float:
    """Top-1 (%) of subnet ``cfg`` on ``split`` after BN recalibration."""
    sub = recalibrated_subnet(net, cfg, data, recal_images)
    return evaluate(sub, data, split, cfg.r, limit=limit)
