"""Import MIT's published Once-for-All supernets as ofa-edge run folders.

MIT's ImageNet supernets ``ofa_mbv3_d234_e346_k357_w1.0`` and ``..._w1.2`` (Cai et al.,
*Once-for-All*, ICLR 2020; code: mit-han-lab/once-for-all, ``OFAMobileNetV3``) and
``ofa_proxyless_d234_e346_k357_w1.3`` (``OFAProxylessNASNets``) hold the same tensors as our
``mbv3-w1.0`` / ``mbv3-w1.2`` / ``proxyless-w1.3`` supernets under other names. The map is built by
structure, from :attr:`ofa.space.SearchSpace.blocks`: MIT's ``blocks.0`` is our fixed first
block and MIT's ``blocks.{i}`` (i >= 1) our elastic block ``i - 1``; inside a block, each
MIT module (``inverted_bottleneck``, ``depth_conv`` with its ``7to5_matrix`` / ``5to3_matrix``
kernel transforms and SE, ``point_linear``) has one counterpart. ProxylessNAS's
``feature_mix_layer`` (1x1 conv + BN before pooling) is our ``final_expand``. Every tensor's
shape is checked, and a missing, extra or mis-shaped tensor is named in a one-line error.

:func:`import_ofa_supernet` writes a run folder (``run.json`` + ``supernet.safetensors``) that
``ofa eval``, ``ofa predictor build``, ``ofa export``, ``ofa deploy`` and ``ofa run
--supernet`` read like one of our own runs; its dataset is ImageNet as an ImageFolder tree
(``--data DIR``, 1,000 classes, ImageNet normalisation). Nothing is downloaded here: the user
passes the checkpoint file they obtained from OFA's model zoo.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ofa.errors import InputError
from ofa.fileio import atomic_write_dir, atomic_write_json
from ofa.space import SearchSpace, get_space
from ofa.supernet import build_supernet
from ofa.train.checkpoint import save_weights
from ofa.train.run import RUN_JSON, WEIGHTS, TrainConfig

__all__ = ["mit_key_map", "convert_mit_state_dict", "import_ofa_supernet", "SPACES"]

#: the spaces MIT published supernets for (the ImageNet MobileNetV3 and ProxylessNAS ones)
SPACES = ("mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(mit: str, ours_conv: str, ours_bn: str, nested: bool) -> dict[str, str]:
    """A conv + BN pair; MIT's dynamic layers nest one level deeper (``conv.conv``, ``bn.bn``)."""
    inner = ".conv" if nested else ""
    out = {f"{mit}.conv{inner}.weight": f"{ours_conv}.weight"}
    out.update({f"{mit}.bn{'.bn' if nested else ''}.{p}": f"{ours_bn}.{p}" for p in _BN})
    return out


def mit_key_map(space: SearchSpace) -> dict[str, str]:
    """MIT's state-dict key -> ours, for every tensor of ``space``'s supernet.

    Raises:
        ValueError: a space MIT published no supernet for.
    """
    if space.preset not in SPACES:
        raise InputError(f"MIT published supernets for {list(SPACES)}, not {space.preset!r}")
    m = _conv_bn("first_conv", "stem.0", "stem.1", nested=False)
    m.update(_conv_bn("blocks.0.conv.depth_conv", "first_block.depth_conv.0",
                      "first_block.depth_conv.1", nested=False))
    m.update(_conv_bn("blocks.0.conv.point_linear", "first_block.point_linear.0",
                      "first_block.point_linear.1", nested=False))
    for b in space.blocks:
        mit, ours = f"blocks.{b.index + 1}.conv", f"blocks.{b.index}"
        m.update(_conv_bn(f"{mit}.inverted_bottleneck", f"{ours}.expand_conv",
                          f"{ours}.expand_bn", nested=True))
        m.update(_conv_bn(f"{mit}.depth_conv", f"{ours}.depth_conv", f"{ours}.depth_bn",
                          nested=True))
        for src, dst in zip(space.ks_list[::-1], space.ks_list[-2::-1]):
            m[f"{mit}.depth_conv.conv.{src}to{dst}_matrix"] = \
                f"{ours}.depth_conv.transforms.{src}to{dst}"
        if b.se:
            for part in ("reduce", "expand"):
                for p in ("weight", "bias"):
                    m[f"{mit}.depth_conv.se.fc.{part}.{p}"] = f"{ours}.se.{part}_{p}"
        m.update(_conv_bn(f"{mit}.point_linear", f"{ours}.project_conv", f"{ours}.project_bn",
                          nested=True))
    if space.feature_mix_width:
        m.update(_conv_bn("final_expand_layer", "final_expand.0", "final_expand.1",
                          nested=False))
        m["feature_mix_layer.conv.weight"] = "feature_mix.0.weight"
    else:  # ProxylessNAS: its feature mix layer is the conv + BN before pooling
        m.update(_conv_bn("feature_mix_layer", "final_expand.0", "final_expand.1",
                          nested=False))
    m["classifier.linear.weight"] = "classifier.1.weight"
    m["classifier.linear.bias"] = "classifier.1.bias"
    return m


def convert_mit_state_dict(sd: dict[str, torch.Tensor], space: SearchSpace,
                           source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """MIT's ``state_dict`` -> ours for ``space``, every key and shape checked.

    Raises:
        ValueError: naming the first missing, extra or mis-shaped tensor (a truncated or
            foreign checkpoint, or weights of another width than ``space``).
    """
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{source}: not a state_dict of tensors")
    key_map = mit_key_map(space)
    ours = build_supernet(space).state_dict()
    missing = [k for k in key_map if k not in sd]
    if missing:
        raise InputError(f"{source}: tensor {missing[0]!r} is missing ({len(missing)} of "
                         f"{len(key_map)} missing): not MIT's {space.preset} supernet, or a "
                         "truncated file")
    extra = [k for k in sd if k not in key_map]
    if extra:
        raise InputError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} extra): not "
                         f"MIT's {space.preset} supernet")
    out = {}
    for mit, mine in key_map.items():
        if tuple(sd[mit].shape) != tuple(ours[mine].shape):
            raise InputError(f"{source}: tensor {mit!r} has shape {tuple(sd[mit].shape)}, "
                             f"{space.preset} needs {tuple(ours[mine].shape)} (another width?)")
        out[mine] = sd[mit].to(ours[mine].dtype)
    return out


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a readable torch checkpoint ({first[:120]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def import_ofa_supernet(ckpt: str | Path, space_name: str, out: str | Path) -> dict[str, Any]:
    """Read MIT's checkpoint (a ``state_dict``, optionally under ``"state_dict"``; loaded with
    ``weights_only=True``) and write the run folder ``out`` (assembled in a temp folder and
    renamed into place; an existing ``out`` is refused). Returns ``run.json``'s dict.

    Raises:
        ValueError: an unknown space, an unreadable or foreign checkpoint, an existing ``out``.
    """
    ckpt, out = Path(ckpt), Path(out)
    if space_name not in SPACES:
        raise InputError(f"--space {space_name!r}: MIT published supernets for {list(SPACES)}")
    if out.exists():
        raise InputError(f"{out} exists; pass a new --out folder")
    space = get_space(space_name, num_classes=1000, dropout=0.1)
    weights = convert_mit_state_dict(_read_checkpoint(ckpt), space, str(ckpt))
    net = build_supernet(space)
    net.load_state_dict(weights)
    cfg = TrainConfig(out=str(out), space=space_name, dataset="imagefolder", data=None,
                      schedule="ps", epochs=1.0, batch_size=64, recal_images=2000)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    info = {"config": asdict(cfg), "space": space.to_dict(), "schedule": "ps",
            "dataset": "imagefolder", "classes": 1000,
            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "weights": WEIGHTS, "global_steps": None, "imported": {
                "kind": "mit-once-for-all", "checkpoint": ckpt.name, "sha256": digest,
                "dataset": "ImageNet-1k as an ImageFolder tree: pass --data DIR"}}

    def write(tmp: Path) -> None:
        save_weights(tmp / WEIGHTS, net.state_dict())
        atomic_write_json(tmp / RUN_JSON, info)

    atomic_write_dir(out, write)
    return info
