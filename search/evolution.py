"""Evolutionary subnet search with Optuna's NSGA-II (OFA section 4; Deb et al. 2002).

Every gene (kernel and expand per block, depth per stage, resolution) is suggested on every
trial, so NSGA-II's intersection search space is the whole space. A whole generation is asked
for with ``study.ask()``, scored by one batched call of the accuracy and latency predictors,
and told back with ``study.tell()``. Budgets are constraints ``value - budget <= 0`` set with
``trial.set_constraint``. Single-budget mode maximises predicted accuracy; Pareto mode
returns the accuracy/efficiency front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ofa.space import SearchSpace, SubnetConfig
from search.latency import encode_configs

__all__ = ["Budget", "run_search", "open_storage"]


@dataclass
class Budget:
    """Upper bounds; None = unconstrained. Units: ms, MACs, parameters, bytes (fp32)."""

    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None
    size_bytes: float | None = None

    def active(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


def open_storage(spec: str | None):
    """None -> in memory; a ``*.log``/``*.journal`` path -> journal file; else an RDB URL."""
    if not spec:
        return None
    if "://" not in spec:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec))
    return spec


def _metrics(space: SearchSpace, cfgs: list[SubnetConfig], acc_pred, lat_pred,
             need: set[str]) -> dict[str, np.ndarray]:
    enc = encode_configs(space, cfgs)
    out = {"acc": np.asarray(acc_pred.predict_encoded(enc), dtype=float)}
    if lat_pred is not None:
        out["latency_ms"] = lat_pred.predict_encoded(enc)
    if need & {"macs"}:
        out["macs"] = np.array([space.macs(c) for c in cfgs], dtype=float)
    if need & {"params", "size_bytes"}:
        p = np.array([space.params(c) for c in cfgs], dtype=float)
        out["params"], out["size_bytes"] = p, p * 4
    return out


def _suggest(trial: optuna.Trial, space: SearchSpace) -> SubnetConfig:
    ks = [trial.suggest_categorical(f"k{i}", list(space.ks_list)) for i in range(space.num_blocks)]
    e = [trial.suggest_categorical(f"e{i}", list(space.expand_list))
         for i in range(space.num_blocks)]
    d = [trial.suggest_categorical(f"d{i}", list(space.depth_list))
         for i in range(space.num_stages)]
    r = trial.suggest_categorical("r", list(space.resolutions))
    return SubnetConfig(ks=ks, e=e, d=d, r=r)


def smallest_latency(space: SearchSpace, lat_pred) -> float:
    return float(min(lat_pred.predict_many([space.min_subnet(r) for r in space.resolutions])))


def run_search(space: SearchSpace, acc_pred, lat_pred=None, budget: Budget | None = None,
               pareto: bool = False, objective: str = "latency_ms", population: int = 100,
               generations: int = 50, seed: int = 0, storage: str | None = None,
               study_name: str = "ofa-search", progress: bool = False) -> dict[str, Any]:
    """Search ``space``; returns ``{"best": [...], "front": [...], "trials": n}``.

    Each result row: ``config`` (dict), ``summary``, ``acc``, ``latency_ms``, ``macs``,
    ``params``. A resumed study (same ``storage`` and ``study_name``) continues from the
    trials it already holds.

    Raises:
        ValueError: an infeasible budget (names the smallest achievable value) or a latency
            budget/objective without a latency table.
    """
    budget = budget or Budget()
    cons = budget.active()
    need = set(cons) | ({objective} if pareto else set())
    if ("latency_ms" in need) and lat_pred is None:
        raise ValueError("a latency budget/objective needs a latency table (--table)")
    if "latency_ms" in cons:
        low = smallest_latency(space, lat_pred)
        if cons["latency_ms"] < low:
            raise ValueError(f"latency budget {cons['latency_ms']:g} ms is infeasible: the "
                             f"smallest subnet takes {low:.2f} ms on this table")
    for k in ("macs", "params", "size_bytes"):
        if k in cons:
            m = _metrics(space, [space.min_subnet(min(space.resolutions))], acc_pred, None, {k})
            if cons[k] < m[k][0]:
                raise ValueError(f"{k} budget {cons[k]:g} is infeasible: the smallest subnet "
                                 f"has {m[k][0]:g}")
    optuna.logging.set_verbosity(logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    directions = ["maximize", "minimize"] if pareto else ["maximize"]
    study = optuna.create_study(directions=directions, sampler=sampler,
                                storage=open_storage(storage), study_name=study_name,
                                load_if_exists=True)
    done = len(study.trials)
    total = population * generations
    gens = range(done // population, generations)
    if progress:
        from tqdm import tqdm

        gens = tqdm(gens, desc="search", unit="gen", initial=done // population,
                    total=generations)
    for _ in gens:
        trials = [study.ask() for _ in range(population)]
        cfgs = [_suggest(t, space) for t in trials]
        m = _metrics(space, cfgs, acc_pred, lat_pred, need)
        for i, t in enumerate(trials):
            for k, b in cons.items():
                t.set_constraint(k, float(m[k][i] - b))
            for k, v in m.items():
                t.set_user_attr(k, float(v[i]))
            vals = [float(m["acc"][i])] + ([float(m[objective][i])] if pareto else [])
            study.tell(t, vals)
    feasible = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(t.user_attrs.get(k, np.inf) <= b for k, b in cons.items())]
    if not feasible:
        raise ValueError("no feasible subnet found; loosen the budget or search longer")

    def row(t) -> dict[str, Any]:
        cfg = SubnetConfig(ks=[t.params[f"k{i}"] for i in range(space.num_blocks)],
                           e=[t.params[f"e{i}"] for i in range(space.num_blocks)],
                           d=[t.params[f"d{i}"] for i in range(space.num_stages)],
                           r=t.params["r"])
        out = {"config": cfg.to_dict(), "summary": cfg.summary(), "acc": t.user_attrs["acc"],
               "macs": space.macs(cfg), "params": space.params(cfg)}
        if "latency_ms" in t.user_attrs:
            out["latency_ms"] = t.user_attrs["latency_ms"]
        return out

    best = max(feasible, key=lambda t: t.user_attrs["acc"])
    res: dict[str, Any] = {"best": [row(best)], "trials": len(study.trials),
                           "budget": cons, "evaluations": total}
    if pareto:
        pts = sorted(feasible, key=lambda t: (t.user_attrs[objective], -t.user_attrs["acc"]))
        front, best_acc = [], -np.inf
        for t in pts:
            if t.user_attrs["acc"] > best_acc:
                front.append(t)
                best_acc = t.user_attrs["acc"]
        res["front"] = [row(t) for t in front]
        res["objective"] = objective
    return res
