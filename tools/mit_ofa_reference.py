"""Reference outputs from MIT's Once-for-All package, for the equivalence test of our importer.

Runs under MIT's package (PyPI ``ofa``), never in ofa-edge's environment: both import as
``ofa``. Install it into its own folder and put only that folder on the path::

    pip install --no-deps --target .mit-ofa "ofa==0.1.0.post202307202001"
    PYTHONPATH=.mit-ofa python tools/mit_ofa_reference.py --width 1.2 --out ref_w12

Writes ``OUT/state_dict.pt`` (MIT's supernet with seeded random weights and non-trivial BN
statistics, in MIT's key names), ``OUT/inputs.pt`` (fixed images per resolution) and
``OUT/reference.json``: for each sampled subnet its config (``ks``, ``e``, ``d``, ``r``), the
logits MIT's supernet gives in eval mode, MIT's ``net.config`` of the extracted subnet and the
MACs MIT counts for it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, required=True, help="1.0 or 1.2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--subnets", type=int, default=24)
    ap.add_argument("--resolutions", default="160,192,224")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.utils.pytorch_utils import count_net_flops

    import ofa  # MIT's

    assert hasattr(ofa, "imagenet_classification"), "this must run under MIT's package"
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    net = OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=args.width,
                         ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    g = torch.Generator().manual_seed(args.seed + 1)
    for name, t in net.state_dict().items():  # non-trivial BN, kernel transforms, SE
        if name.endswith("running_mean"):
            t.copy_(torch.rand(t.shape, generator=g) - 0.5)
        elif name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("matrix"):
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
        elif name.endswith("bias") or (name.endswith("weight") and t.dim() == 1):
            t.copy_(torch.rand(t.shape, generator=g) * 0.4 + (0.8 if t.dim() == 1
                                                                and "weight" in name else -0.2))
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
    (out / "reference.json").write_text(json.dumps({"width": args.width, "subnets": rows}))
    print(f"wrote {out}: {len(rows)} subnets")


if __name__ == "__main__":
    main()
