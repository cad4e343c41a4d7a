"""A measured budget: the subnet returned for "<= B ms" is one measured to meet B.

A search chooses on predicted latency; a prediction within ±10% can still put the chosen
subnet over its budget. Here every budget's candidates (the search's choice and the Pareto
front's subnets predicted near the budget) are measured on the target beside the reference
probe (``deploy/probe.py``), converted to ms at the stated speed of the table (``nominal``
or ``sustained``, :meth:`search.latency_table.LatencyTable.probe_ms`), and the most accurate
(by the accuracy predictor) whose measured latency meets the budget is returned. When no
candidate meets it, the next-faster front subnets are measured, ``shortlist`` at a time,
until one does (or every subnet predicted under 1.1x the budget was measured).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from ofa.errors import InputError

__all__ = ["candidates_near", "choose_measured_budget", "measure_budgets", "rechoose_over_budget",
           "settle_estimates", "margin_pct", "scale_by_candidates", "MARGIN", "SCALE_CANDIDATES"]

Row = dict[str, Any]  # a search row: {"config", "acc", "latency_ms", ...}

#: a candidate meets a budget when measured at least this share under it: the final
#: measurement of the returned subnet, minutes later, differs from the choice's by a few per
#: cent either way under the drift harness, now and then by up to 12% (``ofa run``s under the
#: harness, ``docs/benchmarks.md``); where it still puts the subnet over the budget, the
#: budget chooses again (:func:`rechoose_over_budget`)
MARGIN = 0.03


def candidates_near(budget_ms: float, front: Sequence[Row], chosen: Row | None = None,
                    k: int = 6, above: float = 0.10) -> list[Row]:
    """Up to ``k`` subnets to measure for ``budget_ms``: ``chosen`` first, then the front's
    subnets predicted within ``[budget / (1 + above) ** 3, budget * (1 + above)]``, most
    accurate first (those predicted a little over the budget may measure under it).

    Raises:
        ValueError: ``k`` below 1 or a budget that is not positive.
    """
    if k < 1 or not budget_ms > 0:
        raise InputError(f"candidates need k >= 1 and a budget > 0 ms (got {k}, {budget_ms})")
    lo, hi = budget_ms / (1 + above) ** 3, budget_ms * (1 + above)
    out = [chosen] if chosen is not None else []
    seen = {_key(r) for r in out}
    for r in sorted(front, key=lambda r: -float(r["acc"])):
        if lo <= float(r["latency_ms"]) <= hi and _key(r) not in seen:
            out.append(r)
            seen.add(_key(r))
    return out[:k]


def _key(r: Row) -> str:
    import json

    return json.dumps(r["config"], sort_keys=True)


def choose_measured_budget(budget_ms: float, rows: Sequence[Row],
                           margin: float = MARGIN) -> Row | None:
    """The most accurate row (``acc``: predicted top-1) whose ``measured_ms`` meets
    ``budget_ms`` with ``margin`` to spare (at most ``budget_ms * (1 - margin)``,
    :data:`MARGIN`); None when none does. Ties go to the faster one."""
    ok = [r for r in rows if float(r["measured_ms"]) <= budget_ms * (1 - margin)]
    return max(ok, key=lambda r: (float(r["acc"]), -float(r["measured_ms"]))) if ok else None


def measure_budgets(budgets: Sequence[float], chosen: Sequence[Row], front: Sequence[Row],
                    measure: Callable[[list[dict[str, Any]]], list[float]], k: int = 6,
                    rounds: int = 4, margin: float = MARGIN) -> list[Row]:
    """For each budget, measure its candidates (:func:`candidates_near`) with ``measure``
    (configs -> ms at the stated speed, one call per round, all budgets together so that
    every candidate is timed in the same interleaved trials) and return one row per budget:
    the chosen candidate (:func:`choose_measured_budget` with ``margin``) with ``measured_ms``,
    ``margin_pct`` (how far under the budget, %), ``candidates`` (every candidate measured,
    with its ``measured_ms``) and ``met`` (False only when ``rounds`` rounds found no
    candidate under the budget: the fastest measured one is returned then). A config
    measured once is not measured again.

    Raises:
        ValueError: as many chosen rows as budgets are needed.
    """
    if len(chosen) != len(budgets):
        raise InputError(f"{len(budgets)} budgets but {len(chosen)} chosen subnets")
    measured: dict[str, float] = {}
    known = [*front, *chosen]  # another budget's choice is a candidate too
    pools = [candidates_near(b, known, c, k) for b, c in zip(budgets, chosen)]
    # when none meets its budget: the other subnets predicted under budget * 1.1, the
    # slowest (most accurate) first
    faster = [sorted((r for r in known if float(r["latency_ms"]) <= b * 1.1
                      and _key(r) not in {_key(x) for x in pool}),
                     key=lambda r: -float(r["latency_ms"]))
              for b, pool in zip(budgets, pools)]
    for _ in range(rounds):
        todo = {_key(r): r for pool in pools for r in pool if _key(r) not in measured}
        if todo:
            ms = measure([r["config"] for r in todo.values()])
            measured.update(zip(todo, ms))
        missing = [i for i, (b, pool) in enumerate(zip(budgets, pools))
                   if choose_measured_budget(b, _with(pool, measured), margin) is None]
        if not missing:
            break
        for i in missing:  # the next-faster subnets of the front
            pools[i] += faster[i][:k]
            faster[i] = faster[i][k:]
    return [_choice(b, _with(pool, measured), margin) for b, pool in zip(budgets, pools)]


def _choice(budget_ms: float, rows: Sequence[Row], margin: float) -> Row:
    """``budget_ms``'s chosen row among measured ``rows`` (each with ``measured_ms``): the
    most accurate that meets it with ``margin`` (:func:`choose_measured_budget`), else the
    fastest with ``met`` False; with ``budget_ms``, ``met``, ``margin_pct`` (how far under
    the budget, %) and ``candidates`` (every row's config, acc, predicted and measured ms)."""
    pick = choose_measured_budget(budget_ms, rows, margin)
    met = pick is not None
    if pick is None:
        pick = min(rows, key=lambda r: float(r["measured_ms"]))
    return {**pick, "budget_ms": budget_ms, "met": met,
            "margin_pct": margin_pct(budget_ms, pick["measured_ms"]),
            "candidates": [_brief(r) for r in rows]}


def margin_pct(budget_ms: float, measured_ms: float) -> float:
    """How far ``measured_ms`` is under ``budget_ms``, % of the budget (negative: over)."""
    return 100.0 * (budget_ms - float(measured_ms)) / budget_ms


def _brief(r: Row) -> Row:
    """A candidate as a chosen row lists it: config, acc, predicted and measured ms (and
    ``estimated`` where the measured ms is an estimate)."""
    out = {k: r[k] for k in ("config", "acc", "latency_ms", "measured_ms")}
    return {**out, "estimated": True} if r.get("estimated") else out


def _table_ms(r: Row) -> float:
    """A row's prediction by the latency table itself (``table_ms`` where
    :func:`scale_by_candidates` scaled ``latency_ms``)."""
    return float(r.get("table_ms", r["latency_ms"]))


def _with(pool: Sequence[Row], measured: dict[str, float]) -> list[Row]:
    return [{**r, "measured_ms": measured[_key(r)]} for r in pool if _key(r) in measured]


#: a chosen subnet's prediction is scaled by the other measured candidates only when at
#: least this many were measured (:func:`scale_by_candidates`)
SCALE_CANDIDATES = 4


def scale_by_candidates(chosen: Sequence[Row], least: int = SCALE_CANDIDATES) -> list[Row]:
    """``chosen`` (:func:`measure_budgets`) with each row's prediction adapted by how the
    *other* subnets measured near the budgets ran against the table: ``latency_ms`` times
    the median over every measured candidate of every budget but the row's own config of
    (``measured_ms`` / ``latency_ms``), the table's prediction kept as ``table_ms`` and the
    scale as ``candidate_scale`` (``{"scale", "candidates"}``). Rows with fewer than
    ``least`` other candidates keep the table's prediction (``table_ms`` added).

    Why: a table verified on arrival (``deploy/verify.py``) is adapted on random subnets,
    while a search returns the most accurate subnets under each budget (the widest expand
    ratios and kernels a budget allows), which a table built on another machine can
    mispredict alike by a few per cent: in fifteen ``ofa run``s under the drift harness on
    this project's AMD VM, with the shipped digits table built on an Intel one, the chosen
    subnets' final measurements came out 2.1% under their predictions on average (s.d.
    6.5%), and the budget2 subnets 7-11% under at the device's fast state; the other
    candidates' median ratio would have brought the mean to -0.4%
    (``docs/benchmarks.md``). Leaving the row's own config out keeps each prediction
    independent of its own measurement: the final measurement still tests it.

    Raises:
        ValueError: ``least`` below 1.
    """
    if least < 1:
        raise InputError(f"a candidate scale needs least >= 1, got {least}")
    ratios: dict[str, float] = {}
    for r in chosen:
        for c in r.get("candidates", []):
            if (not c.get("estimated") and c.get("measured_ms") and c.get("latency_ms")
                    and float(c["latency_ms"]) > 0):
                ratios[_key(c)] = float(c["measured_ms"]) / float(c["latency_ms"])
    out = []
    for r in chosen:
        table_ms = _table_ms(r)
        others = [v for k, v in ratios.items() if k != _key(r)]
        if len(others) < least:
            out.append({**r, "table_ms": table_ms})
            continue
        scale = float(statistics.median(others))
        out.append({**r, "table_ms": table_ms, "latency_ms": table_ms * scale,
                    "candidate_scale": {"scale": scale, "candidates": len(others)}})
    return out


def rechoose_over_budget(chosen: Sequence[Row], final_ms: Sequence[float | None],
                         known: Sequence[Row] = (), margin: float = MARGIN) -> list[Row]:
    """The final measurement of the returned subnets (their deployed models, minutes after
    the choice) as the arbiter of their budgets: each chosen row (:func:`measure_budgets`)
    whose ``final_ms`` exceeds its ``budget_ms`` chooses again among its ``candidates``,
    every chosen config's measurement now the larger of its two (the one the budget step
    took and the final one), with ``margin`` (:func:`choose_measured_budget`). A row that met
    its budget is returned as it was. Where no candidate meets the budget any more, the
    most accurate of ``known`` (search rows with predictions, the Pareto front) not yet
    measured whose prediction, scaled by the over-budget subnet's final over predicted
    time, meets it with the margin is chosen, its ``measured_ms`` that estimate and
    ``estimated`` True until the final measurement times it (:func:`settle_estimates`);
    where none does either, the row comes back as the fastest candidate, ``met`` False.
    ``known``: also the rows whose other fields a new choice takes (matched by config).

    Returns one row per budget, in order; a new choice has ``rechosen`` True and
    ``final_over_ms`` (the final measurement that put the old one over).

    Raises:
        ValueError: as many final measurements as chosen rows are needed.
    """
    if len(final_ms) != len(chosen):
        raise InputError(f"{len(chosen)} chosen subnets but {len(final_ms)} final measurements")
    worst = {}
    for r, f in zip(chosen, final_ms):
        worst[_key(r)] = max(float(r["measured_ms"]), float(f) if f is not None else 0.0)
    full = {_key(r): r for r in known}
    out = []
    for r, f in zip(chosen, final_ms):
        b = float(r["budget_ms"])
        if f is None or float(f) <= b or not r.get("candidates"):
            out.append(r)
            continue
        cands = [{**c, "measured_ms": max(float(c["measured_ms"]), worst.get(_key(c), 0.0))}
                 for c in r["candidates"]]
        new = _choice(b, cands, margin)
        if not new["met"]:
            new = _scaled_from_front(b, r, float(f), known, cands, margin) or new
        if _key(new) == _key(r):  # nothing better: it stays, now known to be over
            out.append({**r, "met": False, "final_over_ms": float(f)})
            continue
        keep = {k: r[k] for k in ("label", "search_choice", "shortlist") if k in r}
        out.append({**keep, **full.get(_key(new), {}), **new, "rechosen": True,
                    "final_over_ms": float(f)})
    return out


def _scaled_from_front(budget_ms: float, over: Row, final_ms: float, known: Sequence[Row],
                       cands: Sequence[Row], margin: float) -> Row | None:
    """The most accurate row of ``known`` not among ``cands`` (none of which meets the
    budget) whose prediction times ``final_ms`` over ``over``'s table prediction
    (``table_ms``, else ``latency_ms``: how much slower than the table the final
    measurement found ``over``) meets ``budget_ms`` with ``margin``, as
    :func:`_choice` makes a chosen row, with that estimate as ``measured_ms`` and
    ``estimated`` True; None when none does."""
    ratio = max(1.0, final_ms / _table_ms(over))
    seen = {_key(c) for c in cands}
    rows = [{**k, "measured_ms": float(k["latency_ms"]) * ratio, "estimated": True}
            for k in known if _key(k) not in seen]
    pick = choose_measured_budget(budget_ms, rows, margin)
    return None if pick is None else _choice(budget_ms, [*cands, pick], margin)


def settle_estimates(chosen: Sequence[Row], final_ms: Sequence[float | None]) -> list[Row]:
    """``chosen`` with every row whose ``measured_ms`` was an estimate
    (:func:`rechoose_over_budget`) given its final measurement instead: ``measured_ms``,
    ``margin_pct`` and ``met`` from it, ``estimated`` dropped (from its own entry among its
    ``candidates`` too). Other rows as they were.

    Raises:
        ValueError: as many final measurements as chosen rows are needed.
    """
    if len(final_ms) != len(chosen):
        raise InputError(f"{len(chosen)} chosen subnets but {len(final_ms)} final measurements")
    out = []
    for r, f in zip(chosen, final_ms):
        if not r.get("estimated") or f is None:
            out.append(r)
            continue
        b = float(r["budget_ms"])
        rest = {k: v for k, v in r.items() if k != "estimated"}
        cands = [_brief({**c, "estimated": False, "measured_ms": float(f)})
                 if _key(c) == _key(r) else c for c in r.get("candidates", [])]
        out.append({**rest, "measured_ms": float(f), "met": float(f) <= b,
                    "margin_pct": margin_pct(b, f), "candidates": cands})
    return out
