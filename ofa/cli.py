"""The one command-line entry point, ``ofa``.

Each sub-command parses its arguments and hands plain values to the module that does the
work; heavy imports happen inside the handlers so ``ofa --help`` is instant. Any expected
failure (bad config, corrupt file, unreachable device) ends with one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


def _human(n: float) -> str:
    return f"{n / 1e6:.1f} M"


@command("space")
def cmd_space(args: argparse.Namespace) -> int:
    from ofa.space import describe, get_space

    kw = {}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.width_mult is not None:
        kw["width_mult"] = args.width_mult
    info = describe(get_space(args.name, **kw))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"search space {info['name']}  (width x{info['width_mult']}, "
          f"{info['num_classes']} classes)")
    print(f"  widths       {info['widths']}")
    print(f"  strides      {info['strides']}  (stem, first block, stages 1-5)")
    print(f"  kernel       {info['ks_list']}")
    print(f"  expand       {info['expand_list']}")
    print(f"  depth        {info['depth_list']}")
    rs = info["resolutions"]
    print(f"  resolution   {rs[0]}..{rs[-1]} ({len(rs)} values)")
    print(f"  subnets      {info['num_subnets_per_resolution']} per resolution, "
          f"{info['num_subnets_total']} in all (1e{info['log10_num_subnets']:.1f})")
    for k, v in info["extremes"].items():
        print(f"  {k:<14} {_human(v['macs'])}MACs  {_human(v['params'])}params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ofa.space import preset_names

    p = argparse.ArgumentParser(prog="ofa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("space", help="describe a search-space preset")
    s.add_argument("name", help=f"preset: {', '.join(preset_names())}")
    s.add_argument("--num-classes", type=int)
    s.add_argument("--width-mult", type=float)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return p


# other modules' parsers are added below as the product grows
_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ofa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ofa {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
