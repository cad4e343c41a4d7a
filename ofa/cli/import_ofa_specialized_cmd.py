"""``ofa import-ofa-specialized DIR``: one of OFA's published specialised networks as a
fine-tuned network (``ofa/train/import_specialized.py``)."""

from __future__ import annotations

import argparse

NAME, HELP = ("import-ofa-specialized", "import one of OFA's published specialised networks "
              "(ofa_specialized/<name>/: net.config, run.config, init) as a fine-tuned network")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="the network's folder (net.config, run.config, init), as "
                   "OFA's model zoo serves it; nothing is downloaded")
    p.add_argument("--out", required=True, help="new folder")
    p.add_argument("--space", choices=["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"], default=None,
                   help="the supernet it comes from (default: found from its widths)")


def run(args: argparse.Namespace) -> int:
    from ofa.train.import_specialized import import_ofa_specialized

    info = import_ofa_specialized(args.folder, args.out, args.space)
    imported, out = info["imported"], args.out
    lines = [f"wrote {out}: {info['summary']} at {imported['image_size']} px (sha256 "
             f"{imported['sha256'][:12]}); it is used as a fine-tuned network:",
             f"  ofa eval --checkpoint {out} --data IMAGENET_DIR",
             f"  ofa export --checkpoint {out} --data IMAGENET_DIR --out MODELS"]
    print("\n".join(lines))
    return 0
