"""Reference outputs from MIT's Once-for-All package, for the equivalence tests of our importers.

Runs under MIT's package (PyPI ``ofa``), never in ofa-edge's environment: both import as
``ofa``. Install it into its own folder and put only that folder on the path::

    pip install --no-deps --target .mit-ofa "ofa==0.1.0.post202307202001"
    PYTHONPATH=.mit-ofa python tools/mit_ofa_reference.py --space mbv3-w1.2 --out ref_w12
    PYTHONPATH=.mit-ofa python tools/mit_ofa_reference.py --net-config net.config \
        --resolution 236 --out ref_net

Supernet mode (``--space``: ``mbv3-w1.0``, ``mbv3-w1.2`` or ``proxyless-w1.3``) writes
``OUT/state_dict.pt`` (MIT's ``OFAMobileNetV3`` / ``OFAProxylessNASNets`` with seeded random
weights and non-trivial BN statistics, in MIT's key names), ``OUT/inputs.pt`` (fixed images
per resolution) and ``OUT/reference.json``: for each sampled subnet its config (``ks``,
``e``, ``d``, ``r``), the logits MIT's supernet gives in eval mode, MIT's ``net.config`` of
the extracted subnet and the MACs MIT counts for it.

Specialised mode (``--net-config``, in either block form) builds the static network with
MIT's ``MobileNetV3.build_from_config`` / ``ProxylessNASNets.build_from_config``, gives it
seeded random weights and writes it as OFA publishes its specialised networks:
``OUT/init`` (``{"state_dict": ...}`` with ``.mobile_inverted_conv.`` keys), plus
``OUT/inputs.pt`` and ``OUT/reference.json`` (MIT's logits at ``--resolution``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch

SPACES = {"mbv3-w1.0": ("mbv3", 1.0), "mbv3-w1.2": ("mbv3", 1.2),
          "proxyless-w1.3": ("proxyless", 1.3)}


def _randomize(net: torch.nn.Module, g: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters, kernel transforms and SE biases."""
    for name, t in net.state_dict().items():
        if name.endswith("running_mean"):
            t.copy_(torch.rand(t.shape, generator=g) - 0.5)
        elif name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("matrix"):
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
        elif name.endswith("bias") or (name.endswith("weight") and t.dim() == 1):
            t.copy_(torch.rand(t.shape, generator=g) * 0.4 + (0.8 if t.dim() == 1
                                                                and "weight" in name else -0.2))


def _specialized(args: argparse.Namespace) -> None:
    from ofa.imagenet_classification.networks import MobileNetV3, ProxylessNASNets

    nc = json.loads(Path(args.net_config).read_text())
    cls = ProxylessNASNets if nc.get("name") == "ProxylessNASNets" else MobileNetV3
    torch.manual_seed(args.seed)
    net = cls.build_from_config(nc)
    g = torch.Generator().manual_seed(args.seed + 1)
    _randomize(net, g)
    net.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {re.sub(r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv.", k): v
          for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd}, out / "init")
    x = torch.randn(2, 3, args.resolution, args.resolution, generator=g)
    torch.save({str(args.resolution): x}, out / "inputs.pt")
    with torch.no_grad():
        logits = net(x)
    (out / "reference.json").write_text(json.dumps({"class": cls.__name__,
                                                    "r": args.resolution,
                                                    "logits": logits.tolist()}))
    print(f"wrote {out}: {cls.__name__} at {args.resolution} px")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", choices=sorted(SPACES), help="supernet mode")
    ap.add_argument("--net-config", help="specialised mode: a net.config (either form)")
    ap.add_argument("--resolution", type=int, default=224, help="specialised mode's size")
    ap.add_argument("--out", required=True)
    ap.add_argument("--subnets", type=int, default=24)
    ap.add_argument("--resolutions", default="160,192,224")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    try:
        import ofa.imagenet_classification  # noqa: F401  (MIT's package, not ofa-edge's)
    except ImportError:
        raise SystemExit("this must run under MIT's package: PYTHONPATH=.mit-ofa") from None
    if args.net_config:
        _specialized(args)
        return
    if not args.space:
        ap.error("give --space or --net-config")
    from ofa.imagenet_classification.elastic_nn.networks import (
        OFAMobileNetV3,
        OFAProxylessNASNets,
    )
    from ofa.utils.pytorch_utils import count_net_flops

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    family, width = SPACES[args.space]
    cls = OFAProxylessNASNets if family == "proxyless" else OFAMobileNetV3
    net = cls(n_classes=1000, dropout_rate=0, width_mult=width, ks_list=[3, 5, 7],
              expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    g = torch.Generator().manual_seed(args.seed + 1)
    _randomize(net, g)
    net.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "state_dict.pt")
    resolutions = [int(r) for r in args.resolutions.split(",")]
    inputs = {r: torch.randn(2, 3, r, r, generator=g) for r in resolutions}
    torch.save({str(r): x for r, x in inputs.items()}, out / "inputs.pt")
    rows = []
    for i in range(args.subnets):
        cfg = net.sample_active_subnet()
        r = resolutions[i % len(resolutions)]
        with torch.no_grad():
            logits = net(inputs[r])
        sub = net.get_active_subnet(preserve_weight=True)
        rows.append({"ks": cfg["ks"], "e": cfg["e"], "d": cfg["d"], "r": r,
                     "logits": logits.tolist(), "net_config": sub.config,
                     "macs": count_net_flops(sub, (1, 3, r, r))})
    (out / "reference.json").write_text(json.dumps({"space": args.space, "width": width,
                                                    "subnets": rows}))
    print(f"wrote {out}: {len(rows)} subnets")


if __name__ == "__main__":
    main()
