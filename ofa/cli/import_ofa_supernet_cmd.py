"""``ofa import-ofa-supernet CKPT``: MIT's published supernet as an ofa-edge run folder."""

from __future__ import annotations

import argparse

NAME, HELP = ("import-ofa-supernet", "import MIT's published Once-for-All supernet "
              "(ofa_mbv3_d234_e346_k357_w1.0 / _w1.2, ofa_proxyless_d234_e346_k357_w1.3) as a run "
              "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="MIT's checkpoint file (a state_dict, as OFA's model "
                   "zoo serves it); nothing is downloaded")
    p.add_argument("--space", required=True, choices=["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"],
                   help="the checkpoint's width")
    p.add_argument("--out", required=True, help="new run folder")


def run(args: argparse.Namespace) -> int:
    from ofa.train.import_mit import import_ofa_supernet

    info = import_ofa_supernet(args.checkpoint, args.space, args.out)
    print(f"wrote {args.out}: {args.space} supernet from {args.checkpoint} "
          f"(sha256 {info['imported']['sha256'][:12]}); evaluate with `ofa eval --checkpoint "
          f"{args.out} --data IMAGENET_DIR`")
    return 0
