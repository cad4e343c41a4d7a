"""Import OFA's published specialised networks (``ofa_specialized/<name>/``) as fine-tuned
networks that ``ofa eval``, ``ofa export``, ``ofa bench`` and ``ofa deploy`` use as they use
one of ``ofa finetune``'s.

MIT publishes, per specialised network (Cai et al., *Once-for-All*, ICLR 2020, Table 2 and
its model zoo: e.g. ``note10_lat@22ms_top1@78.6_finetune@25``), a ``net.config`` (a static
MobileNetV3, in the published block form ``MobileInvertedResidualBlock`` /
``mobile_inverted_conv``, or the newer ``ResidualBlock`` / ``conv``), a ``run.config``
(``image_size``, which may lie outside the elastic range: a static network runs at any size)
and ``init``, its fine-tuned ``state_dict`` (under ``state_dict`` or bare) whose keys name
``.mobile_inverted_conv.`` or ``.conv.``.

The import writes ``OUT/finetune.json`` + ``OUT/finetuned.safetensors`` (the static network,
``ofa/train/finetune.py``'s format) and ``OUT/supernet/``, a run folder whose supernet holds
the network as its active subnet (weights in the leading channels, kernels centred in the
7x7 with identity kernel transforms, so extracting the subnet gives the network back
exactly): what the fine-tuned format names as its source run. Every tensor is mapped by
structure through MIT's supernet key names (:func:`ofa.train.import_mit.mit_key_map`) and
checked; a missing, extra or mis-shaped tensor is named in a one-line error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ofa.errors import InputError
from ofa.fileio import atomic_write_dir, atomic_write_json, read_json
from ofa.space import (
    SearchSpace,
    SubnetConfig,
    space_for_net_config,
    subnet_from_net_config,
)
from ofa.supernet import build_supernet
from ofa.train.checkpoint import save_weights
from ofa.train.finetune import FINETUNE_JSON, FINETUNED
from ofa.train.import_mit import _read_checkpoint, mit_key_map
from ofa.train.run import RUN_JSON, WEIGHTS, TrainConfig

__all__ = ["import_ofa_specialized", "read_specialized", "static_to_supernet_key"]

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def read_specialized(folder: str | Path) -> tuple[dict[str, Any], int, Path]:
    """``(net.config, image size, init path)`` of a published specialised-network folder.

    Raises:
        ValueError: a missing or unreadable file, or no usable ``image_size``.
    """
    folder = Path(folder)
    for name in ("net.config", "run.config", "init"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name} (a folder of OFA's ofa_specialized/ holds "
                             "net.config, run.config and init)")
    nc = read_json(folder / "net.config", "OFA net.config")
    size = read_json(folder / "run.config", "OFA run.config").get("image_size")
    size = size[0] if isinstance(size, list) and size else size
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise InputError(f"{folder / 'run.config'}: image_size must be a resolution, "
                         f"got {size!r}")
    return nc, size, folder / "init"


def static_to_supernet_key(key: str, active: list[int]) -> str:
    """A key of MIT's static network (either form) -> the key of MIT's supernet
    (``OFAMobileNetV3``) for the same tensor: ``.mobile_inverted_conv.`` read as ``.conv.``
    (as MIT's own loader does), static block ``j`` (``j >= 1``) is supernet block
    ``active[j - 1] + 1``, and its dynamic conv / BN layers nest one level deeper."""
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    m = re.match(r"blocks\.(\d+)\.(.*)", key)
    if not m or m.group(1) == "0":
        return key
    j, rest = int(m.group(1)), m.group(2)
    if j - 1 >= len(active):
        return key  # not a block of this network: reported as extra
    rest = re.sub(r"^conv\.(inverted_bottleneck|depth_conv|point_linear)\.(conv|bn)\.",
                  lambda g: f"conv.{g.group(1)}.{g.group(2)}.{g.group(2)}.", rest)
    return f"blocks.{active[j - 1] + 1}.{rest}"


def _static_key(mit_key: str, active: list[int]) -> str:
    """MIT's supernet key -> the static network's (the current ``.conv.`` form): the
    inverse of :func:`static_to_supernet_key`."""
    m = re.match(r"blocks\.(\d+)\.(.*)", mit_key)
    if not m or m.group(1) == "0":
        return mit_key
    rest = re.sub(r"\.(conv|bn)\.(conv|bn)\.", r".\1.", m.group(2))
    return f"blocks.{active.index(int(m.group(1)) - 1) + 1}.{rest}"


def _place(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``src`` into the leading slice of ``dst``; a conv kernel centred in ``dst``'s."""
    if dst.dim() == 4 and src.dim() == 4 and dst.shape[2] != src.shape[2]:
        off = (dst.shape[2] - src.shape[2]) // 2
        dst.zero_()
        dst[:src.shape[0], :src.shape[1], off:off + src.shape[2], off:off + src.shape[3]] = src
    elif dst.dim() == 0:
        dst.copy_(src)
    else:
        dst[tuple(slice(0, n) for n in src.shape)] = src


def embed(sd: dict[str, torch.Tensor], space: SearchSpace, cfg: SubnetConfig,
          source: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(supernet with the network as its active subnet, the static network)`` from MIT's
    static ``state_dict``.

    Raises:
        ValueError: naming the first missing, extra or mis-shaped tensor.
    """
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{source}: not a state_dict of tensors")
    net = build_supernet(space).eval()
    net.set_active_subnet(cfg)
    active = list(space.active_blocks(cfg))
    key_map = mit_key_map(space)  # MIT supernet key -> ours
    ours = dict(net.state_dict())
    mapped: dict[str, str] = {}
    for k in sd:
        sk = static_to_supernet_key(k, active)
        if sk not in key_map:
            raise InputError(f"{source}: unexpected tensor {k!r}: not a {space.name} "
                             f"network of this net.config")
        mapped[key_map[sk]] = k
    expected = {key_map[k] for k in key_map  # older files have no BN step counters
                if not k.endswith(("to5_matrix", "to3_matrix", "num_batches_tracked"))
                and _is_active(k, active)}
    missing = sorted(expected - set(mapped))
    if missing:
        back = {v: k for k, v in key_map.items()}
        raise InputError(f"{source}: tensor {_static_key(back[missing[0]], active)!r} is "
                         f"missing ({len(missing)} missing): a truncated file, or weights of "
                         "another network")
    with torch.no_grad():
        for mine, k in mapped.items():
            dst, src = ours[mine], sd[k].to(ours[mine].dtype)
            if src.dim() != dst.dim() or any(a > b for a, b in zip(src.shape, dst.shape)):
                raise InputError(f"{source}: tensor {k!r} has shape {tuple(src.shape)}, "
                                 f"{space.name} holds at most {tuple(dst.shape)}")
            _place(dst, src)
    net.load_state_dict(ours)
    net.set_active_subnet(cfg)
    return net, net.get_active_subnet().eval()


def _is_active(mit_key: str, active: list[int]) -> bool:
    m = re.match(r"blocks\.(\d+)\.", mit_key)
    return not m or m.group(1) == "0" or int(m.group(1)) - 1 in active


def _bn_eps(nc: dict[str, Any], default: float) -> float:
    """The BatchNorm epsilon a net.config names (``{"bn": {"momentum", "eps"}}``), or
    ``default`` (MIT's ``build_from_config`` falls back the same way)."""
    eps = (nc.get("bn") or {}).get("eps", default) if isinstance(nc.get("bn"), dict) \
        else default
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 0.1:
        raise InputError(f"net.config: bn eps must be in (0, 0.1], got {eps!r}")
    return float(eps)


def import_ofa_specialized(folder: str | Path, out: str | Path,
                           space_name: str | None = None) -> dict[str, Any]:
    """Import one folder of OFA's ``ofa_specialized/`` into ``out`` (module docstring); an
    existing ``out`` is refused. ``space_name``: the space (default: found from the
    net.config's widths, :func:`ofa.space.space_for_net_config`). Returns the
    ``finetune.json`` dict.

    Raises:
        ValueError: missing or foreign files, a network of a space ofa-edge does not have,
            a tensor missing, extra or of the wrong shape (named), an existing ``out``.
    """
    folder, out = Path(folder), Path(out)
    if out.exists():
        raise InputError(f"{out} exists; pass a new --out folder")
    nc, size, init = read_specialized(folder)
    space = space_for_net_config(nc)
    if space_name is not None and space.preset != space_name:
        raise InputError(f"{folder / 'net.config'} is a network of space {space.preset}, "
                         f"not {space_name}")
    # a static network runs at any size: the space is narrowed to the network's own; its
    # BatchNorm epsilon is the one it was trained with (net.config's "bn", as MIT reads it)
    space = space.with_choices(resolutions=(size,), bn_eps=_bn_eps(nc, space.bn_eps))
    cfg = subnet_from_net_config(space, nc, size)
    net, static = embed(_read_checkpoint(init), space, cfg, str(init))
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    tcfg = TrainConfig(out=str(out / "supernet"), space=space.preset, dataset="imagefolder",
                       data=None, schedule="ps", epochs=1.0, batch_size=64, recal_images=2000)
    imported = {"kind": "mit-ofa-specialized", "folder": folder.name, "sha256": digest,
                "image_size": size}
    run_info = {"config": asdict(tcfg), "space": space.to_dict(), "schedule": "ps",
                "dataset": "imagefolder", "classes": space.num_classes,
                "normalisation": IMAGENET, "weights": WEIGHTS, "global_steps": None,
                "imported": {**imported, "note": "a supernet whose active subnet is the "
                             "specialised network; its other subnets are not trained"}}
    info = {"kind": "ofa-edge-finetune", "space": space.to_dict(), "subnet": cfg.to_dict(),
            "summary": cfg.summary(), "weights": FINETUNED,
            "source_run": str((out / "supernet").resolve()), "epochs": None, "kd": None,
            "top1_before": None, "top1_after": None, "train_seconds": None,
            "imported": imported}

    def write(tmp: Path) -> None:
        save_weights(tmp / FINETUNED, static.state_dict())
        (tmp / "supernet").mkdir()
        save_weights(tmp / "supernet" / WEIGHTS, net.state_dict())
        atomic_write_json(tmp / "supernet" / RUN_JSON, run_info)
        atomic_write_json(tmp / FINETUNE_JSON, info)

    atomic_write_dir(out, write)
    return info
