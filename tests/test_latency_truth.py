"""Latency that holds on a device whose speed changes: probe-relative timing, re-timing,
verification on arrival, a measured budget, and device sessions that neither time out on a
slow board nor outlive their request."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from drifting import DriftingRuntime, steps
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.budget import MARGIN, choose_measured_budget, measure_budgets
from deploy.ontarget.protocol import PROTOCOL
from deploy.ontarget.runtimes import TimingProtocol, time_interleaved
from deploy.verify import judge

REPO = Path(__file__).resolve().parents[1]


def _batch(factor, works=(0.05, 0.1, 0.2, 0.4)):
    probe = DriftingRuntime(0.1, factor)
    models = [DriftingRuntime(w, factor) for w in works]
    rts = [probe, *models]
    return time_interleaved(rts, [np.zeros(1)] * len(rts),
                            TimingProtocol(warmup=1, runs=7, trials=15, probe=True, retime=0))


def test_probe_relative_times_hold_while_absolute_times_move_2x():
    """One batch at full speed, one whose speed steps between 2x and 3x slower every 100 ms
    (a trial takes ~15 ms, the batch ~0.3 s: several steps, most trials within one speed):
    the ms move 2-3x, each model's time in probe units stays within 3% of the truth."""
    quiet = _batch(lambda t: 1.0)
    drifting = _batch(steps((2.0, 3.0), 0.1))
    works = np.array([0.05, 0.1, 0.2, 0.4])
    truth = works / 0.1
    ms_ratio = np.array([d["median"] / q["median"] for d, q in zip(drifting[1:], quiet[1:])])
    # the absolute times moved 2-3x (1.5x allowed: this VM changes its own speed too)
    assert (ms_ratio > 1.5).all(), ms_ratio
    for stats in (quiet, drifting):
        rel = np.array([s["rel"] for s in stats[1:]])
        assert np.abs(rel / truth - 1).max() < 0.03, rel
    assert quiet[0]["rel"] == 1.0 and len(quiet[0]["trial_means"]) >= 10


def test_a_brief_slow_down_drops_the_trials_it_touched_and_times_nothing_again():
    """The device slows 2x for 40 ms in the middle of a ~50 ms batch: the trials whose probe
    timings straddle a change are dropped from the medians, the trials wholly inside the slow
    window keep their ratio, nothing is timed again, and the model's probe units are right;
    the batch's spread still reports the 2x."""
    t0 = time.perf_counter()

    def factor(t: float) -> float:
        return 2.0 if 0.015 < t - t0 < 0.055 else 1.0

    probe = DriftingRuntime(0.1, factor)
    model = DriftingRuntime(0.3, factor)
    out = time_interleaved([probe, model], [np.zeros(1)] * 2,
                           TimingProtocol(warmup=0, runs=10, trials=10, probe=True,
                                          probe_bound=1.2, retime=2))
    assert out[0]["retimed"] == 0 and 1 <= out[0]["dropped"] <= 5, out[0]
    assert out[0]["spread"] > 1.5
    assert out[1]["rel"] == pytest.approx(3.0, rel=0.03)
    none = time_interleaved([probe, model], [np.zeros(1)] * 2,
                            TimingProtocol(warmup=0, runs=10, trials=10))
    assert "rel" not in none[1]  # no probe: statistics in ms only


def test_a_batch_whose_probe_moved_during_most_trials_is_timed_again():
    """In the first attempt the device's speed changes 2x within every model's trial (the
    probe before and after each trial differ): every trial is dropped, the batch is timed
    again, and the steady attempt is kept with no trial dropped."""
    calls = [0]

    def jumpy(t: float) -> float:  # the probe alternates speeds, trial by trial, 10 trials
        calls[0] += 1
        return 2.0 if calls[0] <= 100 and (calls[0] - 1) // 10 % 2 else 1.0

    probe = DriftingRuntime(0.1, jumpy)
    model = DriftingRuntime(0.3, lambda t: 1.0)
    out = time_interleaved([probe, model], [np.zeros(1)] * 2,
                           TimingProtocol(warmup=0, runs=10, trials=10, probe=True,
                                          probe_bound=1.2, retime=2))
    assert out[0]["retimed"] == 1 and out[0]["dropped"] == 0, out[0]
    assert out[1]["rel"] == pytest.approx(3.0, rel=0.03)


def _slow_device_batch(trials: int) -> tuple[list[dict], int]:
    """A device where one probe trial (5 x 12 ms) outlasts the fixed 50 ms re-time interval,
    as on the emulated Pi, beside 24 models of 3 ms (360 ms of models a trial): the batch's
    statistics and how many times the probe was timed."""
    probe = DriftingRuntime(12.0, lambda t: 1.0)
    models = [DriftingRuntime(3.0, lambda t: 1.0) for _ in range(24)]
    rts = [probe, *models]
    out = time_interleaved(rts, [np.zeros(1)] * len(rts), TimingProtocol(
        warmup=0, runs=5, trials=trials, probe=True, retime=0))
    n = len(out[0]["trial_means"])
    assert out[0]["share"] == pytest.approx(n * 60 / (n * 60 + trials * 24 * 15), rel=0.15)
    assert out[0]["timed_ms"] == pytest.approx(n * 60 + trials * 24 * 15, rel=0.15)
    for s in out[1:]:
        assert s["rel"] == pytest.approx(0.25, rel=0.1)
    return out, n


def test_on_a_slow_device_the_probe_keeps_to_a_small_share_of_the_timed_work():
    """The slow device: the probe is re-timed after 10 of its own trials' time (600 ms)
    instead of before every model, so over 3 trials it is timed 2-4 times, where the fixed
    interval timed it about 20 times (52%), and the models' probe units are still right.
    The share is compared with what the count of probe timings gives (a busy machine can
    add one); three trials, so that a model's median is not the one trial the scheduler
    preempted."""
    out, n = _slow_device_batch(3)
    assert n <= 3 * 2 + 1, n  # at most one re-time per trial, not one every 50 ms (20)
    assert out[0]["share"] < 0.3, out[0]["share"]  # the fixed interval: 52%


def test_on_a_slow_device_a_trials_start_times_the_probe_only_when_it_is_due():
    """The slow device over 8 trials: the models' work per trial (360 ms) is under the
    probe's interval (600 ms), so a trial's start skips the probe until it is due: one
    timing per 600 ms of models, about 6 with the first and the last, not one per trial
    and one after (9), a share near 11% against 16%; every model's trial still lies
    between two probe timings and its probe units are right."""
    out, n = _slow_device_batch(8)
    assert n <= 8, n
    assert out[0]["share"] < 0.14, out[0]["share"]


def test_a_builds_probe_share_weighs_each_batch_by_its_timed_work():
    """A first batch of 8 short blocks (40% probe, 100 ms) and three of 32 (10%, 900 ms
    each): the build's share is 11%, not the batches' mean 17.5%; a build state saved
    before the weights (bare shares) falls back to the mean."""
    from deploy.lut.build import probe_share

    assert probe_share([[0.4, 100.0]] + [[0.1, 900.0]] * 3) == pytest.approx(310 / 2800)
    assert probe_share([0.4, [0.1, 900.0]]) == pytest.approx(0.25)


def test_device_timing_shows_the_agents_progress_here(capsys):
    """Subnets timed on a device show the agent's progress lines as one bar on the host
    across requests (the calibration of a build on the emulated Pi timed for many minutes
    without a word); the target's hook is restored after."""
    from deploy.targets.base import device_progress

    class Fake:
        name, progress = "ssh://pi", None

        def bench_many(self, paths, threads, protocol):
            for done in range(1, 4):
                self.progress(done, 3)

    t = Fake()
    with device_progress(t, "calibration"):
        t.bench_many([], 1, None)
        t.bench_many([], 1, None)
    assert t.progress is None
    err = capsys.readouterr().err
    assert "calibration: time on ssh://pi" in err and "6/6" in err


def test_judge_keeps_adapts_and_rebuilds():
    g = np.random.default_rng(0)
    pred = g.uniform(1, 5, 12)
    res = np.array([12, 16, 20] * 4)
    action, reason, fit = judge(pred, pred * g.normal(1, 0.02, 12), res)
    assert action == "kept" and fit == {} and "12 of 12" in reason
    action, _, fit = judge(pred, pred * 1.4 * g.normal(1, 0.02, 12), res)
    assert action == "adapted" and fit["scale"] == pytest.approx(1.4, rel=0.05)
    # within the tolerance as it is, but every subnet 6% slower here: the offset is removed
    action, reason, fit = judge(pred, pred * 1.06 * g.normal(1, 0.01, 12), res)
    assert action == "adapted" and "12 of 12" in reason and fit["scale"] == pytest.approx(
        1.06, rel=0.02)
    # another device whose resolutions scale differently: per-resolution scales
    per = np.array([{12: 0.7, 16: 1.0, 20: 1.5}[r] for r in res])
    action, reason, fit = judge(pred, pred * per, res)
    assert action == "adapted" and "resolution scales" in reason
    assert fit["resolution_scale"] == pytest.approx({12: 0.7, 16: 1.0, 20: 1.5})
    action, reason, _ = judge(pred, g.uniform(1, 5, 12), res)  # no relation: rebuild
    assert action == "rebuild" and "need 80%" in reason
    with pytest.raises(ValueError, match="4 or more"):
        judge(pred[:3], pred[:3], res[:3])
    with pytest.raises(ValueError, match="positive"):
        judge(pred, -pred, res)


def test_judge_adapts_the_one_resolution_a_table_gets_wrong():
    """The 12 subnets of a verification of the shipped digits table on a 2-core EPYC VM
    (`ofa run`, docs/latency.md): 11 of 12 within ±10% as it is, but the four at 20 px all
    predicted 5-15% high. That resolution gets its own scale, the others none."""
    pred = np.array([3.956, 4.893, 9.385, 5.199, 5.175, 6.758, 3.783, 5.474, 7.395, 5.271,
                     4.883, 9.063])
    meas = np.array([4.154, 5.23, 8.671, 5.205, 5.162, 6.674, 3.632, 5.508, 6.731, 5.063,
                     4.522, 8.039])
    res = np.array([12, 16, 20] * 4)
    action, reason, fit = judge(pred, meas, res)
    assert action == "adapted" and reason.startswith("11 of 12 subnets within ±10% as it is")
    scales = fit["resolution_scale"]
    assert scales[12] == scales[16] == 1.0 and scales[20] == pytest.approx(0.926, abs=0.001)


def test_judge_rarely_fits_a_scale_to_timing_noise():
    """Measurements that scatter 4% around a right table (the timing noise of a
    verification on a busy VM): a scale is fitted in under 10% of 400 verifications, and
    never one over 10%."""
    g = np.random.default_rng(1)
    res = np.array([12, 16, 20] * 4)
    fitted = []
    for _ in range(400):
        pred = g.uniform(1, 5, 12)
        action, _, fit = judge(pred, pred * np.exp(g.normal(0, 0.04, 12)), res)
        if fit:
            fitted.append(max(abs(s - 1) for s in (fit.get("resolution_scale") or
                                                    {0: fit["scale"]}).values()))
    assert len(fitted) < 40 and max(fitted) < 0.10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 10), st.floats(50, 99), st.floats(0.5, 2.0)),
                min_size=1, max_size=30),
       st.lists(st.floats(0.2, 12), min_size=1, max_size=4))
def test_a_measured_budget_never_returns_a_subnet_measured_over_it(rows, budgets):
    """Whatever the predictions and the device: every subnet returned as meeting its budget
    was measured under it with the margin to spare (deploy.budget.MARGIN), and 'not met'
    only when no candidate measured so."""
    front = [{"config": {"i": i}, "latency_ms": lat, "acc": acc}
             for i, (lat, acc, _) in enumerate(rows)]
    truth = {i: lat * off for i, (lat, _, off) in enumerate(rows)}  # the device's own ms
    chosen = [min(front, key=lambda r: abs(r["latency_ms"] - b)) for b in budgets]
    calls = []

    def measure(cfgs):
        calls.append(len(cfgs))
        return [truth[c["i"]] for c in cfgs]

    out = measure_budgets(budgets, chosen, front, measure, k=3, rounds=20)
    for b, r in zip(budgets, out):
        assert r["measured_ms"] == truth[r["config"]["i"]]
        ok = b * (1 - MARGIN)
        if r["met"]:
            assert r["measured_ms"] <= ok < b
            best = max(c["acc"] for c in r["candidates"] if c["measured_ms"] <= ok)
            assert r["acc"] == best
        else:  # every subnet predicted near or under the budget was tried, and failed
            tried = {c["config"]["i"] for c in r["candidates"]}
            assert all(c["measured_ms"] > ok for c in r["candidates"])
            assert {f["config"]["i"] for f in front if f["latency_ms"] <= b * 1.1} <= tried
    assert all(n > 0 for n in calls)
    assert choose_measured_budget(1.0, [{"acc": 90, "measured_ms": 1.5}]) is None


def test_a_table_without_probe_data_loads_with_a_one_line_note(tmp_path, capsys):
    from conftest import synthetic_table

    from ofa.space import get_space
    from search.latency_table import LatencyTable

    space = get_space("mbv3-digits", resolutions=[12])
    t = synthetic_table(space)
    t.save(tmp_path / "old.json")
    loaded = LatencyTable.load(tmp_path / "old.json")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no probe data" in err[0] and "ofa lut build" in err[0]
    assert loaded.unit == "ms" and loaded.probe_ms("sustained") == 1.0
    LatencyTable.load(tmp_path / "old.json")
    assert capsys.readouterr().err == ""  # once per file


def _tiny_space():
    from ofa.space import get_space

    return get_space("mbv3-digits", ks_list=[3, 7], expand_list=[3, 6], depth_list=[2],
                     resolutions=[12, 16])


def test_verify_keeps_or_adapts_a_table_here_and_rebuilds_a_wrong_one(tmp_path, monkeypatch):
    """A table built here verifies (kept or adapted); the same table with every block 1.5x
    slower in probe units is adapted by the scale that undoes the 1.5x on the first
    verification's measurements; one with random entries is
    rebuilt. Each verdict is one line. The three verifications draw the same 12 seeded
    subnets: the second and third reuse the first's measurements, so that only the tables
    differ between them, and the 1.5x table is judged on the very timings on which the
    table built here was kept or adapted (on 8 of them, a subnet whose real timing on this
    VM strayed from its table by more than 10% decided it in two of seven clean-clone
    runs: 6 of 8 within, 7 needed)."""
    import deploy.verify
    from deploy.lut import build_table
    from deploy.verify import verify_table
    from ofa.space import get_space

    measured: dict[str, tuple[float, float]] = {}
    probe_ms: list[float] = []
    measure = deploy.verify.measure_subnets

    def remembered(table, space, cfgs, **kw):
        keys = [json.dumps(c.to_dict(), sort_keys=True) for c in cfgs]
        if not all(k in measured for k in keys):
            m = measure(table, space, cfgs, **kw)
            measured.update(zip(keys, zip(m["rel"], m["ms"])))
            probe_ms[:] = m["probe_ms"]
        rel, ms = zip(*(measured[k] for k in keys))
        return {"rel": list(rel), "ms": list(ms), "probe_ms": list(probe_ms)}

    monkeypatch.setattr(deploy.verify, "measure_subnets", remembered)

    # subnets of about a millisecond: sub-0.1 ms ones are within this VM's timing noise
    space = get_space("mbv3-cifar", ks_list=[3, 7], expand_list=[3, 6], depth_list=[2],
                      resolutions=[32])
    table = build_table(space, [32], "onnxruntime", tmp_path / "t.json", calib=6)
    v = verify_table(table, space, k=12)
    assert len(measured) == 12
    assert v.action in ("kept", "adapted"), v.line()
    assert v.table.probe["measured"] == "this machine" and "build_ms" in v.table.probe
    slow = json.loads((tmp_path / "t.json").read_text())
    for group in slow["entries"].values():
        for e in group.values():
            e["rel"] *= 1.5
    slow["overhead_rel"] *= 1.5
    from search.latency_table import LatencyTable

    v2 = verify_table(LatencyTable.from_dict(slow, "slow.json"), space, k=12)
    assert v2.action == "adapted", v2.line()
    # the scale is the geometric mean of measured over the slow table's predictions for the
    # same 12 subnets (measured once, by the first verification): well under 1, its blocks
    # 1.5x too slow (the calibration's weights term does not scale with them)
    first = v.details["subnets"]
    assert len(first) == 12
    from ofa.space import SubnetConfig
    from search.latency import LatencyPredictor

    slow_pred = LatencyPredictor(LatencyTable.from_dict(slow, "slow.json"), space).units_many(
        [SubnetConfig.from_dict(s["config"]) for s in first])
    own = np.exp(np.mean(np.log(np.array([s["measured"] for s in first]) / slow_pred)))
    assert v2.table.calibration["scale"] == pytest.approx(own, rel=1e-6) and own < 0.85
    g = np.random.default_rng(0)
    wrong = json.loads((tmp_path / "t.json").read_text())
    for group in wrong["entries"].values():
        for e in group.values():
            e["rel"] = float(g.uniform(0.05, 20.0))
    v = verify_table(LatencyTable.from_dict(wrong, "wrong.json"), space, k=12)
    assert v.action == "rebuild" and "\n" not in v.line()
    assert len(measured) == 12  # the first verification's subnets, measured once


def test_a_device_build_stopped_before_its_calibration_resumes(tmp_path):
    """Every block measured, the calibration not yet: the same build goes on with the
    calibration (it used to fail with 'one runtime per batch, got []')."""
    from deploy.lut import build_table
    from deploy.targets import LocalTarget

    space = get_tiny = _tiny_space().with_choices(resolutions=(12,))
    proto = TimingProtocol(warmup=1, runs=5, trials=3)
    out = tmp_path / "dev.json"
    build_table(get_tiny, [12], "onnxruntime", out, protocol=proto, calib=0,
                target=LocalTarget())
    table = json.loads(out.read_text())
    partial = tmp_path / "dev.json.partial.json"
    state = {"space": space.to_dict(), "resolutions": [12], "runtime": "onnxruntime",
             "precision": "fp32", "threads": 1, "target": "local",
             "protocol": table["protocol"], "block_layout": "nchw",
             "entries": table["entries"], "context": table["context"],
             "overhead_ms": table["overhead_ms"], "overhead_rel": table["overhead_rel"],
             "probe_ms": [table["probe"]["ms"]["median"]]}
    partial.write_text(json.dumps(state))
    t = build_table(space, [12], "onnxruntime", out, protocol=proto, calib=2,
                    target=LocalTarget())
    assert len(t.calibration["fitted_on"]) == 4 and t.build["blocks"] == 0
    assert t.entries == table["entries"] and not partial.exists()
    # the device's answers carry each trial's units: a measurement there is brought to the
    # table's reference state trial by trial, over the pooled trials of its two timings
    from deploy.lut import at_reference, measure_subnets
    from ofa.space import SubnetConfig

    cfgs = [SubnetConfig.from_dict(f["config"]) for f in t.calibration["fitted_on"][:2]]
    m = measure_subnets(t, space, cfgs, target=LocalTarget(), protocol=proto, repeats=2)
    assert [1 <= len(p) <= 2 * proto.trials for p in m["pairs"]] == [True, True]
    assert m["rel"] == at_reference(m, t.reference["rel"], t.reference_weight)


def test_the_agent_reports_progress_and_the_host_waits_as_long_as_it_does(monkeypatch):
    """A request that outlasts the host's timeout completes while the agent sends progress;
    an agent that goes silent for the timeout is an error, in one line."""
    from deploy.targets.base import TargetError
    from deploy.targets.ssh import SSHTarget, _AgentProcess

    script = ("import json, sys, time\n"
              "for i in range(int(sys.argv[1])):\n"
              f"    time.sleep(0.4); print(json.dumps({{'v': {PROTOCOL}, 'progress': i, "
              "'of': 9}), flush=True)\n"
              f"time.sleep(float(sys.argv[2])); print(json.dumps({{'v': {PROTOCOL}, "
              "'models': []}), flush=True)\n")
    t = SSHTarget("u", "example.invalid", timeout=1.0)
    seen = []
    t.progress = lambda done, total: seen.append(done)
    slow = _AgentProcess([sys.executable, "-c", script, "6", "0.2"])  # 2.6 s in all
    slow.pending = 1
    assert t._receive(slow) == {"v": PROTOCOL, "models": []} and seen == list(range(6))
    slow.end()
    silent = _AgentProcess([sys.executable, "-c", script, "0", "3"])
    silent.pending = 1
    with pytest.raises(TargetError, match="sent nothing for 1 s"):
        t._receive(silent)
    silent.end()


def test_serve_writes_progress_lines_while_it_times(monkeypatch, tmp_path):
    import deploy.ontarget.agent as agent
    from deploy.probe import probe_file

    monkeypatch.setattr(agent, "PROGRESS_S", 0.01)
    probe = probe_file("onnxruntime", "fp32", tmp_path)
    lines = []
    req = {"v": PROTOCOL, "op": "bench", "models": [str(probe), str(probe)], "warmup": 0,
           "runs": 100, "trials": 5, "probe": True}
    agent.serve([json.dumps(req)], lines.append)
    answers = [json.loads(x) for x in lines]
    assert all(set(a) == {"v", "progress", "of"} for a in answers[:-1]) and len(answers) > 2
    assert max(a["progress"] for a in answers[:-1]) > 0 and answers[-2]["of"] == 2 * 5
    assert answers[-1]["probe"]["rel"] == 1.0
    assert answers[-1]["models"][1]["latency_ms"]["rel"] == pytest.approx(1.0, rel=0.5)


def test_serve_keeps_writing_progress_while_work_reports_none(monkeypatch, tmp_path):
    """A batch timed again because the probe moved, or a long load, reports no trials:
    tried on the emulated Pi, a digits build then stopped with "the agent sent nothing for
    300 s". The agent's heartbeat writes a progress line every few seconds whatever the
    work does, so the host's silence limit meets only a hung device."""
    import deploy.ontarget.agent as agent
    from deploy.probe import probe_file

    monkeypatch.setattr(agent, "PROGRESS_S", 0.05)
    monkeypatch.setattr(agent.LoadedBatch, "time",
                        lambda self, protocol, progress: time.sleep(0.6) or {"models": []})
    probe = probe_file("onnxruntime", "fp32", tmp_path)
    lines = []
    req = {"v": PROTOCOL, "op": "bench", "models": [str(probe)], "warmup": 0, "runs": 1,
           "trials": 1}
    agent.serve([json.dumps(req)], lines.append)
    answers = [json.loads(x) for x in lines]
    assert len(answers) >= 6 and answers[-1] == {"v": PROTOCOL, "models": []}
    assert all(set(a) == {"v", "progress", "of"} for a in answers[:-1])


def test_a_serving_agent_ends_when_its_connection_drops(tmp_path):
    """The host goes away in the middle of a long batch (its ssh killed): the agent stops
    at once instead of timing on for minutes with no one to answer."""
    from deploy.probe import probe_file

    probe = probe_file("onnxruntime", "fp32", tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.ontarget.agent", "--serve"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    req = {"v": PROTOCOL, "op": "bench", "models": [str(probe), str(probe)], "warmup": 0,
           "runs": 1000, "trials": 1000}
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    time.sleep(2.0)  # loaded and timing (about 200 s of work)
    assert proc.poll() is None
    proc.stdin.close()
    t = time.monotonic()
    proc.wait(timeout=10)
    assert time.monotonic() - t < 5


def test_repeated_timings_keep_each_models_median(monkeypatch):
    """The final measurement and the measured budget time their models 3 times and keep
    each one's median timing, its ms and probe units from the same batch: one batch far off
    (a model and its copy 22% apart, as once seen under the drift harness) moves nothing;
    the budget's subnets are exported once for the three."""
    import deploy.lut.measure as measure
    from deploy.probe import ProbedTarget, median_repeat
    from deploy.validate import REPEATS
    from ofa.space import get_space
    from search.latency_table import LatencyTable

    batches = iter([[6.5, 6.6], [6.7, 8.2], [6.6, 6.5]])  # the second batch is off

    class Fake:
        name = "fake"

        def bench_many(self, paths, threads, protocol):
            assert protocol.probe and len(paths) == 3  # the probe first, then a and b
            return [{"model": p, "latency_ms": {"median": r * 0.1, "rel": r}}
                    for p, r in zip(paths, [1.0, *next(batches)])]

    rows = ProbedTarget(Fake(), "onnxruntime").bench_many(["a", "b"], 1, TimingProtocol(),
                                                           repeats=REPEATS)
    assert REPEATS == 3 and [r["latency_ms"]["rel"] for r in rows] == [6.6, 6.6]
    assert [r["latency_ms"]["median"] for r in rows] == pytest.approx([0.66, 0.66])
    assert rows[1]["latency_ms"]["rel_repeats"] == [6.6, 8.2, 6.5]
    assert median_repeat([[1, 5], [3, 4], [2, 6], [4, 3]]) == [1, 0]  # upper median of four
    with pytest.raises(ValueError, match="repeats of the same models"):
        median_repeat([[1, 2], [3]])
    folders = []
    runs = iter([([1.0, 2.0], [10, 20]), ([3.0, 2.05], [30, 30]), ([2.0, 2.2], [20, 21])])

    def fake_measure(*args, models=None, **kw):
        folders.append(models)
        m, rel = next(runs)
        return {"ms": m, "rel": rel, "probe_ms": [0.1]}

    monkeypatch.setattr(measure, "_measure_configs", fake_measure)
    space = get_space("mbv3-digits")
    table = LatencyTable(context={"runtime": "onnxruntime", "threads": 1}, space=space.to_dict(),
                         resolutions=[12], entries={}, protocol={}, overhead_ms=0.0)
    got = measure.measure_subnets(table, space, [space.min_subnet(12)] * 2, repeats=3)
    # the second subnet's median probe units (21) come from the third timing, so do its ms
    assert got["ms"] == [2.0, 2.2] and got["rel"] == [20, 21] and len(got["probe_ms"]) == 3
    assert folders[0] is not None and folders.count(folders[0]) == 3  # exported once
    with pytest.raises(ValueError, match="repeats must be in 1-20"):
        measure.measure_subnets(table, space, [], repeats=0)


def test_a_repeated_measurements_state_is_the_median_of_every_timing():
    """Three timings of two subnets beside the reference subnet: each subnet's picked timing
    may come from the one batch that ran slow (reference 6.0 there, 5.0 in the others); the
    state of the measurement is the median over all six reference timings, 5.0."""
    from deploy.lut.measure import repeated

    runs = iter([([10.0, 20.0], [5.0, 5.0]), ([12.0, 24.6], [6.0, 6.0]),
                 ([10.2, 19.0], [5.0, 5.0])])

    def fake(protocol, folder):
        rel, ref = next(runs)
        return {"ms": [r / 10 for r in rel], "rel": rel, "probe_ms": [0.1],
                "reference_rel": ref}

    got = repeated(fake, TimingProtocol(), 3)
    # by units against the reference: subnet 0 2.0, 2.0, 2.04 -> the slow batch's (2.0)
    assert got["reference_rel"] == [6.0, 5.0] and got["rel"] == [12.0, 20.0]
    assert sorted(got["reference_seen"]) == [5.0] * 4 + [6.0] * 2
    assert float(np.median(got["reference_seen"])) == 5.0


def test_a_repeated_measurement_waits_for_the_fast_state():
    """Given the device's fastest probe time (0.10 ms), three timings taken while the probe
    ran 1.6x slower are followed by more, one at a time, until three are at the fast state;
    the medians come from those only, the speed states from every timing."""
    from deploy.lut.measure import repeated
    from deploy.probe import FAST_WAIT

    timings = [(0.16, [14.0]), (0.16, [15.5]), (0.16, [13.0]), (0.11, [12.0]),
               (0.16, [16.0]), (0.10, [12.4]), (0.105, [12.2])]
    calls: list[int] = []

    def fake(protocol, folder):
        p, rel = timings[len(calls)]
        calls.append(1)
        return {"ms": [r * p for r in rel], "rel": rel, "probe_ms": [p, p]}

    got = repeated(fake, TimingProtocol(), 3, fastest=0.10)
    assert len(calls) == 7 and got["rel"] == [12.2]
    assert got["fast_state"]["at_fast"] == 3 and got["fast_state"]["batches"] == 7
    assert len(got["probe_ms"]) == 14  # every timing's probe, slow ones included
    calls.clear()
    timings[:] = [(0.16, [14.0 + i / 10]) for i in range(3 + FAST_WAIT)]
    got = repeated(fake, TimingProtocol(), 3, fastest=0.10)  # it stays slow: all kept
    assert len(calls) == 3 + FAST_WAIT and got["fast_state"]["at_fast"] == 0
    assert got["rel"] == [14.4]
    calls.clear()
    got = repeated(fake, TimingProtocol(), 3)  # no speed states known: three timings
    assert len(calls) == 3 and "fast_state" not in got and got["rel"] == [14.1]


def _calibration_case(make_table):
    """The module ``deploy.lut.calibrate`` (not the function), a digits space @12, a table
    of it from ``make_table`` and its 4 + 2 calibration subnets' true units (1.2 x sums)."""
    import importlib

    from deploy.lut.convert import calibration_configs
    from ofa.space import get_space
    from search.latency import LatencyPredictor

    space = get_space("mbv3-digits", resolutions=[12])
    table = make_table(space)
    truth = 1.2 * LatencyPredictor(table, space, calibrated=False).units_many(
        calibration_configs(space, [12], 4, 0))
    return importlib.import_module("deploy.lut.calibrate"), space, table, truth


def test_calibration_keeps_each_subnets_median_pass(monkeypatch):
    """`calibrate` times its subnets in 3 passes (the default) of 4 of the protocol's 10
    trials each and fits each subnet's median pass: one pass that put the subnets 30%
    higher in probe units moves no point of the fit."""
    from conftest import synthetic_table

    calibrate_mod, space, table, truth = _calibration_case(synthetic_table)
    passes, trials = iter([1.0, 1.3, 1.02]), []

    def fake_measure(*args, **kw):
        trials.append(args[4].trials)  # the protocol of this pass
        f = next(passes)
        return {"ms": list(truth * f), "rel": list(truth * f), "probe_ms": [0.1]}

    monkeypatch.setattr(calibrate_mod, "_measure_configs", fake_measure)
    cal = calibrate_mod.calibrate(table, space, 4).calibration
    assert cal["repeats"] == 3 and len(cal["fitted_on"]) == 6  # 4 + the largest, smallest
    assert trials == [4, 4, 4]  # 10 trials spread over the passes: about one pass's work
    assert [f["measured"] for f in cal["fitted_on"]] == pytest.approx(list(truth * 1.02))
    assert cal["p"] == pytest.approx(1.0) and cal["a"] == pytest.approx(1.2 * 1.02)
    with pytest.raises(ValueError, match="repeats must be in 1-20"):
        calibrate_mod.calibrate(table, space, 4, repeats=21)


def test_a_slow_down_the_probe_misses_is_carried_by_the_reference_subnet(monkeypatch):
    """The device slows whole subnets 1.3x and not the probe (caches and memory shared with
    a neighbour: `bench/reference_tracking.py`): their probe units move 30%, and brought to
    the first measurement's state by the reference subnet timed in every batch
    (`at_reference`) they stay within 3%. 18 subnets make two batches (16 + 2), each with
    the reference."""
    import deploy.lut.measure as measure
    from deploy.lut import at_reference

    slow = [1.0]
    monkeypatch.setattr(measure, "load_probe",
                        lambda *a, **k: (DriftingRuntime(0.1, lambda t: 1.0), np.zeros(1)))
    works = [0.3 + 0.02 * i for i in range(18)]
    rts = [DriftingRuntime(w, lambda t: slow[0]) for w in [*works, 0.45]]  # reference last
    proto = TimingProtocol(warmup=1, runs=4, trials=7, probe=True, retime=0)

    def timed():
        return measure._timed_here(rts, [np.zeros(1)] * len(rts), "drifting", 1, "fp32",
                                   proto, "test", with_reference=True)

    first = timed()
    slow[0] = 1.3
    second = timed()
    assert len(first["rel"]) == 18 and len(second["reference_rel"]) == 18
    state = float(np.median(first["reference_rel"]))
    assert state == pytest.approx(4.5, rel=0.03)
    moved = np.array(second["rel"]) / np.array(first["rel"])
    assert moved.min() > 1.2, moved
    held = np.array(at_reference(second, state)) / np.array(at_reference(first, state))
    assert np.abs(held - 1).max() < 0.03, held
    with pytest.raises(ValueError, match="reference subnet's positive probe units"):
        at_reference({"rel": [1.0]}, state)


def test_every_trial_keeps_its_probe_units_for_pairing_with_the_reference():
    """A probed batch keeps each model's units trial by trial (`trial_rel`, `steady`), the
    trials its `rel` is the median of; `trial_pairs` pairs two models' trials in which both
    were steady (all where none was), and finds nothing to pair in rows without them."""
    from deploy.lut import trial_pairs

    out = _batch(lambda t: 1.0)
    for row in out[1:]:
        assert len(row["trial_rel"]) == len(row["steady"]) == 15
        kept = [v for v, k in zip(row["trial_rel"], row["steady"]) if k]
        assert row["rel"] == pytest.approx(float(np.median(kept)))
    assert "trial_rel" not in out[0]
    pairs = trial_pairs(out[2], out[4])
    assert len(pairs) == sum(a and b for a, b in zip(out[2]["steady"], out[4]["steady"]))
    assert np.median([a / b for a, b in pairs]) == pytest.approx(0.25, rel=0.03)
    a = {"trial_rel": [1.0, 2.0, 3.0], "steady": [True, False, True]}
    b = {"trial_rel": [4.0, 5.0, 6.0], "steady": [False, True, True]}
    assert trial_pairs(a, b) == [[3.0, 6.0]]
    assert trial_pairs({**a, "steady": [False] * 3}, b) == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert trial_pairs({"rel": 2.0}, b) == [] and trial_pairs(a, {"trial_rel": [1.0]}) == []


def test_a_state_change_within_a_batch_is_brought_to_the_reference_trial_by_trial():
    """Whole subnets run 1.3x slower than the probe follows in some trials of a batch (a
    competitor switched on during it). The reference subnet, timed first in each trial, saw
    the slow state in 4 of 7 trials, a subnet timed later in the trial in 3 of 7: their
    medians over the batch fall in different states and the batch-level form is 1.3x low,
    while the trial-by-trial form (`pairs`) is right; the pooled median of two timings too,
    and `repeated` pools the pairs of every timing it kept."""
    from deploy.lut import at_reference
    from deploy.lut.measure import paired_at_reference, repeated

    slow = [1.3, 1.3, 1.3, 1.3, 1.0, 1.0, 1.0]  # the reference's trials
    later = [1.3, 1.3, 1.3, 1.0, 1.0, 1.0, 1.0]  # the subnet's: the switch came between
    ref_units = [5.0 * f for f in slow]
    sub_units = [10.0 * f for f in later]
    pairs = [[a, b] for a, b in zip(sub_units, ref_units)]
    m = {"rel": [float(np.median(sub_units))], "reference_rel": [float(np.median(ref_units))],
         "pairs": [pairs]}
    batch_level = at_reference({k: m[k] for k in ("rel", "reference_rel")}, 5.0)[0]
    assert batch_level == pytest.approx(10.0 / 1.3)  # the subnet fast, its reference slow
    # trial by trial: 6 of 7 trials in one state for both, one mixed trial (3)
    assert at_reference(m, 5.0)[0] == pytest.approx(10.0)
    assert paired_at_reference(pairs, 5.0, weight=0.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="positive pairs"):
        paired_at_reference([], 5.0)
    # pooled over the timings `repeated` keeps: the median over 14 trials, not of 2 medians
    runs = iter([{"ms": [1.0], "rel": [10.0], "probe_ms": [0.1], "reference_rel": [5.0],
                  "pairs": [[[10.0, 5.0], [11.0, 5.0]]]},
                 {"ms": [1.1], "rel": [12.0], "probe_ms": [0.1], "reference_rel": [5.0],
                  "pairs": [[[12.0, 5.0], [12.0, 5.0], [13.0, 5.0]]]}])
    got = repeated(lambda p, f: next(runs), TimingProtocol(probe=True), 2)
    assert got["pairs"] == [[[10.0, 5.0], [11.0, 5.0], [12.0, 5.0], [12.0, 5.0], [13.0, 5.0]]]
    assert at_reference(got, 5.0) == [12.0]


def test_the_final_measurement_brings_each_batch_to_the_reference_state():
    """The final measurement's rows (3 batches each) are brought to the table's reference
    state batch by batch: a subnet whose second batch ran 20% slower together with the
    reference keeps its units; the units as timed stay beside."""
    from deploy.validate import _at_reference

    ref = {"latency_ms": {"rel": 4.0, "rel_repeats": [4.0, 4.8, 3.9]}}
    rows = [{"latency_ms": {"rel": 10.0, "rel_repeats": [10.0, 12.0, 9.75]}},
            {"latency_ms": {"rel": 2.0}}]  # one timing: no repeats recorded
    ref_one = {"latency_ms": {"rel": 4.0}}
    got = _at_reference(rows[:1], ref, 5.0)[0]["latency_ms"]
    assert got["rel"] == pytest.approx(12.5) and got["rel_probe"] == 10.0
    assert _at_reference(rows[1:], ref_one, 5.0)[0]["latency_ms"]["rel"] == pytest.approx(2.5)
    # with both models' units trial by trial in every batch: each batch's median of its
    # trials brought there, and the row's the median over all the trials of all batches
    pairs = [[[[10.0, 4.0], [10.0, 5.0]], [[12.0, 4.8]], [[9.75, 3.9], [9.0, 3.9]]]]
    got = _at_reference(rows[:1], ref, 5.0, pairs=pairs)[0]["latency_ms"]
    assert got["rel_batches"] == pytest.approx([11.25, 12.5, (12.5 + 9.0 * 5 / 3.9) / 2])
    assert got["rel"] == pytest.approx(12.5)  # of 12.5, 10.0, 12.5, 12.5, 11.54
    # a batch without trial units (an older agent): the batch-level form for that row
    assert _at_reference(rows[:1], ref, 5.0, pairs=[[[], *pairs[0][1:]]])[0][
        "latency_ms"]["rel"] == pytest.approx(12.5)


def test_a_final_measurement_whose_batches_disagree_is_timed_in_two_more(monkeypatch):
    """Three batches in which one model spans more than 10% (at the reference state): two
    more batches of every model, each model's median over the five. A model that moved with
    the reference is settled (its units at the reference state agree): no more batches."""
    from types import SimpleNamespace

    import deploy.validate as validate

    script: list[list[float]] = []  # per model, its batches' probe units
    calls: list[int] = []  # the models timed, per batch

    class Scripted:
        def __init__(self, *args, **kw):
            pass

        def bench_many(self, models, threads, protocol, repeats=1):
            assert repeats == 1 and len(script) == len(models)
            calls.append(len(models))
            return [{"latency_ms": {"rel": u[len(calls) - 1]}} for u in script]

    monkeypatch.setattr(validate, "ProbedTarget", Scripted)
    monkeypatch.setattr(validate, "_reference_model", lambda *a: Path("reference.onnx"))
    target = SimpleNamespace(name="fake")
    proto = TimingProtocol()
    script[:] = [[11.1, 13.3, 14.0, 12.2, 12.0], [5.0, 5.1, 5.0, 5.0, 5.0]]
    rows = validate._timed(target, [Path("a"), Path("b")], "onnxruntime", "fp32", 1, proto,
                           None, Path("."))
    assert calls == [2] * 5  # three batches, then two more
    assert [r["latency_ms"]["rel"] for r in rows] == [12.2, 5.0]
    assert rows[0]["latency_ms"]["rel_repeats"] == [11.1, 13.3, 14.0, 12.2, 12.0]
    calls.clear()
    script[:] = [[11.0, 11.5, 11.9], [5.0, 5.1, 5.0]]  # 8% apart: settled
    rows = validate._timed(target, [Path("a"), Path("b")], "onnxruntime", "fp32", 1, proto,
                           None, Path("."))
    assert calls == [2] * 3 and rows[0]["latency_ms"]["rel"] == 11.5
    calls.clear()
    # the second batch 20% slower for the reference and the model alike: settled at the
    # reference state (4.0 units), no more batches
    table = SimpleNamespace(probe={"ms": {}}, reference={"rel": 4.0}, reference_weight=1.0)
    script[:] = [[4.0, 4.8, 4.0], [10.0, 12.0, 10.2]]
    rows = validate._timed(target, [Path("a")], "onnxruntime", "fp32", 1, proto, table,
                           Path("."))
    assert calls == [2] * 3 and rows[0]["latency_ms"]["rel"] == pytest.approx(10.0)
    assert rows[0]["latency_ms"]["rel_batches"] == pytest.approx([10.0, 10.0, 10.2])


def test_a_final_measurement_waits_for_the_device_fast_state(monkeypatch):
    """A final measurement timed while the device is slowed (the probe 1.7x slower than
    the fastest state the table recorded here) times more batches, one at a time, until
    three are at the fast state, and keeps only those; a device that stays slow costs
    FAST_WAIT batches and keeps all of them."""
    from types import SimpleNamespace

    import deploy.validate as validate
    from deploy.probe import FAST_WAIT

    probe: list[float] = []  # the probe's ms in each batch
    units: list[float] = []  # the model's probe units in each batch
    calls: list[int] = []

    class Scripted:
        def __init__(self, *args, **kw):
            pass

        def bench_many(self, models, threads, protocol, repeats=1):
            i = len(calls)
            calls.append(len(models))
            return [{"latency_ms": {"rel": units[i]}, "probe": {"trial_means": [probe[i]]}}]

    monkeypatch.setattr(validate, "ProbedTarget", Scripted)
    target = SimpleNamespace(name="fake")
    table = SimpleNamespace(probe={"ms": {"fastest": 0.10}}, reference={})

    def timed():
        calls.clear()
        return validate._timed(target, [Path("a")], "onnxruntime", "fp32", 1,
                               TimingProtocol(), table, Path("."))[0]

    probe[:] = [0.17, 0.17, 0.17, 0.17, 0.105, 0.11, 0.098, 0.17]
    units[:] = [14.0, 16.0, 13.0, 15.5, 12.2, 12.0, 12.1, 15.0]
    row = timed()
    assert len(calls) == 7  # three batches, four more until three were at the fast state
    assert row["latency_ms"]["rel"] == 12.1
    assert row["latency_ms"]["rel_repeats"] == [12.2, 12.0, 12.1]
    state = row["fast_state"]
    assert state["at_fast"] == 3 and state["batches"] == 7
    assert state["fastest_ms"] == 0.098  # a batch faster than the table's fastest
    probe[:] = [0.17] * 9
    units[:] = [14.0, 13.5, 14.2, 14.1, 13.9, 14.0, 13.8, 14.3, 14.0]
    row = timed()
    assert len(calls) == 3 + FAST_WAIT == 9
    assert row["fast_state"]["at_fast"] == 0 and row["latency_ms"]["rel"] == 14.0
    # no speed states recorded here: three batches, as before
    table.probe = {}
    units[:] = [14.0, 13.5, 14.2]
    row = timed()
    assert len(calls) == 3 and "fast_state" not in row and row["latency_ms"]["rel"] == 14.0


def _probe_table(space):
    from conftest import synthetic_table

    from deploy.probe import probe_summary

    table = synthetic_table(space)  # in ms: its entries in units of a 0.1 ms probe
    for group in table.entries.values():
        for e in group.values():
            e["rel"] = e["median"] / 0.1
    table.probe = {"id": "probe-v1", "ms": probe_summary([0.1])}
    return table


def test_calibration_records_its_reference_state_and_later_measurements_meet_it(monkeypatch):
    """`calibrate` times the table's reference subnet beside its subnets and fits them at
    the reference's median state over its 3 passes (the passes moved everything alike:
    each fits the same), recording it in `calibration.reference`; a later measurement
    taken while whole subnets ran 1.25x slower in probe units is brought back to it, its
    units as timed kept beside."""
    import deploy.lut.measure as measure
    from deploy.lut.convert import reference_config

    calibrate_mod, space, table, truth = _calibration_case(_probe_table)
    passes, refs = iter([1.0, 1.1, 0.9]), []

    def fake_measure(*args, **kw):
        refs.append(args[11])  # the reference subnet timed with them
        f = next(passes)
        return {"ms": list(truth * f * 0.1), "rel": list(truth * f), "probe_ms": [0.1],
                "reference_rel": [5.0 * f] * len(truth)}

    monkeypatch.setattr(calibrate_mod, "_measure_configs", fake_measure)
    cal = calibrate_mod.calibrate(table, space, 4).calibration
    assert refs == [reference_config(space, [12])] * 3
    assert cal["reference"]["config"] == reference_config(space, [12]).to_dict()
    assert cal["reference"]["rel"] == pytest.approx(5.0)
    assert cal["reference"]["range"] == pytest.approx([4.5, 5.5])
    assert [f["measured"] for f in cal["fitted_on"]] == pytest.approx(list(truth))
    assert cal["a"] == pytest.approx(1.2) and cal["p"] == pytest.approx(1.0)
    monkeypatch.setattr(measure, "_measure_configs", lambda *a, **kw: {
        "ms": [0.25], "rel": [2.5], "probe_ms": [0.1], "reference_rel": [6.25]})
    got = measure.measure_subnets(table, space, [space.min_subnet(12)])
    assert got["rel"] == pytest.approx([2.0]) and got["rel_probe"] == [2.5]


def test_the_reference_weight_is_the_share_of_its_movement_the_subnets_follow():
    """`tracking_weight` over 12 subnets x 3 passes (a calibration's): subnets that move
    with the reference give 1; subnets that keep their probe units (1% noise) while the
    reference moves by +-4% give under 0.15 (int8 and digits subnets on this project's VM);
    half-followers about 0.5; a reference that did not move, or one pass, leave the prior 1."""
    from deploy.lut.measure import tracking_weight

    g = np.random.default_rng(0)
    base = g.uniform(20, 60, 12)
    ref = np.array([[46.0 * f] * 12 for f in (1.04, 1.0, 0.96)])
    noise = np.exp(g.normal(0, 0.01, (3, 12)))
    follow = base * ref / 46.0
    assert tracking_weight(follow, ref) == pytest.approx(1.0)
    assert tracking_weight(base * noise, ref) < 0.15
    half = base * np.sqrt(ref / 46.0) * noise
    assert 0.3 < tracking_weight(half, ref) < 0.7
    assert tracking_weight(base * noise, np.full((3, 12), 46.0)) == 1.0
    assert tracking_weight(base[None], ref[:1]) == 1.0


def test_a_calibration_whose_subnets_do_not_follow_the_reference_is_not_moved_by_it(
        monkeypatch):
    """The reference moves 8% over the calibration's 3 passes, its subnets keep their
    probe units (what int8 cifar subnets did under the drift harness, 2026-12-07): the
    calibration records a weight under 0.15 and fits the subnets' units nearly as timed
    (within 1%, where the full correction would have moved one pass's subnets 4%); a later
    measurement whose reference moved 6% moves its subnets by at most 1%."""
    import deploy.lut.measure as measure

    calibrate_mod, space, table, truth = _calibration_case(_probe_table)
    g = np.random.default_rng(1)
    passes = iter([1.04, 1.0, 0.96])

    def fake_measure(*args, **kw):
        f = next(passes)
        rel = truth * np.exp(g.normal(0, 0.005, len(truth)))
        return {"ms": list(rel * 0.1), "rel": list(rel), "probe_ms": [0.1],
                "reference_rel": [46.0 * f] * len(truth)}

    monkeypatch.setattr(calibrate_mod, "_measure_configs", fake_measure)
    cal = calibrate_mod.calibrate(table, space, 4).calibration
    assert cal["reference"]["weight"] < 0.15
    assert np.asarray([f["measured"] for f in cal["fitted_on"]]) / truth == pytest.approx(
        np.ones(len(truth)), abs=0.01)
    monkeypatch.setattr(measure, "_measure_configs", lambda *a, **kw: {
        "ms": [0.25], "rel": [2.5], "probe_ms": [0.1], "reference_rel": [46.0 * 1.06]})
    got = measure.measure_subnets(table, space, [space.min_subnet(12)])
    assert got["reference_weight"] == cal["reference"]["weight"]
    assert got["rel"][0] == pytest.approx(2.5, rel=0.01) and got["rel_probe"] == [2.5]


def test_verify_judges_units_as_timed_and_records_the_state_it_fitted(monkeypatch):
    """A table without a reference state is kept on measurements that match it and gets the
    reference's state of that verification; measured again with every whole subnet and the
    reference 1.3x slower in probe units, it is adapted by 1.3 and records the new state.
    Verified again where its 12 px subnets run 1.1x slower still, the scales compose
    (12 px: 1.43, 16 px: 1.3): a verification's fit multiplies the predictions as they
    were, scale included."""
    import deploy.verify
    from deploy.verify import verify_configs, verify_table
    from ofa.space import get_space
    from search.latency import LatencyPredictor

    space = get_space("mbv3-digits", resolutions=[12, 16])
    table = _probe_table(space)
    factors = iter([{12: 1.0, 16: 1.0}, {12: 1.3, 16: 1.3}, {12: 1.43, 16: 1.3}])

    def fake(tab, sp, cfgs, **kw):
        by_r = next(factors)
        f = by_r[16]
        pred = LatencyPredictor(table, sp).units_many(cfgs) * [by_r[c.r] for c in cfgs]
        return {"ms": list(pred * 0.1), "rel": list(pred), "rel_probe": list(pred),
                "probe_ms": [0.1], "reference_rel": [4.0 * f] * len(cfgs),
                "reference_seen": [4.0 * f] * len(cfgs), "reference_weight": 1.0}

    monkeypatch.setattr(deploy.verify, "measure_subnets", fake)
    assert len(verify_configs(space, [12, 16], 8)) == 8
    v = verify_table(table, space, k=8)
    assert v.action == "kept" and v.table.calibration["reference"]["rel"] == 4.0
    v2 = verify_table(v.table, space, k=8)
    assert v2.action == "adapted", v2.line()
    assert v2.table.calibration["scale"] == pytest.approx(1.3)
    assert v2.table.calibration["reference"]["rel"] == pytest.approx(5.2)
    v3 = verify_table(v2.table, space, k=8)
    assert v3.action == "adapted" and "resolution scales" in v3.reason, v3.line()
    assert "scale" not in v3.table.calibration
    assert v3.table.calibration["resolution_scale"] == pytest.approx({12: 1.43, 16: 1.3})


def test_a_subnet_the_final_measurement_puts_over_its_budget_is_replaced():
    """The final measurement is the arbiter: the subnet it puts over its budget gives way to
    the budget's most accurate candidate that meets it with the margin (its own measurement
    now the larger of its two); a subnet within its budget stays. With no candidate left,
    the most accurate subnet of the front whose prediction, scaled by how much slower the
    final measurement found the one over, meets it, chosen on that estimate until its own
    final measurement settles it; with none of those either, the subnet stays, marked as
    not met."""
    from deploy.budget import rechoose_over_budget, settle_estimates

    def cand(name, acc, ms):
        return {"config": {"n": name}, "acc": acc, "latency_ms": ms, "measured_ms": ms}

    a, b, c, d = cand("a", 80, 0.96), cand("b", 78, 0.90), cand("c", 70, 0.80), cand("d", 90, 1.5)
    g = cand("g", 60, 0.45)
    chosen = [{**a, "budget_ms": 1.0, "label": "budget1", "met": True, "candidates": [a, b, c]},
              {**d, "budget_ms": 2.0, "label": "budget2", "met": True, "candidates": [d]},
              {**a, "budget_ms": 1.0, "label": "budget3", "met": True, "candidates": [a]},
              {**g, "budget_ms": 0.5, "label": "budget4", "met": True, "candidates": [g]}]
    known = [{**b, "macs": 5e6}, {**cand("f", 85, 0.95), "macs": 6e6}]
    new = rechoose_over_budget(chosen, [1.02, 1.6, 1.02, 0.6], known)
    assert new[0]["config"] == {"n": "b"} and new[0]["rechosen"] and new[0]["met"]
    assert new[0]["label"] == "budget1" and new[0]["macs"] == 5e6
    assert new[0]["final_over_ms"] == 1.02 and new[0]["measured_ms"] <= 1.0 * (1 - MARGIN)
    assert next(x for x in new[0]["candidates"] if x["config"] == {"n": "a"})[
        "measured_ms"] == 1.02  # the final measurement, the larger
    assert "estimated" not in new[0]
    assert new[1] is chosen[1]
    # budget3: a ran 1.02/0.96 of its prediction; f (0.95 -> 1.009) would not meet 1.0 with
    # the margin, b (0.90 -> 0.956) does
    assert new[2]["config"] == {"n": "b"} and new[2]["rechosen"] and new[2]["estimated"]
    assert new[2]["measured_ms"] == pytest.approx(0.90 * 1.02 / 0.96) and new[2]["macs"] == 5e6
    assert new[2]["label"] == "budget3" and new[2]["final_over_ms"] == 1.02
    # budget4: g ran 1.33x its prediction; no subnet of the front is predicted fast enough
    assert new[3]["config"] == {"n": "g"} and new[3]["met"] is False and "rechosen" not in new[3]
    settled = settle_estimates(new, [0.93, 1.6, 0.94, 0.6])
    assert settled[:2] == new[:2] and settled[3] is new[3]
    assert settled[2]["measured_ms"] == 0.94 and settled[2]["met"] and "estimated" not in settled[2]
    assert settled[2]["candidates"][-1] == {"config": {"n": "b"}, "acc": 78,
                                            "latency_ms": 0.90, "measured_ms": 0.94}
    assert settle_estimates(new, [0.93, 1.6, 1.01, 0.6])[2]["met"] is False
    with pytest.raises(ValueError, match="4 chosen subnets but 2 final"):
        rechoose_over_budget(chosen, [1.0, 1.0])


def test_a_chosen_subnets_prediction_is_scaled_by_the_other_candidates_only():
    """Five candidates over two budgets measured 0.90-0.96 of their predictions (one 1.30):
    each chosen row's prediction is scaled by the median ratio of the *other* candidates, its
    own measurement left out; with fewer others than the least, the table's prediction
    stays. A front subnet chosen later on an estimate scales the table's prediction."""
    from deploy.budget import rechoose_over_budget, scale_by_candidates

    def cand(name, ms, ratio):
        return {"config": {"n": name}, "acc": 70, "latency_ms": ms, "measured_ms": ms * ratio}

    a, b, c = cand("a", 1.0, 0.90), cand("b", 0.8, 0.92), cand("c", 0.7, 1.30)
    d, e = cand("d", 2.0, 0.94), cand("e", 1.8, 0.96)
    chosen = [{**a, "budget_ms": 1.0, "candidates": [a, b, c]},
              {**d, "budget_ms": 2.0, "candidates": [d, e, b]}]  # b measured for both
    got = scale_by_candidates(chosen)
    # a: the others b, c, d, e -> median of 0.92, 1.30, 0.94, 0.96 = 0.95
    assert got[0]["table_ms"] == 1.0 and got[0]["latency_ms"] == pytest.approx(0.95)
    assert got[0]["candidate_scale"] == {"scale": pytest.approx(0.95), "candidates": 4}
    # d: the others a, b, c, e -> median of 0.90, 0.92, 1.30, 0.96 = 0.94
    assert got[1]["latency_ms"] == pytest.approx(2.0 * 0.94)
    assert got[0]["measured_ms"] == chosen[0]["measured_ms"]  # measurements untouched
    kept = scale_by_candidates(chosen, least=5)
    assert [r["latency_ms"] for r in kept] == [1.0, 2.0] and "candidate_scale" not in kept[0]
    assert scale_by_candidates(got) == got  # the table's prediction is what is scaled
    # the final measurement puts a at 1.05 (1.05x the table, 1.105x the scaled prediction):
    # a front subnet's table prediction is scaled by 1.05, not 1.105
    row = {**got[0], "candidates": [a]}
    new = rechoose_over_budget([row], [1.05], [{**cand("f", 0.90, 1.0), "acc": 75}])[0]
    assert new["config"] == {"n": "f"} and new["measured_ms"] == pytest.approx(0.90 * 1.05)
    with pytest.raises(ValueError, match="least >= 1"):
        scale_by_candidates(chosen, least=0)


def test_the_wait_for_the_fast_state_is_bounded_in_time():
    """A slow device whose timing takes 20 s: after its three, one more (20 s fits the 30 s
    wait), then none (40 s would not); one of 5 s: the six more the count allows."""
    from deploy.probe import FAST_WAIT, FAST_WAIT_S, wait_for_fast_state

    class Device:  # every timing takes `took` s on its clock; the probe 2x slower, always
        def __init__(self, took: float) -> None:
            self.now, self.took = 0.0, took

        def clock(self) -> float:
            return self.now

        def time_one(self) -> float:
            self.now += self.took
            return 0.2

    for took, more in ((20.0, 1), (5.0, FAST_WAIT)):
        d = Device(took)
        got = wait_for_fast_state(d.time_one, 3, lambda p: p, 0.1, clock=d.clock)
        assert len(got) == 3 + more and FAST_WAIT_S == 30.0
    # the state unknown: the three asked for
    assert len(wait_for_fast_state(lambda: None, 3, lambda p: p, 0.1)) == 3
