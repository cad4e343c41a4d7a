"""A latency table verified where it is used: kept, adapted or rebuilt (``ofa lut verify``).

A table carries the block ratios of the device, runtime and build that measured it. Used on
a device that did not build it (a shipped table, one copied from another machine, one built
weeks ago) it is first checked against ``k`` whole subnets measured there beside the
reference probe (``deploy/probe.py``), half to fit and half to test:

- **kept**: the table's calibrated predictions (probe units) meet the test half as they are
  (at least ``share`` of them within ``tolerance``);
- **adapted**: one scale fitted on the fit half (the median of measured / predicted) makes
  them meet it; per-resolution scales are used instead when every resolution has two or more
  fit subnets and they meet more of the test half;
- **rebuild**: neither holds; the caller builds a table on the device.

In every case the device's speed states measured now (the probe's times) replace the
table's, so its ms are this device's. The CPU model string decides nothing. The verdict
judges the subnets' probe units as timed; a table adapted (or kept without one) records
the reference subnet's probe units measured beside them (``calibration.reference``,
:func:`deploy.lut.measure.at_reference`): the state its predictions now state, to which
the measurements that follow are brought.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploy.lut import measure_subnets, table_reference
from deploy.lut.calibrate import reference_state
from deploy.probe import probe_summary
from deploy.targets import Target
from deploy.validate import REPEATS
from ofa.errors import InputError
from ofa.space import SearchSpace, SubnetConfig
from search.latency import LatencyPredictor
from search.latency_table import LatencyTable

__all__ = ["Verdict", "verify_table", "verify_configs", "judge"]


@dataclass
class Verdict:
    """What :func:`verify_table` decided.

    Attributes:
        action: ``kept`` | ``adapted`` | ``rebuild``.
        reason: one line saying why (shares of the test half within the tolerance).
        table: the table to use (a copy with this device's speed states, and for
            ``adapted`` its scale(s)); the original for ``rebuild``.
        details: the measurements and fits (JSON-ready).
    """

    action: str
    reason: str
    table: LatencyTable
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one printed line."""
        name = self.table.source or "latency table"
        return f"latency table {name}: {self.action}: {self.reason}"


def verify_configs(space: SearchSpace, resolutions: list[int], k: int, seed: int = 4321
                   ) -> list[SubnetConfig]:
    """``k`` seeded random subnets spread over ``resolutions`` (cycled), for verifying."""
    g = random.Random(seed)
    res = sorted(resolutions)
    return [space.sample(g, r=res[i % len(res)]) for i in range(k)]


def _within(pred: np.ndarray, meas: np.ndarray, tolerance: float) -> float:
    return float(np.mean(np.abs(pred / meas - 1.0) <= tolerance)) if len(meas) else 0.0


#: a table that passes as it is is still adapted when one scale, fitted on half of the
#: subnets, moves the other half's predictions by more than this and cuts their mean error
#: by a quarter: a device a few per cent slower in probe units than the builder would
#: otherwise put every subnet's error on one side, nearer the tolerance
BIAS = 0.03


def _biased(pred: np.ndarray, meas: np.ndarray, fit: np.ndarray, test: np.ndarray,
            scale: float) -> bool:
    """Whether the fit half's ``scale`` is a systematic offset the test half confirms."""
    if abs(scale - 1.0) <= BIAS:
        return False
    err = np.mean(np.abs(pred[test] / meas[test] - 1.0))
    return bool(np.mean(np.abs(pred[test] * scale / meas[test] - 1.0)) < 0.75 * err)


def judge(pred: np.ndarray, meas: np.ndarray, res: np.ndarray, tolerance: float = 0.10,
          share: float = 0.8) -> tuple[str, str, dict[str, Any]]:
    """Decide keep / adapt / rebuild from predictions and measurements in one unit.

    Subnets at even positions (in the given order) fit, odd ones test. Kept: ``share`` of
    the test subnets within ``tolerance`` as it is, and no systematic offset (:data:`BIAS`);
    adapted: so with one scale or per-resolution scales fitted on the fit half; else
    rebuilt. Returns ``(action, reason, fit)``, ``fit``: ``{"scale"}`` or
    ``{"resolution_scale": {r: s}}`` or ``{}``.

    Raises:
        ValueError: fewer than 4 subnets, or arrays of different lengths.
    """
    pred, meas, res = (np.asarray(a, dtype=np.float64) for a in (pred, meas, res))
    if len(pred) < 4 or not len(pred) == len(meas) == len(res):
        raise InputError("verification needs 4 or more subnets, one prediction and one "
                         "measurement each")
    fit, test = np.arange(len(pred)) % 2 == 0, np.arange(len(pred)) % 2 == 1
    as_is = _within(pred[test], meas[test], tolerance)
    n = int(test.sum())
    scale = float(np.median(meas[fit] / pred[fit]))
    if as_is >= share and not _biased(pred, meas, fit, test, scale):
        return "kept", (f"{round(as_is * n)} of {n} test subnets within ±{tolerance:.0%} as "
                        "it is"), {}
    scaled = _within(pred[test] * scale, meas[test], tolerance)
    best: tuple[float, dict[str, Any], str] = (scaled, {"scale": scale},
                                               f"one scale {scale:.3f}")
    rs = sorted(set(res.tolist()))
    if len(rs) > 1 and all((fit & (res == r)).sum() >= 2 for r in rs):
        per = {int(r): float(np.median(meas[fit & (res == r)] / pred[fit & (res == r)]))
               for r in rs}
        mult = np.array([per[int(r)] for r in res])
        by_res = _within(pred[test] * mult[test], meas[test], tolerance)
        if by_res > scaled:
            best = (by_res, {"resolution_scale": per}, "per-resolution scales " + ", ".join(
                f"{r}: {s:.3f}" for r, s in per.items()))
    got, how, text = best
    if got >= share:
        offset = ", all off to one side" if as_is >= share else ""
        return "adapted", (f"{round(as_is * n)} of {n} test subnets within ±{tolerance:.0%} "
                           f"as it is{offset}, {round(got * n)} with {text}"), how
    return "rebuild", (f"{round(as_is * n)} of {n} test subnets within ±{tolerance:.0%} as "
                       f"it is and {round(got * n)} with {text} (need {share:.0%})"), {}


def verify_table(table: LatencyTable, space: SearchSpace, k: int = 12, seed: int = 4321,
                 target: Target | None = None, jobs: int = 1, tolerance: float = 0.10,
                 share: float = 0.8, where: str = "this machine") -> Verdict:
    """Check ``table`` with ``k`` subnets measured beside the probe on ``target`` (None:
    this machine, in process), as many times each as the final measurement times its
    models (``deploy/validate.py``, ``REPEATS``: a verdict that can order a rebuild must not
    follow one batch the device's speed upset; the median kept), and keep, adapt or
    rebuild it (module docstring). A table
    without probe data is compared in ms as it is (it cannot be adapted in probe units).

    Returns a :class:`Verdict` whose ``table`` is a copy carrying this device's speed
    states (``probe.measured`` = ``where``) and, when adapted, the fitted scale(s) in its
    calibration (``scale`` or ``resolution_scale``).

    Raises:
        ValueError: ``k`` below 4.
        deploy.targets.TargetError: the device could not measure.
    """
    if k < 4:
        raise InputError(f"verifying a table needs k >= 4 subnets, got {k}")
    cfgs = verify_configs(space, table.resolutions, k, seed)
    m = measure_subnets(table, space, cfgs, target=target, jobs=jobs, desc="verify",
                        repeats=REPEATS)
    meas = np.asarray(m.get("rel_probe", m["rel"]) if table.probe else m["ms"])
    pred = LatencyPredictor(table, space).units_many(cfgs)
    action, reason, fit = judge(pred, meas, np.array([c.r for c in cfgs]), tolerance, share)
    out = copy.deepcopy(table)
    if table.probe:
        out.probe = {**out.probe, "ms": probe_summary(m["probe_ms"]), "measured": where,
                     "build_ms": table.probe["ms"]}
    if action == "adapted":
        out.calibration = {**out.calibration, **fit}
    if "reference_rel" in m and (action == "adapted" or
                                 not table.reference):
        # the state of the measurements the scale was fitted on
        out.calibration = {**out.calibration, "reference": reference_state(
            table_reference(table, space), m["reference_rel"], measured=where)}
    details = {"action": action, "reason": reason, "k": k, "seed": seed, "fit": fit,
               "unit": table.unit,
               "subnets": [{"config": c.to_dict(), "predicted": float(p), "measured": float(v),
                            "measured_ms": float(ms)}
                           for c, p, v, ms in zip(cfgs, pred, meas, m["ms"])]}
    out.context = {**out.context, "verified": {"on": where, "action": action,
                                               "reason": reason}}
    return Verdict(action, reason, out if action != "rebuild" else table, details)
