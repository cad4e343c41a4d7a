import dataclasses
import random

import numpy as np
import pytest
from conftest import shared_path, synthetic_table

from ofa.space import get_space
from search.accuracy import AccuracyPredictor, import_ofa_predictor, load_accuracy_predictor
from search.encoding import ArchEncoder
from search.evolution import Budget, Scorer, SearchConfig, _refine, run_search, shortlist
from search.latency import LatencyPredictor


@pytest.fixture(scope="module")
def setup():
    space = get_space("mbv3-cifar")
    g = random.Random(0)
    cfgs = [space.sample(g) for _ in range(300)]
    acc = [50 + space.macs(c) / 4e6 for c in cfgs]  # bigger is better, like real nets
    pred = AccuracyPredictor(space)
    pred.fit(cfgs, acc, epochs=30)
    return space, pred, LatencyPredictor(synthetic_table(space), space)


def test_onehot_zeros_beyond_depth():
    space = get_space("mbv3-cifar")
    cfg = space.config(5, 4, 2, 28)
    enc = ArchEncoder(space)
    f = enc.onehot(enc.encode([cfg]))[0]
    assert f.shape == (20 * 3 * 2 + 3,)
    assert f[:60].sum() == 10 and f[60:120].sum() == 10 and f[120:].tolist() == [0, 1, 0]


def test_predictor_roundtrip(setup, tmp_path):
    space, pred, _ = setup
    cfgs = [space.sample(random.Random(5)) for _ in range(10)]
    pred.save(tmp_path / "p.safetensors")
    back = AccuracyPredictor.load(tmp_path / "p.safetensors")
    assert np.array_equal(back.predict_many(cfgs), pred.predict_many(cfgs))
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ValueError, match="not an ofa-edge accuracy predictor"):
        AccuracyPredictor.load(tmp_path / "p.safetensors")


def test_single_budget_respects_every_constraint(setup):
    space, pred, lat = setup
    lo = lat.predict(space.min_subnet(24))
    hi = lat.predict(space.max_subnet(32))
    budget = Budget(latency_ms=(lo + hi) / 3, params=4e6)
    res = run_search(space, pred, lat, SearchConfig(budget, population=20, generations=4))
    best = res["best"][0]
    assert best["latency_ms"] <= budget.latency_ms and best["params"] <= 4e6
    cfg = space.validate(type(space.max_subnet()).from_dict(best["config"]))
    assert lat.predict(cfg) == pytest.approx(best["latency_ms"])
    with pytest.raises(ValueError, match="infeasible: the smallest subnet takes"):
        run_search(space, pred, lat, SearchConfig(Budget(latency_ms=lo * 0.5), population=4,
                                                  generations=1))


def test_pareto_points_mutually_non_dominated(setup):
    space, pred, lat = setup
    res = run_search(space, pred, lat, SearchConfig(pareto=True, population=20,
                                                   generations=4))
    front = res["front"]
    assert len(front) >= 2
    for a in front:
        for b in front:
            if a is b:
                continue
            dominates = (b["acc"] >= a["acc"] and b["latency_ms"] <= a["latency_ms"]
                         and (b["acc"] > a["acc"] or b["latency_ms"] < a["latency_ms"]))
            assert not dominates


def test_scorer_sums_equal_the_space_analytics(setup):
    space, pred, lat = setup
    g = random.Random(3)
    cfgs = [space.sample(g) for _ in range(40)] + [space.min_subnet(24), space.max_subnet(32)]
    m = Scorer(space, pred, lat)(ArchEncoder(space).encode(cfgs))
    assert m["macs"].tolist() == [space.macs(c) for c in cfgs]
    assert m["params"].tolist() == [space.params(c) for c in cfgs]
    assert m["size_bytes"].tolist() == [4 * space.params(c) for c in cfgs]
    assert np.allclose(m["latency_ms"], lat.predict_many(cfgs))
    assert np.allclose(m["acc"], pred.predict_many(cfgs))


def test_stratified_sampling_is_valid_and_covers_sizes(setup):
    space, pred, lat = setup
    enc = ArchEncoder(space).sample_stratified(2000, np.random.default_rng(0))
    for cfg in ArchEncoder(space).decode_all(enc):
        space.validate(cfg)
    macs = Scorer(space, pred)(enc)["macs"]
    lo, hi = space.macs(space.min_subnet(24)), space.macs(space.max_subnet(32))
    # uniform sampling almost never comes within 10% of either end; stratified does
    assert (macs < lo + 0.1 * (hi - lo)).sum() > 20
    assert (macs > hi - 0.2 * (hi - lo)).sum() > 20


def test_refine_keeps_only_improving_feasible_neighbours(setup):
    space, pred, lat = setup
    scorer = Scorer(space, pred, lat)
    mid = space.config(5, 4, 3, 28)
    enc = ArchEncoder(space).encode([mid])
    m = scorer(enc)
    budget = {"latency_ms": float(m["latency_ms"][0])}
    kids = _refine(scorer, enc, m, budget, False, "latency_ms", np.random.default_rng(0))
    assert len(kids["r"]) == 1  # 256 neighbours of a mid-size subnet: one beats it
    km = scorer(kids)
    assert km["acc"][0] > m["acc"][0] and km["latency_ms"][0] <= budget["latency_ms"]
    low = ArchEncoder(space).encode([space.min_subnet(24)])
    ml = scorer(low)
    tight = {"latency_ms": float(ml["latency_ms"][0])}  # only the smallest subnet fits
    assert len(_refine(scorer, low, ml, tight, False, "latency_ms",
                       np.random.default_rng(0))["r"]) == 0


def test_shortlist_skips_neighbours_of_the_best_for_distant_subnets():
    """Farthest-point picks: a one-gene neighbour of the best (which shares its predictor
    error) is passed over for a subnet that differs in many genes, once both are within
    the margin; below the margin nothing is picked."""
    space = get_space("mbv3-cifar")
    enc = ArchEncoder(space)
    best = space.config(5, 4, 3, 28)
    near = dataclasses.replace(best, ks=(7, *best.ks[1:]))
    far = space.config(3, 6, 2, 32)
    low = space.config(7, 6, 4, 32)
    batch = enc.encode([near, best, far, best, low])  # the best twice: one network
    acc = np.array([80.9, 81.0, 80.5, 81.0, 70.0])
    assert shortlist(enc, batch, acc, 2, 1.0).tolist() == [1, 2]
    assert shortlist(enc, batch, acc, 3, 1.0).tolist() == [1, 2, 0]
    assert shortlist(enc, batch, acc, 5, 1.0).tolist() == [1, 2, 0]  # `low` is 11 below
    assert shortlist(enc, batch, acc, 5, 0.0).tolist() == [1]


def test_search_shortlist_is_feasible_distinct_and_within_the_margin(setup):
    space, pred, lat = setup
    b = Budget(latency_ms=float(lat.predict(space.config(5, 4, 3, 28))))
    res = run_search(space, pred, lat, SearchConfig(b, population=20, generations=4,
                                                    shortlist=6, shortlist_margin=1.5))
    sl = res["shortlist"]
    assert sl[0] == res["best"][0] and 2 <= len(sl) <= 6
    assert all(r["latency_ms"] <= b.latency_ms and r["acc"] >= sl[0]["acc"] - 1.5
               for r in sl)
    assert len({str(r["summary"]) for r in sl}) == len(sl)
    assert "shortlist" not in run_search(space, pred, lat, SearchConfig(
        b, population=20, generations=1))
    with pytest.raises(ValueError, match="shortlist_margin"):
        SearchConfig(b, shortlist=3, shortlist_margin=-1)


def test_memetic_search_beats_plain_nsga2_at_equal_generations(setup):
    space, pred, lat = setup
    b = Budget(latency_ms=float(lat.predict(space.config(5, 4, 3, 28))))
    plain = run_search(space, pred, lat, SearchConfig(b, population=20, generations=5,
                                                      memetic=False))
    memetic = run_search(space, pred, lat, SearchConfig(b, population=20, generations=5))
    assert memetic["best"][0]["acc"] > plain["best"][0]["acc"]
    assert memetic["evaluations"] > memetic["trials"] == plain["trials"] == 100


def test_resumed_study_continues(setup, tmp_path):
    space, pred, lat = setup
    store = str(tmp_path / "study.log")
    r1 = run_search(space, pred, lat, SearchConfig(Budget(latency_ms=1e9), population=10,
                                                   generations=2, storage=store))
    assert r1["trials"] == 20
    r2 = run_search(space, pred, lat, SearchConfig(Budget(latency_ms=1e9), population=10,
                                                   generations=3, storage=store))
    assert r2["trials"] == 30  # one more generation, not a restart
    assert r2["best"][0]["acc"] >= r1["best"][0]["acc"]
    # the same study answering another budget is refused, not answered from the old trials
    with pytest.raises(ValueError, match="answers another query"):
        run_search(space, pred, lat, SearchConfig(Budget(latency_ms=5e8), population=10,
                                                  generations=3, storage=store))


def test_ofa_published_predictor_loads(tmp_path):
    path = shared_path("ofa_reference", "acc_predictor.pth")
    space = get_space("mbv3-w1.2", resolutions=[160, 176, 192, 208, 224])
    p = load_accuracy_predictor(path, space)
    cfgs = [space.max_subnet(224), space.min_subnet(160)]
    a = p.predict_many(cfgs)
    assert 70 < a[1] < a[0] < 90
    with pytest.raises(ValueError, match="knows resolutions"):
        load_accuracy_predictor(path, get_space("mbv3-w1.2"))
    # converted once to safetensors, it predicts the same without torch
    out = import_ofa_predictor(path, tmp_path / "ofa.safetensors")
    assert np.allclose(load_accuracy_predictor(out, space).predict_many(cfgs), a, atol=1e-4)
