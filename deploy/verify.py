"""A latency table verified where it is used: kept, adapted or rebuilt (``ofa lut verify``).

A table carries the block ratios of the device, runtime and build that measured it. Used on
a device that did not build it (a shipped table, one copied from another machine, one built
weeks ago) it is first checked against ``k`` whole subnets measured there beside the
reference probe (``deploy/probe.py``), in two halves that each test the other's fit
(:func:`judge`):

- **kept**: no offset is supported by the measurements (a scale is fitted only where its
  t-statistic and size say it is not the timing noise) and the table's calibrated
  predictions (probe units) meet them as they are (at least ``share`` of them within
  ``tolerance``);
- **adapted**: the supported offsets — one scale, and per-resolution scales for the
  resolutions whose subnets sit apart from it (a table built where 20 px inputs fall out
  of a cache that 12 px ones fit) — fitted on one half make the other half meet it;
- **rebuild**: neither holds; the caller builds a table on the device.

In every case the device's speed states measured now (the probe's times) replace the
table's, so its ms are this device's. The CPU model string decides nothing. The verdict
judges the subnets' probe units as timed, each brought to the median state of the
verification's own timings (the reference subnet's probe units beside it,
:func:`deploy.lut.measure.at_reference`, as far as the table's recorded weight says its
subnets follow the reference, or, for a table that recorded none, as far as the
verification's own passes show: :func:`deploy.lut.measure.tracking_weight`); a table
adapted (or kept without one) records that state and weight (``calibration.reference``):
the one its predictions now state, to which the measurements that follow are brought.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploy.lut import at_reference, measure_subnets, table_reference
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


#: an offset smaller than this (3%) is left in place: within the timing noise of one
#: verification, and a correction that size would move predictions for nothing
BIAS = 0.03
#: how many standard errors an offset must lie from zero before it is fitted (a t-statistic
#: over the subnets' spread within resolutions): 2.5 puts a scale on a table that has none
#: in about 7% of 12-subnet verifications whose measurements scatter 4% around the table
#: (simulated), and finds the +8..+15% of the 20 px subnets that a 12-subnet verification
#: of the shipped digits table saw on a 2-core EPYC VM (docs/latency.md)
T_MIN = 2.5
#: the spread assumed at least (natural log units, ~1%), so that exact measurements (a
#: simulated device) do not make every offset certain
SPREAD_FLOOR = 0.01


@dataclass(frozen=True)
class _Offsets:
    """Which offsets of ``log(measured / predicted)`` the measurements support: one over
    every subnet (``overall``), and resolutions (``own``) that differ from it."""

    overall: bool
    own: tuple[int, ...]

    def multipliers(self, logr: np.ndarray, res: np.ndarray, fit: np.ndarray
                    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Multipliers for every subnet, and the table's calibration entry, fitted on the
        subnets ``fit`` (a boolean mask): exp of the mean log ratio (over them, or over
        those of an ``own`` resolution; a resolution without subnets in ``fit`` gets the
        overall one)."""
        base = float(np.mean(logr[fit])) if self.overall else 0.0
        per = {int(r): float(np.exp(np.mean(logr[fit & (res == r)])))
               if r in self.own and (fit & (res == r)).any() else float(np.exp(base))
               for r in sorted(set(res.tolist()))}
        mult = np.array([per[int(r)] for r in res])
        entry: dict[str, Any] = ({"resolution_scale": per} if self.own else
                                 {"scale": float(np.exp(base))} if self.overall else {})
        return mult, entry

    def text(self, entry: dict[str, Any]) -> str:
        if "resolution_scale" in entry:
            return "resolution scales " + ", ".join(
                f"{r}: {s:.3f}" for r, s in entry["resolution_scale"].items())
        return f"one scale {entry['scale']:.3f}"


def _supported(logr: np.ndarray, res: np.ndarray) -> _Offsets:
    """The offsets whose t-statistic (mean over its standard error, with the spread pooled
    within resolutions) exceeds :data:`T_MIN` and whose size exceeds :data:`BIAS`: first
    the overall one, then each resolution's from it (two or more subnets; four 20 px
    subnets of the shipped digits table, 5-15% under their predictions on a 2-core EPYC VM
    where the 12 and 16 px ones were 0-8% under, stood 2.8-3.6 standard errors apart in
    four verifications, ``docs/latency.md``)."""
    rs = sorted(set(res.tolist()))
    means = {r: float(np.mean(logr[res == r])) for r in rs}
    dof = len(logr) - len(rs)
    resid = logr - np.array([means[r] for r in res.tolist()])
    spread = max(float(np.sqrt(np.sum(resid ** 2) / dof)), SPREAD_FLOOR) if dof > 0 else np.inf
    overall = float(np.mean(logr))

    def supported(offset: float, se: float) -> bool:
        return abs(offset) / se > T_MIN and abs(np.expm1(offset)) > BIAS

    k = len(logr)
    use = supported(overall, spread / np.sqrt(k))
    base = overall if use else 0.0
    # a resolution's mean against the overall mean, which includes its own subnets: the
    # difference's standard error is spread * sqrt(1/n - 1/k), not spread / sqrt(n)
    own = tuple(int(r) for r in rs if len(rs) > 1 and (n := int((res == r).sum())) >= 2
                and supported(means[r] - base,
                              spread * np.sqrt(1.0 / n - (1.0 / k if use else 0.0))))
    return _Offsets(use, own)


def _halves(res: np.ndarray) -> np.ndarray:
    """A boolean mask of the first half: each resolution's subnets alternate between the
    halves (in the given order), so that both halves hold every resolution."""
    first = np.zeros(len(res), dtype=bool)
    for r in set(res.tolist()):
        first[np.flatnonzero(res == r)[::2]] = True
    return first


def judge(pred: np.ndarray, meas: np.ndarray, res: np.ndarray, tolerance: float = 0.10,
          share: float = 0.8) -> tuple[str, str, dict[str, Any]]:
    """Decide keep / adapt / rebuild from predictions and measurements in one unit.

    The offsets the measurements support (:func:`_supported`: one scale, and resolutions
    whose own scale differs from it, each at :data:`T_MIN` standard errors and over
    :data:`BIAS`) make the model. None: the table is kept when ``share`` of the subnets
    are within ``tolerance`` as it is. Else it is adapted when ``share`` of them are within
    with that model fitted on the other half (the subnets split in two halves, each
    resolution's alternating: each half tests the fit of the other), with the scales fitted
    on every subnet. Otherwise it is rebuilt. Returns ``(action, reason, fit)``, ``fit``:
    ``{"scale": s}`` or ``{"resolution_scale": {r: s}}`` (multipliers of the predictions
    as given) or ``{}``.

    Raises:
        ofa.errors.InputError: fewer than 4 subnets, arrays of different lengths, or a
            prediction or measurement that is not positive.
    """
    pred, meas = (np.asarray(a, dtype=np.float64) for a in (pred, meas))
    res = np.asarray(res).astype(int)
    if len(pred) < 4 or not len(pred) == len(meas) == len(res):
        raise InputError("verification needs 4 or more subnets, one prediction and one "
                         "measurement each")
    if not (np.all(pred > 0) and np.all(meas > 0)):
        raise InputError("verification needs positive predictions and measurements")
    k = len(pred)
    as_is = _within(pred, meas, tolerance)
    head = f"{round(as_is * k)} of {k} subnets within ±{tolerance:.0%} as it is"
    logr = np.log(meas / pred)
    offsets = _supported(logr, res)
    if not (offsets.overall or offsets.own):
        if as_is >= share:
            return "kept", f"{head}, no offset the measurements support", {}
        return "rebuild", (f"{head} (need {share:.0%}) and no offset the measurements "
                           "support"), {}
    first = _halves(res)
    cross = np.empty(k)
    for fit in (first, ~first):
        cross[~fit] = offsets.multipliers(logr, res, fit)[0][~fit]
    tested = _within(pred * cross, meas, tolerance)
    _, entry = offsets.multipliers(logr, res, np.ones(k, dtype=bool))
    with_ = (f"{round(tested * k)} with {offsets.text(entry)} (each half fitted on the "
             "other)")
    if tested >= share:
        return "adapted", f"{head}, {with_}", entry
    return "rebuild", f"{head} and {with_} (need {share:.0%})", {}


def _compose(table: LatencyTable, entry: dict[str, Any]) -> dict[str, Any]:
    """``table``'s calibration with the verification's ``entry`` applied on top of the
    scale(s) it already has (its predictions, which the entry multiplies, include them):
    one ``scale`` when both are one scale, else ``resolution_scale`` for every resolution
    of the table (and no ``scale``)."""
    cal = dict(table.calibration)
    if "scale" in entry and not cal.get("resolution_scale"):
        cal["scale"] = float(cal.get("scale", 1.0)) * entry["scale"]
        return cal
    new = entry.get("resolution_scale") or {}
    one = float(entry.get("scale", 1.0))
    cal.pop("scale", None)
    cal["resolution_scale"] = {int(r): float(table.scale(r)) * float(new.get(int(r), one))
                               for r in table.resolutions}
    return cal


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
    seen = m.get("reference_seen")
    if table.probe and seen:
        # each subnet brought to the median state of the verification's own timings (not
        # the table's: a device whose whole subnets run slower than the table's needs a
        # scale), so that one upset batch does not move the subnets timed in it
        meas = np.asarray(at_reference({"rel": m.get("rel_probe", m["rel"]),
                                        "reference_rel": m["reference_rel"],
                                        "pairs": m.get("pairs")},
                                       float(np.median(seen)), m["reference_weight"]))
    else:
        meas = np.asarray(m.get("rel_probe", m["rel"]) if table.probe else m["ms"])
    pred = LatencyPredictor(table, space).units_many(cfgs)
    action, reason, fit = judge(pred, meas, np.array([c.r for c in cfgs]), tolerance, share)
    out = copy.deepcopy(table)
    if table.probe:
        out.probe = {**out.probe, "ms": probe_summary(m["probe_ms"]), "measured": where,
                     "build_ms": table.probe["ms"]}
    if action == "adapted":
        out.calibration = _compose(table, fit)
    if table.probe and seen and (action == "adapted" or not table.reference):
        # the state of the measurements the scale was fitted on
        out.calibration = {**out.calibration, "reference": reference_state(
            table_reference(table, space), seen, weight=m["reference_weight"],
            measured=where)}
    details = {"action": action, "reason": reason, "k": k, "seed": seed, "fit": fit,
               "unit": table.unit,
               "subnets": [{"config": c.to_dict(), "predicted": float(p), "measured": float(v),
                            "measured_ms": float(ms)}
                           for c, p, v, ms in zip(cfgs, pred, meas, m["ms"])]}
    out.context = {**out.context, "verified": {"on": where, "action": action,
                                               "reason": reason}}
    return Verdict(action, reason, out if action != "rebuild" else table, details)
