"""Top-1 evaluation of subnets, always after BN recalibration (OFA section 3.4)."""

from __future__ import annotations

import torch
from torch import nn

from ofa.bn import recalibrate_bn
from ofa.data import BatchLoader, Dataset, eval_loader
from ofa.device import autocast_context
from ofa.space import SubnetConfig
from ofa.supernet import OFAMobileNetV3

__all__ = ["evaluate", "recalibrated_subnet", "subnet_accuracy", "recal_batches"]


def recal_batches(data: Dataset, r: int, num_images: int = 2000, batch_size: int = 200,
                  seed: int = 0) -> list[torch.Tensor]:
    """The BN-recalibration images at resolution ``r``: ``num_images`` training images with
    training transforms, drawn with a fixed seed (the global RNG is left as it was).
    Returns batches ``(<= batch_size, 3, r, r)``, materialised so that many subnets at one
    resolution are recalibrated on the same tensors without re-running the transforms."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return [x for x, _ in BatchLoader(data, "train", batch_size, r, train=True, seed=seed,
                                          drop_last=False, limit=num_images)]
    finally:
        torch.set_rng_state(state)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str, r: int, batch_size: int = 200,
             limit: int | None = None,
             batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
             autocast: str = "fp32", workers: int = 0) -> float:
    """Top-1 accuracy in % of ``model`` on ``split`` at resolution ``r`` (eval transforms).

    Images ``(N, 3, r, r)`` are moved to the model's device; ``autocast`` is the forward
    pass's autocast dtype (:mod:`ofa.device`). Correct predictions are counted on the
    device and read once at the end (no per-batch host synchronisation). ``workers``
    processes decode and resize the images (:func:`ofa.data.eval_loader`; same result).
    ``batches``: pre-transformed ``(images, labels)`` of that split to use instead."""
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    if batches is None:
        batches = eval_loader(BatchLoader(data, split, batch_size, r, train=False, limit=limit),
                              workers, pin_memory=device.type == "cuda")
    for x, y in batches:
        with autocast_context(device, autocast):
            pred = model(x.to(device, non_blocking=True)).argmax(1)
        correct += (pred == y.to(device, non_blocking=True)).sum()
        total += y.numel()
    return 100.0 * int(correct) / max(1, total)


def recalibrated_subnet(net: OFAMobileNetV3, cfg: SubnetConfig, data: Dataset,
                        num_images: int = 2000, batch_size: int = 200, seed: int = 0,
                        batches: list[torch.Tensor] | None = None,
                        autocast: str = "fp32") -> nn.Module:
    """Extract ``cfg`` as a static network and recompute its BN statistics on ``num_images``
    training images (:func:`recal_batches` at ``cfg.r``, fixed seed, as OFA; pass
    ``batches`` to reuse them). The supernet is left untouched; the subnet is on the
    supernet's device, recalibrated at ``autocast``. Returns the subnet in eval mode."""
    net.set_active_subnet(cfg)
    sub = net.get_active_subnet().to(next(net.parameters()).device)
    if batches is None:
        batches = recal_batches(data, cfg.r, num_images, batch_size, seed)
    recalibrate_bn(sub, batches, num_images=num_images, autocast=autocast)
    return sub.eval()


def subnet_accuracy(net: OFAMobileNetV3, cfg: SubnetConfig, data: Dataset,
                    split: str = "test", recal_images: int = 2000,
                    limit: int | None = None, cache: dict | None = None,
                    autocast: str = "fp32", workers: int = 0) -> float:
    """Top-1 (%) of subnet ``cfg`` on ``split`` after BN recalibration, computed on the
    supernet's device at ``autocast`` (:mod:`ofa.device`).

    ``cache``: a dict kept across calls; recalibration and evaluation images are transformed
    once per resolution and reused (same images, same result as without the cache); the
    recalibration images are kept on the supernet's device. ``workers``: evaluation images
    are decoded by that many processes (:func:`ofa.data.eval_loader`)."""
    if cache is None:
        sub = recalibrated_subnet(net, cfg, data, recal_images, autocast=autocast)
        return evaluate(sub, data, split, cfg.r, limit=limit, autocast=autocast,
                        workers=workers)
    rk, ek = ("recal", cfg.r, recal_images), ("eval", split, cfg.r, limit)
    if rk not in cache:
        device = next(net.parameters()).device
        cache[rk] = [x.to(device) for x in recal_batches(data, cfg.r, recal_images)]
    if ek not in cache:
        cache[ek] = list(eval_loader(BatchLoader(data, split, 200, cfg.r, train=False,
                                                 limit=limit), workers))
    sub = recalibrated_subnet(net, cfg, data, recal_images, batches=cache[rk],
                              autocast=autocast)
    return evaluate(sub, data, split, cfg.r, batches=cache[ek], autocast=autocast)
