"""Property-based fuzzing (hypothesis) of the parsers of user files: subnet configs, latency
tables, schedules and search results. Whatever the input, a parser returns a valid object or
raises ValueError with a message; never another exception."""

import copy
import json
import math
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofa.space import SubnetConfig, get_space
from ofa.train.schedule import SCHEDULE_DIR, Schedule
from search.evolution import result_rows
from search.latency import LatencyPredictor
from search.latency_table import LatencyTable

SPACE = get_space("mbv3-digits", resolutions=[12])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            yield from _paths(v, prefix + (i,))


def mutate(doc, data):
    """``doc`` with up to three random places replaced by arbitrary JSON or deleted."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return data.draw(json_values)
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
    return doc


# FUZZ_EXAMPLES=3000 for a longer run (done before each release: 3000 per parser, all pass)
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_subnet_config_parser(data):
    doc = data.draw(st.one_of(json_values, st.just(SPACE.sample().to_dict()).map(
        lambda d: mutate(d, data))))
    try:
        cfg = SPACE.validate(SubnetConfig.from_json(json.dumps(doc)))
    except ValueError as exc:
        assert str(exc)
        return
    assert SPACE.macs(cfg) > 0 and cfg == SubnetConfig.from_dict(cfg.to_dict())


def _good_table() -> dict:
    entries = {"12": {s.key(): {"median": 0.01 + s.macs() / 1e9, "count": 1}
                      for s in SPACE.all_block_shapes([12])}}
    ctx = {"machine": {"name": "x"}, "runtime": "onnxruntime", "runtime_version": "0",
           "backend": "CPU", "threads": 1, "precision": "fp32", "batch": 1}
    return LatencyTable(ctx, SPACE.to_dict(), [12], entries).to_dict()


GOOD_TABLE = _good_table()


@FUZZ
@given(st.data())
def test_latency_table_parser(data):
    doc = mutate(GOOD_TABLE, data)
    try:
        table = LatencyTable.from_dict(json.loads(json.dumps(doc)), source="fuzz")
        pred = LatencyPredictor(table, SPACE).predict_many(
            [SPACE.max_subnet(12), SPACE.min_subnet(12)])
    except ValueError as exc:
        assert str(exc)
        return
    assert np.isfinite(pred).all() and (pred > 0).all()


GOOD_SCHEDULE = __import__("yaml").safe_load((SCHEDULE_DIR / "ps.yaml").read_text())


@FUZZ
@given(st.data())
def test_schedule_parser(data):
    doc = mutate(GOOD_SCHEDULE, data)
    try:
        sched = Schedule.from_dict(doc, source="fuzz")
        scaled = sched.scaled(10)
        steps = scaled.phase_steps(100)
        for ph in scaled.phases:
            ph.choices(SPACE)
    except ValueError as exc:
        assert str(exc)
        return
    assert all(s >= 1 for s in steps)
    assert math.isclose(sum(p.epochs for p in scaled.phases), 10)


GOOD_RESULT = {"best": [{"config": SPACE.max_subnet(12).to_dict(), "summary": "x", "acc": 90.0,
                         "latency_ms": 1.0, "macs": 1, "params": 1}], "trials": 10}


@FUZZ
@given(st.data())
def test_search_result_parser(data):
    doc = data.draw(st.one_of(json_values, st.just(GOOD_RESULT).map(lambda d: mutate(d, data))))
    try:
        rows = result_rows(doc, "fuzz")
    except ValueError as exc:
        assert str(exc)
        return
    assert rows and all(isinstance(SubnetConfig.from_dict(r["config"]), SubnetConfig)
                        for r in rows)
