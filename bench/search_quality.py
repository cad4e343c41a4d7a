"""Search quality and speed on the published OFA setting (Note10 tables + OFA predictor).

For several latency budgets between 12 and 35 ms, compares the predicted top-1 of the subnet
returned by

- ``ofa-edge``: our Optuna NSGA-II search with its memetic helpers (``search.evolution.run_search``,
  default settings: population 100 x 15 generations, pre-screen, vectorised refinement),
- ``ofa-evo``: OFA's own evolutionary finder with its published settings (population 100,
  500 generations, 25% parents, half mutation (p = 0.1 per gene, 0.5 resolution), half
  uniform crossover, constraints by rejection), re-implemented here on the same predictors,
- ``random``: random search with as many predictor evaluations as ours (trials, pre-screen
  and neighbours all count),

and times one single-budget query and one Pareto front. Needs ``../shared/ofa_reference``.

    python bench/search_quality.py [--budgets 12,15,18,22,25,30,35]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

REF = Path(__file__).resolve().parents[2] / "shared" / "ofa_reference"


def ofa_evolution(space, acc, lat, budget: float, population: int = 100, generations: int = 500,
                  parent_ratio: float = 0.25, mutation_ratio: float = 0.5, p_mut: float = 0.1,
                  p_res: float = 0.5, seed: int = 0) -> tuple[float, int]:
    """OFA's EvolutionFinder on encoded arrays; returns (best predicted acc, evaluations)."""
    rng = np.random.default_rng(seed)
    nb, ns = space.num_blocks, space.num_stages
    nk, ne = len(space.ks_list), len(space.expand_list)
    dl, rl = np.array(space.depth_list), np.array(space.resolutions)

    def rand(n):
        return {"ks": rng.integers(0, nk, (n, nb)), "e": rng.integers(0, ne, (n, nb)),
                "d": rng.choice(dl, (n, ns)), "r": rng.choice(rl, n)}

    def take(pop, idx):
        return {k: v[idx] for k, v in pop.items()}

    def cat(a, b):
        return {k: np.concatenate([a[k], b[k]]) for k in a}

    def valid(n, make):
        out, tries = None, 0
        while out is None or len(out["r"]) < n:
            cand = make(max(4 * n, 4096))
            ok = lat.predict_encoded(cand) <= budget
            cand = take(cand, np.nonzero(ok)[0])
            out = cand if out is None else cat(out, cand)
            tries += 1
            if tries > 2000:
                raise RuntimeError("budget too tight for rejection sampling")
        return take(out, np.arange(n))

    pop = valid(population, rand)
    evals = population
    n_par = int(round(parent_ratio * population))
    n_mut = int(round(mutation_ratio * population))
    best = -np.inf
    for _ in range(generations):
        a = acc.predict_encoded(pop)
        order = np.argsort(-a)
        best = max(best, float(a[order[0]]))
        parents = take(pop, order[:n_par])

        def mutate(n, parents=parents):
            p = take(parents, rng.integers(0, n_par, n))
            new = rand(n)
            for k, prob in (("ks", p_mut), ("e", p_mut), ("d", p_mut), ("r", p_res)):
                m = rng.random(p[k].shape) < prob
                p[k] = np.where(m, new[k], p[k])
            return p

        def cross(n, parents=parents):
            p1 = take(parents, rng.integers(0, n_par, n))
            p2 = take(parents, rng.integers(0, n_par, n))
            return {k: np.where(rng.random(p1[k].shape) < 0.5, p1[k], p2[k]) for k in p1}

        children = cat(valid(n_mut, mutate), valid(population - n_mut, cross))
        evals += population
        pop = cat(parents, children)
    return best, evals


def random_search(space, acc, lat, budget: float, evaluations: int, seed: int = 0) -> float:
    import random

    from search.encoding import ArchEncoder

    encoder = ArchEncoder(space)
    g = random.Random(seed)
    best = float("nan")
    for start in range(0, evaluations, 20_000):
        n = min(20_000, evaluations - start)
        enc = encoder.encode([space.sample(g) for _ in range(n)])
        a, t = acc.predict_encoded(enc), lat.predict_encoded(enc)
        if (t <= budget).any():
            best = float(np.nanmax([best, a[t <= budget].max()]))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="12,15,18,22,25,30,35")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ofa-generations", type=int, default=500)
    args = ap.parse_args()
    if not (REF / "acc_predictor.pth").exists():
        print(f"skipped: {REF} (the published OFA predictor and Note10 tables) is absent")
        return
    from ofa.space import get_space
    from search.accuracy import load_accuracy_predictor
    from search.evolution import Budget, SearchConfig, run_search
    from search.latency import LatencyPredictor
    from search.latency_table import import_ofa_yaml

    space = get_space("mbv3-w1.2")
    table = import_ofa_yaml(REF / "note10", space)
    space = space.with_choices(resolutions=tuple(table.resolutions))
    lat = LatencyPredictor(table, space, calibrated=False)
    acc = load_accuracy_predictor(REF / "acc_predictor.pth", space)
    rows = []
    for b in [float(v) for v in args.budgets.split(",")]:
        ours, ofa_acc, rnd, t_ours, t_ofa, ev = [], [], [], [], [], 0
        for seed in range(args.seeds):
            t = time.perf_counter()
            res = run_search(space, acc, lat, SearchConfig(Budget(latency_ms=b), seed=seed))
            t_ours.append(time.perf_counter() - t)
            ours.append(res["best"][0]["acc"])
            ev = res["evaluations"]
            rnd.append(random_search(space, acc, lat, b, ev, seed))
            t = time.perf_counter()
            try:
                best, ofa_ev = ofa_evolution(space, acc, lat, b,
                                             generations=args.ofa_generations, seed=seed)
            except RuntimeError:  # rejection sampling found no feasible population
                best, ofa_ev = float("nan"), 0
            t_ofa.append(time.perf_counter() - t)
            ofa_acc.append(best)
        rows.append({"budget_ms": b, "ours_acc": float(np.mean(ours)),
                     "ofa_evo_acc": float(np.mean(ofa_acc)), "random_acc": float(np.mean(rnd)),
                     "ours_minus_ofa": float(np.mean(ours) - np.mean(ofa_acc)),
                     "ours_s": float(np.median(t_ours)), "ours_max_s": float(np.max(t_ours)),
                     "ofa_evo_s": float(np.median(t_ofa)),
                     "ours_evals": ev, "ofa_evals": ofa_ev})
        print_table(rows[-1:])
    t = time.perf_counter()
    front = run_search(space, acc, lat, SearchConfig(pareto=True, seed=0))["front"]
    pareto = {"points": len(front), "seconds": time.perf_counter() - t}
    print()
    print_table(rows)
    print(f"\nPareto front: {pareto['points']} points in {pareto['seconds']:.1f} s")
    write_json("search_quality", {"setting": "Note10 LUT (raw sums) + OFA acc_predictor.pth, "
                                  f"mean of {args.seeds} seeds", "rows": rows,
                                  "pareto": pareto})


if __name__ == "__main__":
    main()
