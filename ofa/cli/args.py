"""Argument types and shared option groups of the ``ofa`` commands, checked at parse time.

Every numeric option goes through one of these types, so a bad value is refused by argparse
with one line (``ofa train: error: argument --batch-size: must be an integer >= 1, got 0``)
before any work starts. Torch-free and cheap to import.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol
from ofa.errors import InputError
from ofa.lifetime import default_jobs  # noqa: F401  (the commands' --jobs default)

__all__ = ["int_range", "float_range", "int_list", "float_list", "choice_list",
           "add_target_args", "add_target_conn_args", "add_compute_args", "autocast_of",
           "deployed_precision_of", "target_options",
           "device_name", "default_workers", "load_subnet", "SEED", "CliError"]


#: the autocast dtypes (ofa/device.py's AUTOCASTS; restated so that this module stays torch-free)
AUTOCASTS = ("auto", "fp32", "bf16", "fp16")


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (either end open when None)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {_range(lo, hi)}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
            or (hi is not None and v > hi)
        if bad:
            what = f"> {lo:g}" + (f" and <= {hi:g}" if hi is not None else "") if lo_open \
                else _range(lo, hi)
            raise argparse.ArgumentTypeError(f"must be a finite number {what}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"in {lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _list(item: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected a comma list such as 1,2,3, got {text!r}")
        return [item(p) for p in parts]

    parse.__name__ = "list"
    return parse


def int_list(lo: int | None = None, hi: int | None = None) -> Callable[[str], list[int]]:
    """A comma list of integers in ``[lo, hi]``, e.g. ``--resolutions 16,20``."""
    return _list(int_range(lo, hi))


def float_list(lo: float = 0.0) -> Callable[[str], list[float]]:
    """A comma list of finite numbers ``> lo``, e.g. ``--budgets 5,8,12``."""
    return _list(float_range(lo, lo_open=True))


def choice_list(choices: Callable[[], list[str]] | list[str], what: str
                ) -> Callable[[str], list[str]]:
    """A non-empty comma list of names from ``choices`` (de-duplicated, in order)."""

    def item(text: str) -> str:
        allowed = choices() if callable(choices) else choices
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; allowed: "
                                             f"{', '.join(allowed)}")
        return text

    parse = _list(item)
    return lambda text: list(dict.fromkeys(parse(text)))


def add_target_conn_args(p: argparse.ArgumentParser) -> None:
    """Where to measure: ``--target`` and the SSH/adb connection options."""
    p.add_argument("--target", default="local", type=_target_spec,
                   help="local | ssh://user@host[:port] | adb[:serial]")
    p.add_argument("--python", default="python3", help="interpreter on an SSH device")
    p.add_argument("--insecure", action="store_true", help="SSH: skip host-key checking")
    p.add_argument("--known-hosts", help="SSH: known_hosts file to check against")
    p.add_argument("--identity", help="SSH: private key file")
    p.add_argument("--benchmark-binary", help="adb: TFLite benchmark_model for the phone")


def add_target_args(p: argparse.ArgumentParser, runs: int = TimingProtocol.runs) -> None:
    """:func:`add_target_conn_args` plus the timing protocol and thread count."""
    p.add_argument("--threads", type=int_range(1, 256), default=1)
    p.add_argument("--runs", type=int_range(1, 100_000), default=runs,
                   help="timed invokes per trial")
    p.add_argument("--warmup", type=int_range(0, 100_000), default=TimingProtocol.warmup,
                   help="untimed invokes before each trial")
    p.add_argument("--trials", type=int_range(1, 1000), default=TimingProtocol.trials,
                   help="rounds (interleaved over the models timed together)")
    add_target_conn_args(p)


def _target_spec(text: str) -> str:
    ok = text == "local" or text == "adb" or text.startswith("adb:") or (
        text.startswith("ssh://") and len(text) > len("ssh://"))
    if not ok:
        raise argparse.ArgumentTypeError(f"unknown target {text!r}; use local, "
                                         "ssh://user@host[:port] or adb[:serial]")
    return text


def target_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``deploy.targets.parse_target`` keyword arguments given by the device flags."""
    return {"python": args.python, "insecure": args.insecure, "known_hosts": args.known_hosts,
            "identity": args.identity, "benchmark_binary": args.benchmark_binary}


def add_compute_args(p: argparse.ArgumentParser, workers: bool = False,
                     deployed: bool = False) -> None:
    """``--device`` and ``--autocast``: the torch device tensors are computed on and the
    forward pass's autocast dtype (:mod:`ofa.device`); with ``workers``, ``--workers`` too
    (data-loading processes, default the cores but one, at most 8). ``deployed`` (``ofa
    run``) adds ``--precision fp32|int8``, the deployed models' numeric format (int8: int8
    latency table, int8 exports measured). Elsewhere ``--precision`` is the old spelling of
    ``--autocast``, accepted for one release with a note (:func:`autocast_of`)."""
    p.add_argument("--device", type=device_name, default="auto",
                   help="the torch device: auto (a CUDA GPU when one is visible) | cpu | "
                   "cuda | cuda:N")
    p.add_argument("--autocast", default=None, choices=list(AUTOCASTS),
                   help="the forward pass's dtype (auto: bf16 on CUDA, fp32 on CPU); weights "
                   "and checkpoints stay fp32")
    if deployed:
        p.add_argument("--precision", default=None, choices=["fp32", "int8", "auto", "bf16",
                                                              "fp16"],
                       help="the deployed models' numeric format: fp32 | int8 (int8: search "
                       "and measure int8 models); auto/bf16/fp16: the old spelling of "
                       "--autocast")
    else:
        p.add_argument("--precision", default=None, choices=list(AUTOCASTS),
                       help=argparse.SUPPRESS)  # the old spelling of --autocast
    if workers:
        p.add_argument("--workers", type=int_range(0, 256), default=default_workers(),
                       help="data-loading processes (0: decode in this process; default "
                       f"here {default_workers()})")


def autocast_of(args: argparse.Namespace, deployed: bool = False) -> str:
    """The autocast dtype ``--autocast`` asks for, or one given by its old spelling
    ``--precision auto|fp32|bf16|fp16`` (a one-line note on stderr); ``auto`` by default.
    With ``deployed`` (``ofa run``), ``--precision fp32|int8`` is the deployed models'
    precision instead (:func:`deployed_precision_of`)."""
    old = getattr(args, "precision", None)
    if old in AUTOCASTS and not (deployed and old == "fp32"):
        print(f"ofa: --precision {old} is now --autocast {old} (the dtype the network "
              "computes in while training and evaluating); the old spelling goes in the next "
              "release", file=sys.stderr)
        if args.autocast is None:
            return old
    return args.autocast or "auto"


def deployed_precision_of(args: argparse.Namespace) -> str:
    """``ofa run``'s deployed-model precision: ``int8`` when ``--precision int8``, else
    ``fp32``."""
    return "int8" if getattr(args, "precision", None) == "int8" else "fp32"


def default_workers() -> int:
    """Data-loading processes by default: the cores but one, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))




def device_name(text: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (whether a GPU is there is checked when
    the command starts, before any data is read)."""
    t = text.strip()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")


def load_subnet(value: str, space: Any, seed: int = 0) -> Any:
    """``max`` | ``min`` | ``random`` | path to a JSON subnet config, a search result row, a
    search result (its best subnet) or OFA's published ``net.config`` (with its ``run.config``
    beside it) -> a :class:`~ofa.space.SubnetConfig` validated against ``space``.

    Raises:
        ValueError: unreadable file or a config outside the space.
    """
    import random

    from ofa.fileio import read_json
    from ofa.space import SubnetConfig

    if value == "max":
        return space.max_subnet()
    if value == "min":
        return space.min_subnet()
    if value == "random":
        return space.sample(random.Random(seed))
    data = read_json(value, "subnet config")
    if isinstance(data, dict) and "blocks" in data and "first_conv" in data:
        return _from_net_config(value, data, space)
    if isinstance(data, dict) and ("best" in data or "front" in data):
        from search.evolution import result_rows

        data = result_rows(data, value)[0]  # a search result: its best subnet
    if isinstance(data, dict) and "config" in data:
        data = data["config"]
    try:
        return space.validate(SubnetConfig.from_dict(data))
    except ValueError as exc:
        raise InputError(f"{value}: {exc}") from None


def _from_net_config(value: str, data: dict, space: Any) -> Any:
    """OFA's published ``net.config``; the resolution comes from OFA's ``run.config`` beside
    it (``image_size``), as in OFA's specialised-network folders.

    Raises:
        ValueError: no usable ``run.config``, or a network outside ``space``.
    """
    from pathlib import Path

    from ofa.fileio import read_json
    from ofa.space import subnet_from_net_config

    run_config = Path(value).with_name("run.config")
    if not run_config.is_file():
        raise InputError(f"{value}: an OFA net.config gives no resolution; put OFA's "
                         f"run.config (with image_size) beside it")
    size = read_json(run_config, "OFA run.config").get("image_size")
    size = size[0] if isinstance(size, list) and size else size
    if isinstance(size, bool) or not isinstance(size, int):
        raise InputError(f"{run_config}: image_size must be a resolution, got {size!r}")
    try:
        return subnet_from_net_config(space, data, size)
    except ValueError as exc:
        raise InputError(f"{value}: {exc}") from None


#: ``--seed`` range (numpy and torch seeds are 32-bit)
SEED = int_range(0, 2**32 - 1)
