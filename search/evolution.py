"""Evolutionary subnet search with Optuna's NSGA-II (OFA section 4; Deb et al. 2002).

Every gene (kernel and expand of each block as one gene, depth per stage, resolution) is
suggested on every trial, so NSGA-II's intersection search space is the whole space (genes and
their encoding: :class:`search.encoding.ArchEncoder`). A whole generation is asked for with
``study.ask()``, scored by one batched call of the predictors (:class:`Scorer`), and told back
with ``study.tell()``. Budgets are constraints ``value - budget <= 0`` set with
``trial.set_constraint``. Single-budget mode maximises predicted accuracy; Pareto mode
returns the accuracy/efficiency front.

An Optuna trial costs about a millisecond, a batched predictor evaluation microseconds, so
the search is memetic (a genetic algorithm with local search, Moscato 1989): the first
generation is seeded from a batched pre-screen of stratified subnets and, after each
generation, the elites' best neighbours are enqueued as ordinary trials
(``study.enqueue_trial``) for NSGA-II's selection to judge. On the published OFA setting this
matches or beats OFA's own 100 x 500 evolution in about 3.5 s (``bench/search_quality.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ofa.errors import InputError
from ofa.space import SearchSpace
from search.encoding import ArchEncoder, Encoded, concat, take
from search.latency import BlockSum
from search.models import OBJECTIVES, AccuracyModel, LatencyModel

__all__ = ["Budget", "SearchConfig", "Scorer", "run_search", "open_storage", "OBJECTIVES",
           "shortlist"]


@dataclass
class Budget:
    """Upper bounds; None = unconstrained. Units: ms, MACs, parameters, bytes (fp32).

    Raises:
        ValueError: a bound that is not a finite positive number.
    """

    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None
    size_bytes: float | None = None

    def __post_init__(self) -> None:
        for k, v in vars(self).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v <= 0):
                raise InputError(f"{k} budget must be a finite number > 0, got {v!r}")

    def active(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items() if v is not None}


@dataclass
class SearchConfig:
    """How :func:`run_search` searches; checked when built.

    Args:
        budget: upper bounds (:class:`Budget`).
        pareto: return the accuracy/``objective`` front instead of one best subnet.
        objective: ``latency_ms`` | ``macs`` | ``params`` (Pareto mode).
        population: trials per generation, 2..100000.
        generations: 1..100000.
        seed: seeds NSGA-II and the memetic helpers (>= 0).
        storage: Optuna RDB URL or a journal file path; the study resumes from it.
        study_name: the study in ``storage``; it is keyed by the query (see
            :func:`run_search`).
        memetic: pre-screen and local search around the elites (default on).
        progress: a progress bar per generation.
        shortlist: besides the best subnet, return up to this many feasible subnets the
            accuracy model cannot tell from it (:func:`shortlist`), 1..1000; 1 = none.
        shortlist_margin: how far below the best predicted top-1 a shortlisted subnet may
            be (top-1 points, >= 0): the accuracy model's held-out RMSE is the natural value.

    Raises:
        ValueError: a value outside its range, an unknown objective.
    """

    budget: Budget = field(default_factory=Budget)
    pareto: bool = False
    objective: str = "latency_ms"
    population: int = 100
    generations: int = 12
    seed: int = 0
    storage: str | None = None
    study_name: str = "ofa-search"
    memetic: bool = True
    progress: bool = False
    shortlist: int = 1
    shortlist_margin: float = 0.5

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective {self.objective!r} unknown; allowed: {list(OBJECTIVES)}")
        for name, lo, hi in (("population", 2, 100_000), ("generations", 1, 100_000),
                             ("seed", 0, 100_000), ("shortlist", 1, 1000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        v = self.shortlist_margin
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise InputError(f"shortlist_margin must be a finite number >= 0, got {v!r}")

    @property
    def constraints(self) -> dict[str, float]:
        return self.budget.active()


class Scorer:
    """Batched predicted metrics of encoded subnets (:data:`search.encoding.Encoded`).

    ``acc`` (top-1 %, from the accuracy model), ``latency_ms`` (from the latency model,
    when given), ``macs``, ``params`` and ``size_bytes`` (fp32 weights) from compiled
    :class:`~search.latency.BlockSum` tables, so every metric is one vectorised call.

    The accuracy MLP costs about 40 times the rest. Given ``only``, a ``(N,)`` bool mask,
    accuracy is predicted for those rows alone and is NaN elsewhere: the memetic helpers
    pass the rows that satisfy the budgets, since an infeasible subnet is ranked by its
    violation only (:func:`_key`).
    """

    def __init__(self, space: SearchSpace, acc_pred: AccuracyModel,
                 lat_pred: LatencyModel | None = None) -> None:
        self.space, self.acc_pred, self.lat_pred = space, acc_pred, lat_pred
        self.encoder = ArchEncoder(space)
        self.macs = BlockSum(space, lambda r, s: s.macs(space.divisor))
        self.params = BlockSum(space, lambda r, s: s.params(space.divisor))

    def __call__(self, enc: Encoded, only: np.ndarray | None = None,
                 costs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """All metrics ``(N,)`` each; ``costs`` reuses an earlier :meth:`costs` of ``enc``."""
        out = dict(costs) if costs is not None else self.costs(enc)
        if only is None:
            out["acc"] = np.asarray(self.acc_pred.predict_encoded(enc), dtype=float)
        else:
            out["acc"] = np.full(len(enc["r"]), np.nan)
            if only.any():
                out["acc"][only] = self.acc_pred.predict_encoded(take(enc, only))
        return out

    def costs(self, enc: Encoded) -> dict[str, np.ndarray]:
        """Every metric but accuracy (cheap): latency (ms), MACs, params, bytes."""
        out = {"macs": self.macs(enc), "params": self.params(enc)}
        out["size_bytes"] = out["params"] * 4
        if self.lat_pred is not None:
            out["latency_ms"] = np.asarray(self.lat_pred.predict_encoded(enc), dtype=float)
        return out


def _violation(m: dict[str, np.ndarray], cons: dict[str, float]) -> np.ndarray:
    """Sum of relative constraint violations ``(N,)``; 0 = feasible."""
    v = np.zeros(len(m["macs"]))
    for k, b in cons.items():
        v += np.maximum(m[k] - b, 0.0) / max(abs(b), 1e-12)
    return v


PRESCREEN = 20_000  # stratified subnets scored to seed a fresh study's first generation
NEIGHBOURS = 256  # neighbours per elite in each local-search step


def _front(idx: np.ndarray, m: dict[str, np.ndarray], objective: str) -> np.ndarray:
    """The non-dominated subset of ``idx`` (accuracy up, ``objective`` down), by objective."""
    idx = idx[np.lexsort((-m["acc"][idx], m[objective][idx]))]
    acc = m["acc"][idx]
    return idx[acc > np.maximum.accumulate(np.r_[-np.inf, acc[:-1]])]


def _key(m: dict[str, np.ndarray], viol: np.ndarray) -> np.ndarray:
    """One sortable score: feasible subnets by accuracy, above every infeasible one."""
    return np.where(viol > 0, -1e6 - viol, m["acc"])


class _Archive:
    """Every subnet scored so far (encoded, with metrics), for choosing elites to refine."""

    def __init__(self, encoder: ArchEncoder) -> None:
        self.encoder = encoder
        self.enc: Encoded | None = None
        self.m: dict[str, np.ndarray] | None = None

    def add(self, enc: Encoded, m: dict[str, np.ndarray]) -> None:
        if self.enc is None or self.m is None:
            self.enc, self.m = dict(enc), dict(m)
            return
        self.enc, self.m = concat(self.enc, enc), concat(self.m, m)

    def elites(self, n: int, cons: dict[str, float], pareto: bool, objective: str
               ) -> np.ndarray:
        """Indices of up to ``n`` distinct elites.

        Single-budget: the best by :func:`_key`. Pareto: the feasible non-dominated subnets
        (accuracy up, ``objective`` down), evenly thinned to ``n``.
        """
        assert self.enc is not None and self.m is not None
        _, first = np.unique(self.encoder.network_rows(self.enc), axis=0,
                             return_index=True)
        viol = _violation(self.m, cons)
        if pareto:
            ok = first[viol[first] == 0]
            if len(ok) == 0:
                return first[np.argsort(viol[first])][:n]
            front = _front(ok, self.m, objective)
            if len(front) > n:
                front = front[np.linspace(0, len(front) - 1, n).round().astype(int)]
            return front
        key = _key(self.m, viol)
        ranked = first[np.argsort(-key[first])]
        # half the elites are the best overall; the other half are niches per resolution:
        # the best subnet at one resolution is rarely a neighbour of the best at another,
        # so each resolution keeps a share and a basin found early is not abandoned
        res = self.enc["r"][ranked]
        quota = -(-(n // 2) // len(np.unique(res)))
        rank_in_res = np.zeros(len(ranked), dtype=int)
        for r in np.unique(res):
            rank_in_res[res == r] = np.arange((res == r).sum())
        tier = np.where(np.arange(len(ranked)) < n - n // 2, 0, np.where(rank_in_res < quota, 1, 2))
        order = np.lexsort((np.arange(len(ranked)), tier))
        return ranked[order][:n]


def _prescreen(scorer: Scorer, cons: dict[str, float], n: int, pareto: bool, objective: str,
               rng: np.random.Generator, count: int = PRESCREEN) -> Encoded:
    """Seed the first generation: score ``count`` stratified subnets in one batched call.

    Single-budget mode keeps the ``n`` best by :func:`_key`; Pareto mode the most accurate
    feasible candidate in each of ``n`` quantile bins of the objective.
    """
    enc = scorer.encoder.sample_stratified(count, rng)
    archive = _Archive(scorer.encoder)
    costs = scorer.costs(enc)
    m = scorer(enc, only=_violation(costs, cons) == 0, costs=costs)
    archive.add(enc, m)
    if not pareto:
        return take(enc, archive.elites(n, cons, False, objective))
    viol = _violation(m, cons)
    ok = np.nonzero(viol == 0)[0]
    if len(ok) == 0:
        return take(enc, np.argsort(viol)[:n])
    edges = np.quantile(m[objective][ok], np.linspace(0, 1, n + 1))
    bins = np.clip(np.searchsorted(edges, m[objective][ok], side="right") - 1, 0, n - 1)
    chosen = [ok[bins == b][np.argmax(m["acc"][ok[bins == b]])] for b in np.unique(bins)]
    return take(enc, np.asarray(chosen))


def shortlist(encoder: ArchEncoder, enc: Encoded, acc: np.ndarray, k: int,
              margin: float) -> np.ndarray:
    """Up to ``k`` distinct subnets of ``enc`` whose predicted top-1 ``acc`` ``(N,)`` (%) is
    within ``margin`` points of the best, spread apart; returns indices into ``enc``, the most
    accurate first.

    The search returns the subnet the accuracy model rates highest, which is also where the
    model's error is most likely positive (the winner's curse of surrogate-based search:
    the maximum of noisy estimates is biased upwards). Subnets within the model's error of
    the best cannot be ranked by it, only by measuring them. Neighbours of the best share
    its error, so the shortlist is spread by farthest-point sampling: after the best, each
    pick is the subnet with the most genes (:meth:`ArchEncoder.network_rows`) differing from
    every subnet already picked, ties going to the more accurate.
    """
    near = np.nonzero(acc >= acc.max() - margin)[0]
    near = near[np.argsort(-acc[near], kind="stable")]
    rows = encoder.network_rows(take(enc, near))
    _, first = np.unique(rows, axis=0, return_index=True)
    keep = np.sort(first)  # distinct networks, still most accurate first
    near, rows = near[keep], rows[keep]
    picked = [0]
    dist = (rows != rows[0]).sum(1)
    while len(picked) < min(k, len(near)):
        j = int(np.argmax(dist))
        picked.append(j)
        dist = np.minimum(dist, (rows != rows[j]).sum(1))
    return near[picked]


def _refine(scorer: Scorer, enc: Encoded, m: dict[str, np.ndarray],
            cons: dict[str, float], pareto: bool, objective: str, rng: np.random.Generator,
            k: int = NEIGHBOURS, p_gene: float = 0.1, p_res: float = 0.2) -> Encoded:
    """One vectorised local-search step for each of ``n`` elites (the memetic operator).

    Each elite gets ``k`` neighbours: half are uniform crossovers with another elite, then
    every gene is resampled with probability ``p_gene`` (``p_res`` for the resolution), as
    OFA's mutation (OFA section 4, ``EvolutionFinder``). All ``n * k`` neighbours are scored
    in one batch (accuracy only where they are feasible) and, per elite, the best by
    :func:`_key` is kept if it beats the elite. In
    Pareto mode a neighbour must also be no worse in ``objective`` than its elite.

    Returns the improved neighbours (encoded, possibly none).
    """
    n = len(enc["r"])
    idx = np.repeat(np.arange(n), k)
    mate = rng.integers(0, n, n * k)
    cross = rng.random(n * k) < 0.5
    new = scorer.encoder.sample_stratified(n * k, rng)
    kids = {}
    for g, v in enc.items():
        x = v[idx]
        shape = (n * k,) + (1,) * (x.ndim - 1)
        swap = (rng.random(x.shape) < 0.5) & cross.reshape(shape)
        x = np.where(swap, v[mate], x)
        x = np.where(rng.random(x.shape) < (p_res if g == "r" else p_gene), new[g], x)
        kids[g] = x
    costs = scorer.costs(kids)
    viol = _violation(costs, cons)
    if pareto:
        viol = viol + np.maximum(costs[objective] - m[objective][idx], 0.0) \
            / np.maximum(np.abs(m[objective][idx]), 1e-12)
    # a neighbour that is the same network (a copy, or changed only in genes of blocks beyond
    # the depth) is no neighbour
    rows = scorer.encoder.network_rows
    same = (rows(kids) == rows(enc)[idx]).all(1)
    km = scorer(kids, only=(viol == 0) & ~same, costs=costs)
    key = np.where(same, -np.inf, _key(km, viol)).reshape(n, k)
    best = key.argmax(1)
    # batched float32 predictions differ in the last bits: demand a real improvement
    better = key[np.arange(n), best] > _key(m, _violation(m, cons)) + 1e-6
    return take(kids, (np.arange(n) * k + best)[better])


class _FixedSpaceNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II whose relative search space is the (fixed) subnet space.

    Every gene is suggested on every trial, so Optuna's intersection search space always
    equals the whole space; returning it directly skips recomputing (and deep-copying) it
    for every trial, about a fifth of a trial's cost.
    """

    def __init__(self, dists: dict[str, optuna.distributions.BaseDistribution],
                 **kw: Any) -> None:
        super().__init__(**kw)
        self._dists = dists

    def infer_relative_search_space(self, study, trial):  # noqa: D102
        return dict(self._dists)


def smallest_latency(space: SearchSpace, lat_pred: LatencyModel) -> float:
    """Predicted latency (ms) of the smallest subnet over the space's resolutions."""
    return float(min(lat_pred.predict_many([space.min_subnet(r) for r in space.resolutions])))


def _check_feasible(scorer: Scorer, cfg: SearchConfig) -> None:
    """Refuse budgets below the smallest subnet and latency without a table, before any trial.

    Raises:
        ValueError: naming the budget and the smallest achievable value.
    """
    space, cons = scorer.space, cfg.constraints
    need = set(cons) | ({cfg.objective} if cfg.pareto else set())
    if "latency_ms" in need and scorer.lat_pred is None:
        raise InputError("a latency budget/objective needs a latency table (--table)")
    if "latency_ms" in cons:
        low = smallest_latency(space, scorer.lat_pred)
        if cons["latency_ms"] < low:
            raise InputError(f"latency budget {cons['latency_ms']:g} ms is infeasible: the "
                             f"smallest subnet takes {low:.2f} ms on this table")
    smallest = scorer(scorer.encoder.encode([space.min_subnet(min(space.resolutions))]))
    for k in ("macs", "params", "size_bytes"):
        if k in cons and cons[k] < smallest[k][0]:
            raise InputError(f"{k} budget {cons[k]:g} is infeasible: the smallest subnet "
                             f"has {smallest[k][0]:g}")


def query_key(scorer: Scorer, cfg: SearchConfig) -> str:
    """A digest of what a study answers: the space, the budgets and search settings, and the
    predictors' answers on a fixed probe set (so another table or predictor, even under the
    same file name, is another query)."""
    space = scorer.space
    probe = scorer.encoder.sample_stratified(16, np.random.default_rng(12345))
    m = scorer(probe)
    facts = {"space": space.to_dict(), "genes": scorer.encoder.genes,
             "budget": cfg.constraints, "pareto": cfg.pareto, "objective": cfg.objective,
             "population": cfg.population, "seed": cfg.seed, "memetic": cfg.memetic,
             "probe": {k: np.round(v, 6).tolist() for k, v in sorted(m.items())}}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def open_storage(spec: str | None) -> Any:
    """None -> in memory; a path (no ``://``) -> journal file (a stale lock is dropped after
    5 s, not Optuna's 30); else an RDB URL."""
    if not spec:
        return None
    if "://" not in spec:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec, JournalFileOpenLock(spec, grace_period=5)))
    return spec


def _open_study(scorer: Scorer, cfg: SearchConfig) -> optuna.Study:
    """A new or resumed study for this query.

    Raises:
        ValueError: the stored study of that name answers another query.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    sampler = _FixedSpaceNSGAII(scorer.encoder.distributions(),
                                population_size=cfg.population, seed=cfg.seed)
    storage = open_storage(cfg.storage)
    try:  # load first: creating over an existing study would append to its journal
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(directions=["maximize", "minimize"] if cfg.pareto
                                    else ["maximize"], sampler=sampler, storage=storage,
                                    study_name=cfg.study_name)
    key = query_key(scorer, cfg)
    old = study.user_attrs.get("query")
    if old is None:
        study.set_user_attr("query", key)
        study.set_user_attr("settings", {k: v for k, v in asdict(cfg).items()
                                         if k not in ("storage", "progress")})
    elif old != key:
        raise InputError(f"study {cfg.study_name!r} in {cfg.storage} answers another query "
                         "(space, table, predictor, budgets or settings differ); pass another "
                         "--study-name or --storage")
    return study


def _tell_generation(study: optuna.Study, scorer: Scorer, cfg: SearchConfig,
                     trials: list[optuna.Trial]) -> tuple[Encoded, dict[str, np.ndarray]]:
    """Score one generation's trials in one batch and tell them (with constraints)."""
    enc = scorer.encoder.encode([scorer.encoder.suggest(t) for t in trials])
    m = scorer(enc)
    for i, t in enumerate(trials):
        for k, b in cfg.constraints.items():
            t.set_constraint(k, float(m[k][i] - b))
        study.tell(t, [float(m["acc"][i])] + ([float(m[cfg.objective][i])] if cfg.pareto
                                               else []))
    return enc, m


def _enqueue(study: optuna.Study, encoder: ArchEncoder, enc: Encoded) -> None:
    for cfg in encoder.decode_all(enc):
        study.enqueue_trial(encoder.to_params(cfg))


def _result(scorer: Scorer, archive: _Archive, cfg: SearchConfig, trials: int,
            evaluations: int) -> dict[str, Any]:
    """The result dict of :func:`run_search` from everything scored.

    Raises:
        ValueError: no feasible subnet.
    """
    assert archive.enc is not None and archive.m is not None
    enc, m = archive.enc, archive.m
    feasible = np.nonzero(_violation(m, cfg.constraints) == 0)[0]
    if len(feasible) == 0:
        raise InputError("no feasible subnet found; loosen the budget or search longer")

    def row(i: int) -> dict[str, Any]:
        sub = scorer.encoder.decode(enc, i)
        out = {"config": sub.to_dict(), "summary": sub.summary(), "acc": float(m["acc"][i]),
               "macs": int(m["macs"][i]), "params": int(m["params"][i])}
        if "latency_ms" in m:
            out["latency_ms"] = float(m["latency_ms"][i])
        return out

    best = int(feasible[np.argmax(m["acc"][feasible])])
    res: dict[str, Any] = {"best": [row(best)], "trials": trials,
                           "budget": cfg.constraints, "evaluations": evaluations}
    if cfg.shortlist > 1:
        picked = shortlist(scorer.encoder, take(enc, feasible), m["acc"][feasible],
                           cfg.shortlist, cfg.shortlist_margin)
        res["shortlist"] = [row(int(feasible[i])) for i in picked]
    if cfg.pareto:
        res["front"] = [row(int(i)) for i in _front(feasible, m, cfg.objective)]
        res["objective"] = cfg.objective
    return res


def run_search(space: SearchSpace, acc_pred: AccuracyModel, lat_pred: LatencyModel | None = None,
               config: SearchConfig | None = None) -> dict[str, Any]:
    """Search ``space``; returns ``{"best": [...], "front": [...], "trials": n, ...}``.

    Optuna's NSGA-II (constraint-dominated selection, uniform crossover, mutation) evolves
    ``generations`` generations of ``population`` trials, asked and told a generation at a
    time. With ``memetic`` (default) it is helped by batched predictor calls, which cost
    microseconds per subnet where an Optuna trial costs about a millisecond:

    - a fresh study's first generation is seeded from 20,000 stratified subnets
      (:meth:`ArchEncoder.sample_stratified`), the best of them (single budget) or the best
      per objective bin (Pareto) enqueued with ``study.enqueue_trial``;
    - after each generation, the ``population // 2`` elites so far each get one
      vectorised local-search step (:func:`_refine`, 256 neighbours); the improved
      neighbours are enqueued, so they enter the next generation as ordinary trials and
      NSGA-II's selection decides whether they survive.

    ``evaluations`` in the result counts every predictor evaluation (trials, pre-screen and
    neighbours). A resumed study (same ``storage`` and ``study_name``) continues from the
    trials it already holds; it must answer the same query (:func:`query_key`).

    Each result row: ``config`` (dict), ``summary``, ``acc`` (%), ``latency_ms``, ``macs``,
    ``params``. With ``shortlist`` > 1 the result also holds ``"shortlist"``: the best and
    up to ``shortlist - 1`` other feasible subnets within ``shortlist_margin`` of it
    (:func:`shortlist`), for measuring before choosing.

    Raises:
        ValueError: an infeasible budget (names the smallest achievable value), a latency
            budget/objective without a latency table, a stored study of another query, or no
            feasible subnet found.
    """
    cfg = config or SearchConfig()
    scorer = Scorer(space, acc_pred, lat_pred)
    _check_feasible(scorer, cfg)
    study = _open_study(scorer, cfg)
    rng = np.random.default_rng(cfg.seed)
    archive = _Archive(scorer.encoder)
    done_trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    evaluations = len(done_trials)
    if done_trials:
        enc = scorer.encoder.encode([scorer.encoder.from_params(t.params) for t in done_trials])
        archive.add(enc, scorer(enc))
    elif cfg.memetic:
        _enqueue(study, scorer.encoder, _prescreen(scorer, cfg.constraints, cfg.population,
                                                   cfg.pareto, cfg.objective, rng))
        evaluations += PRESCREEN
    start = len(done_trials) // cfg.population
    gens: Any = range(start, cfg.generations)
    if cfg.progress:
        from tqdm import tqdm

        gens = tqdm(gens, desc="search", unit="gen", initial=start, total=cfg.generations)
    for g in gens:
        archive.add(*_tell_generation(study, scorer, cfg,
                                      [study.ask() for _ in range(cfg.population)]))
        evaluations += cfg.population
        if cfg.memetic and g < cfg.generations - 1:
            evaluations += _refine_elites(study, scorer, archive, cfg, rng)
    return _result(scorer, archive, cfg, len(study.get_trials(deepcopy=False)), evaluations)


def _refine_elites(study: optuna.Study, scorer: Scorer, archive: _Archive, cfg: SearchConfig,
                   rng: np.random.Generator) -> int:
    """One local-search step (:func:`_refine`) for the ``population // 2`` elites so far;
    the improved neighbours enqueued for the next generation. Returns the predictor
    evaluations it spent."""
    assert archive.enc is not None and archive.m is not None
    elite = archive.elites(cfg.population // 2, cfg.constraints, cfg.pareto, cfg.objective)
    _enqueue(study, scorer.encoder, _refine(
        scorer, take(archive.enc, elite), take(archive.m, elite), cfg.constraints,
        cfg.pareto, cfg.objective, rng))
    return NEIGHBOURS * len(elite)


def result_rows(data: Any, source: str = "search result") -> list[dict[str, Any]]:
    """The subnet rows of a search result (``front`` if present, else ``best``), each with a
    ``config`` that parses as a :class:`~ofa.space.SubnetConfig` and, when present, numeric
    ``acc`` / ``latency_ms`` / ``budget_ms``.

    Raises:
        ValueError: not a search result, no rows, or a malformed row (names its index).
    """
    from ofa.space import SubnetConfig

    rows = (data.get("front") or data.get("best")) if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{source}: no subnets (expected a non-empty 'best' or 'front' list)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "config" not in row:
            raise InputError(f"{source}: row {i} has no 'config'")
        try:
            SubnetConfig.from_dict(row["config"])
        except ValueError as exc:
            raise InputError(f"{source}: row {i}: {exc}") from None
        for k in ("acc", "latency_ms", "budget_ms"):
            v = row.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise InputError(f"{source}: row {i}: {k} must be a finite number, got {v!r}")
    return rows
