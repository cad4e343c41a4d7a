import random

import numpy as np
import pytest
from conftest import shared_path

from ofa.space import get_space
from search.accuracy import AccuracyPredictor, OFAAccuracyPredictor, onehot
from search.evolution import Budget, Scorer, _refine, run_search, sample_stratified
from search.latency import LatencyPredictor, encode_configs
from search.latency_table import LatencyTable


def _synthetic_table(space):
    """A deterministic table: latency grows with kernel, width and resolution."""
    entries = {}
    for r in space.resolutions:
        entries[str(r)] = {
            s.key(): {"median": 0.001 * s.macs() / 1e3 + 0.01, "mean": 0, "std": 0, "p90": 0,
                      "count": 1}
            for s in space.all_block_shapes([r])}
    ctx = {"device": {"name": "synthetic"}, "runtime": "none", "runtime_version": "0",
           "backend": "none", "threads": 1, "precision": "fp32", "batch": 1}
    return LatencyTable(ctx, space.to_dict(), list(space.resolutions), entries)


@pytest.fixture(scope="module")
def setup():
    space = get_space("mbv3-cifar")
    g = random.Random(0)
    cfgs = [space.sample(g) for _ in range(300)]
    acc = [50 + space.macs(c) / 4e6 for c in cfgs]  # bigger is better, like real nets
    pred = AccuracyPredictor(space)
    pred.fit(cfgs, acc, epochs=30)
    return space, pred, LatencyPredictor(_synthetic_table(space), space)


def test_onehot_zeros_beyond_depth():
    space = get_space("mbv3-cifar")
    cfg = space.config(5, 4, 2, 28)
    f = onehot(space, encode_configs(space, [cfg]))[0]
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
    res = run_search(space, pred, lat, budget, population=20, generations=4)
    best = res["best"][0]
    assert best["latency_ms"] <= budget.latency_ms and best["params"] <= 4e6
    cfg = space.validate(type(space.max_subnet()).from_dict(best["config"]))
    assert lat.predict(cfg) == pytest.approx(best["latency_ms"])
    with pytest.raises(ValueError, match="infeasible: the smallest subnet takes"):
        run_search(space, pred, lat, Budget(latency_ms=lo * 0.5), population=4, generations=1)


def test_pareto_points_mutually_non_dominated(setup):
    space, pred, lat = setup
    res = run_search(space, pred, lat, pareto=True, population=20, generations=4)
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
    m = Scorer(space, pred, lat)(encode_configs(space, cfgs))
    assert m["macs"].tolist() == [space.macs(c) for c in cfgs]
    assert m["params"].tolist() == [space.params(c) for c in cfgs]
    assert m["size_bytes"].tolist() == [4 * space.params(c) for c in cfgs]
    assert np.allclose(m["latency_ms"], lat.predict_many(cfgs))
    assert np.allclose(m["acc"], pred.predict_many(cfgs))


def test_stratified_sampling_is_valid_and_covers_sizes(setup):
    space, pred, lat = setup
    enc = sample_stratified(space, 2000, np.random.default_rng(0))
    for i in range(0, 2000, 97):
        cfg = type(space.max_subnet())(ks=[space.ks_list[j] for j in enc["ks"][i]],
                                       e=[space.expand_list[j] for j in enc["e"][i]],
                                       d=enc["d"][i].tolist(), r=int(enc["r"][i]))
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
    enc = encode_configs(space, [mid])
    m = scorer(enc)
    budget = {"latency_ms": float(m["latency_ms"][0])}
    kids = _refine(scorer, enc, m, budget, False, "latency_ms", np.random.default_rng(0))
    assert len(kids["r"]) == 1  # 256 neighbours of a mid-size subnet: one beats it
    km = scorer(kids)
    assert km["acc"][0] > m["acc"][0] and km["latency_ms"][0] <= budget["latency_ms"]
    low = encode_configs(space, [space.min_subnet(24)])
    ml = scorer(low)
    tight = {"latency_ms": float(ml["latency_ms"][0])}  # only the smallest subnet fits
    assert len(_refine(scorer, low, ml, tight, False, "latency_ms",
                       np.random.default_rng(0))["r"]) == 0


def test_memetic_search_beats_plain_nsga2_at_equal_generations(setup):
    space, pred, lat = setup
    b = Budget(latency_ms=float(lat.predict(space.config(5, 4, 3, 28))))
    plain = run_search(space, pred, lat, b, population=20, generations=5, memetic=False)
    memetic = run_search(space, pred, lat, b, population=20, generations=5)
    assert memetic["best"][0]["acc"] > plain["best"][0]["acc"]
    assert memetic["evaluations"] > memetic["trials"] == plain["trials"] == 100


def test_resumed_study_continues(setup, tmp_path):
    space, pred, lat = setup
    store = str(tmp_path / "study.log")
    r1 = run_search(space, pred, lat, Budget(latency_ms=1e9), population=10, generations=2,
                    storage=store)
    assert r1["trials"] == 20
    r2 = run_search(space, pred, lat, Budget(latency_ms=1e9), population=10, generations=3,
                    storage=store)
    assert r2["trials"] == 30  # one more generation, not a restart
    assert r2["best"][0]["acc"] >= r1["best"][0]["acc"]


def test_ofa_published_predictor_loads():
    path = shared_path("ofa_reference", "acc_predictor.pth")
    space = get_space("mbv3-w1.2", resolutions=[160, 176, 192, 208, 224])
    p = OFAAccuracyPredictor(path, space)
    a = p.predict_many([space.max_subnet(224), space.min_subnet(160)])
    assert 70 < a[1] < a[0] < 90
    with pytest.raises(ValueError, match="knows resolutions"):
        OFAAccuracyPredictor(path, get_space("mbv3-w1.2"))
