"""The serving agent's wire protocol, shared by both ends. Torch-free, standard library only.

The host (``deploy.targets.ssh.SSHTarget``) and the agent (``python -m
deploy.ontarget.agent --serve``, :func:`deploy.ontarget.agent.serve`) exchange JSON lines:
one request line in, progress lines and one answer line out. Every request names its
operation and the protocol version it speaks::

    {"v": 2, "op": "bench", "models": [...], "threads": 1, "warmup": 3, ...}

Operations (:data:`OPS`):

- ``prepare`` ``{runtime}``: import the runtime now; answers ``{runtime, runtime_version,
  machine}``.
- ``bench`` ``{models, threads, files, compression, reuse, delete, warmup, runs, trials,
  probe, probe_bound, retime}``: load and time the batch in interleaved trials; answers the
  batch answer (``deploy/ontarget/agent.py``'s module docstring).
- ``load`` ``{models, threads, workers, files, compression, reuse, delete}``: load the batch
  and hold it; answers ``{loaded, load_s}``.
- ``time`` ``{warmup, runs, trials, probe, ...}``: time the held batch; answers as ``bench``.
- ``top1`` ``{models, data, meta, threads, files, compression, reuse}``: each model's top-1
  on its evaluation images; answers ``{models: [{model, top1, images}], machine}``.

Every answer line carries ``"v"``; while the agent works it writes ``{"v", "progress",
"of"}`` lines at least every few seconds; a failed request is answered ``{"v", "error":
one line, "code": 2 | 3}`` (3: the runtime is not installed). ``files`` hold model and data
bytes inline (base64, of zlib when ``compression`` is ``"zlib"``); ``reuse`` names files sent
inline in the previous request instead of sending them again. A request of another protocol
version is refused with one line naming both versions, and the host refuses an answer
without its version the same way: an agent copy from another ofa-edge release never
half-works. Documented for users in ``docs/formats.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.ontarget.errors import TargetInputError

__all__ = ["PROTOCOL", "OPS", "Request", "ProtocolError", "answer", "check_answer"]

#: the wire protocol's version: 1 told requests apart by their keys, 2 names the operation
PROTOCOL = 2
#: the operations an agent serves
OPS = ("prepare", "bench", "load", "time", "top1")


class ProtocolError(TargetInputError):
    """A line that is not a request (or answer) of this protocol version."""


@dataclass
class Request:
    """One request line (module docstring). ``models``/``data`` name files inline in
    ``files`` or already on the target; ``meta`` holds one ``model.json`` dict per model
    (``top1``); the timing fields are :meth:`deploy.ontarget.runtimes.TimingProtocol.fields`."""

    op: str
    models: list[str] = field(default_factory=list)
    threads: int = 1
    workers: int | None = None
    files: dict[str, str] = field(default_factory=dict)
    compression: str | None = None
    reuse: list[str] = field(default_factory=list)
    delete: bool = False
    data: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    runtime: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The request as its JSON object: ``v``, ``op``, the timing fields at the top
        level, empty and default fields left out."""
        d = {k: v for k, v in asdict(self).items() if k not in ("op", "timing")
             and v not in (None, [], {}, False)}
        if d.get("threads") == 1:
            d.pop("threads")
        return {"v": PROTOCOL, "op": self.op, **d, **self.timing}

    def to_line(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def parse(cls, line: str) -> Request:
        """A request line, checked: JSON object, this version, a known operation, fields of
        the right kinds.

        Raises:
            ProtocolError: one line saying what is wrong (another version names both).
        """
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"not a request line ({exc})") from None
        if not isinstance(d, dict):
            raise ProtocolError("not a request line (not a JSON object)")
        if d.get("v") != PROTOCOL:
            raise ProtocolError(f"request of protocol version {d.get('v', 1)!r}; this agent "
                                f"speaks version {PROTOCOL} (agent and host come from "
                                "different ofa-edge releases)")
        if d.get("op") not in OPS:
            raise ProtocolError(f"unknown operation {d.get('op')!r}; known: {list(OPS)}")
        timing = {k: d.pop(k) for k in _TIMING if k in d}
        d.pop("v")
        try:
            req = cls(**d, timing=timing)
        except TypeError as exc:
            raise ProtocolError(f"{d['op']} request: {exc}") from None
        req._check()
        return req

    def _check(self) -> None:
        kinds = {"models": list, "files": dict, "reuse": list, "data": list, "meta": list}
        for k, kind in kinds.items():
            if not isinstance(getattr(self, k), kind):
                raise ProtocolError(f"{self.op} request: {k} must be a JSON "
                                    f"{'list' if kind is list else 'object'}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or \
                self.threads < 1:
            raise ProtocolError(f"{self.op} request: threads must be an integer >= 1")
        if self.compression not in (None, "zlib"):
            raise ProtocolError(f"{self.op} request: compression {self.compression!r} is "
                                "not zlib")
        if self.op == "prepare" and not isinstance(self.runtime, str):
            raise ProtocolError("prepare request: runtime must be a name")
        if self.op == "top1" and not len(self.models) == len(self.data) == len(self.meta):
            raise ProtocolError("top1 request: models, data and meta must list one entry "
                                "per model")


#: the timing protocol's fields, carried at the top level of bench and time requests
_TIMING = ("warmup", "runs", "trials", "probe", "probe_bound", "retime")


def answer(obj: dict[str, Any]) -> str:
    """An answer (or progress) line: ``obj`` with the protocol version."""
    return json.dumps({"v": PROTOCOL, **obj})


def check_answer(obj: Any, where: str) -> dict[str, Any]:
    """An answer line's object, checked for this protocol version.

    Raises:
        ProtocolError: not an object, or of another version (one line, naming ``where``).
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: the agent's answer is not a JSON object")
    if obj.get("v") != PROTOCOL:
        raise ProtocolError(f"{where}: the agent speaks protocol version {obj.get('v', 1)!r}, "
                            f"this host {PROTOCOL}: its copy on the target comes from another "
                            "ofa-edge release (remove the remote folder, or pass the same "
                            "release's --python environment)")
    return obj
