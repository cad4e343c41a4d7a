import json
import random
from dataclasses import asdict

import pytest
import yaml
from conftest import shared_path

from deploy.formats import get_format
from deploy.lut import build_table
from deploy.ontarget.runtimes import TimingProtocol
from ofa.space import SubnetConfig, get_space
from ofa.supernet import OFAMobileNetV3
from search.latency import LatencyPredictor
from search.latency_table import LatencyTable, TableError, import_ofa_yaml


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """A real (tiny) build: 2 resolutions, restricted choices, onnxruntime, few runs."""
    space = get_space("mbv3-digits", ks_list=[3, 5], expand_list=[3, 6], depth_list=[2, 3],
                      resolutions=[12, 16])
    out = tmp_path_factory.mktemp("lut") / "t.json"
    t = build_table(space, [12, 16], "onnxruntime", out, protocol=TimingProtocol(2, 5, 1), calib=3)
    return space, out, t


def test_keys_cover_every_block_of_extracted_subnets(tiny_table):
    space, out, table = tiny_table
    net = OFAMobileNetV3(space)
    g = random.Random(0)
    for _ in range(50):
        cfg = net.sample_active_subnet(g)
        sub = net.get_active_subnet()
        shapes = space.block_shapes(cfg)
        mb = [s for s in shapes if s.kind == "mbconv"]
        assert len(mb) == len(sub.blocks)
        for s, blk in zip(mb, sub.blocks):  # the key's shape is the module's real shape
            conv = blk.depth_conv[0]
            assert (conv.in_channels, conv.kernel_size[0], conv.stride[0]) == (s.mid, s.kernel,
                                                                               s.stride)
            assert blk.shortcut == s.shortcut and (blk.se is not None) == s.se
        for s in shapes:
            assert s.key() in table.entries[str(cfg.r)]


def test_int8_table_has_the_fp32_keys_and_refuses_fp32_requests(tiny_table, tmp_path):
    """An int8 table times the int8 file of every block (ONNX QDQ here) under the same keys
    as the fp32 table, records int8 in its context, and a request for fp32 is refused."""
    import onnx

    from deploy.lut.convert import _export

    space, _, fp32 = tiny_table
    out = tmp_path / "int8.json"
    t = build_table(space, [12], "onnxruntime", out, protocol=TimingProtocol(2, 5, 1), calib=3,
                    precision="int8")
    assert t.context["precision"] == "int8"
    assert set(t.entries["12"]) == set(fp32.entries["12"])
    g = random.Random(3)
    lat = LatencyPredictor(t, space.with_choices(resolutions=(12,)))
    for _ in range(20):  # every block of a subnet has an int8 entry
        cfg = space.sample(g, r=12)
        assert lat.predict(cfg) > 0
    shape = space.block_shapes(space.max_subnet(12))[1]
    from ofa.static import build_layer

    f = _export(build_layer(shape), (1, shape.in_ch, shape.in_size, shape.in_size),
                get_format("onnx-int8"), tmp_path / "b.onnx")
    ops = {n.op_type for n in onnx.load(f).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    LatencyTable.load(out, space=space, precision="int8")
    with pytest.raises(TableError, match="precision is 'int8', not 'fp32'"):
        LatencyTable.load(out, space=space, precision="fp32")
    with pytest.raises(ValueError, match="fp32 only"):
        build_table(space, [12], "torch", tmp_path / "x.json", precision="int8")


def test_table_roundtrip_and_vectorised_prediction(tiny_table):
    space, out, table = tiny_table
    loaded = LatencyTable.load(out, space=space, resolutions=[12, 16], precision="fp32",
                               runtime="onnxruntime", threads=1)
    assert loaded.to_dict()["entries"] == table.entries
    assert set(loaded.context) >= {"machine", "runtime", "runtime_version", "backend",
                                   "threads", "precision", "batch"}
    assert len(loaded.calibration["fitted_on"]) == 5
    for group in loaded.entries.values():
        for e in group.values():
            assert set(e) == {"median", "mean", "std", "p90", "count", "rel"} and e["count"] == 5
            assert e["rel"] > 0  # probe units (deploy/probe.py)
    pred = LatencyPredictor(loaded, space)
    g = random.Random(1)
    cfgs = [space.sample(g) for _ in range(30)]
    many = pred.predict_many(cfgs)
    for c, v in zip(cfgs, many):
        assert v == pytest.approx(loaded.predict(space, c), rel=1e-9)
        assert pred.predict(c) == pytest.approx(v)
    raw = LatencyPredictor(loaded, space, calibrated=False).predict(cfgs[0])
    ov = loaded.overhead_rel  # a table with probe data sums probe units, then converts to ms
    group = loaded.entries[str(cfgs[0].r)]
    manual = sum(max(group[s.key()]["rel"] - ov, 0) for s in space.block_shapes(cfgs[0])) + ov
    assert loaded.unit == "probe" and loaded.probe["ms"]["median"] > 0
    assert raw == pytest.approx(manual * loaded.probe["ms"]["median"])
    slow = LatencyPredictor(loaded, space, calibrated=False, speed="sustained").predict(cfgs[0])
    assert slow == pytest.approx(manual * loaded.probe["ms"]["p90"])


def test_a_block_timed_below_an_empty_invoke_adds_nothing_to_a_sum(tiny_table, tmp_path):
    """Tiny blocks timed with few trials can come out below the per-invoke overhead; such a
    block's net cost is 0, so a subnet of them predicts one invoke's overhead, not a sum
    at or below zero (which calibration cannot fit)."""
    space, out, _ = tiny_table
    d = json.loads(out.read_text())
    ov = d["overhead_rel"]
    for group in d["entries"].values():
        for e in group.values():
            e["rel"] = 0.25 * ov  # every block below the overhead
    cfgs = [space.sample(random.Random(i), r=12) for i in range(20)]
    keys = [{b.key() for b in space.block_shapes(c)} for c in cfgs]
    some = next(k for k in d["entries"]["12"] if 0 < sum(k in ks for ks in keys) < len(cfgs))
    d["entries"]["12"][some]["rel"] = ov + 0.5  # one block above it, by 0.5 probe units
    low = tmp_path / "low.json"
    low.write_text(json.dumps(d))
    t = LatencyTable.load(low)
    raw = LatencyPredictor(t, space, calibrated=False).units_many(cfgs)
    for c, ks, v in zip(cfgs, keys, raw):
        assert v == pytest.approx(ov + (0.5 if some in ks else 0.0))
        assert t.predict_raw(space, c) == pytest.approx(v)


def test_mismatched_context_and_corrupt_tables(tiny_table, tmp_path):
    space, out, table = tiny_table
    with pytest.raises(TableError, match="resolution 20 missing"):
        LatencyTable.load(out, resolutions=[20])
    with pytest.raises(TableError, match="precision is 'fp32', not 'int8'"):
        LatencyTable.load(out, precision="int8")
    with pytest.raises(TableError, match="space preset='mbv3-digits', not 'mbv3-cifar'"):
        LatencyTable.load(out, space=get_space("mbv3-cifar"))
    with pytest.raises(TableError, match="lacks ks_list values \\[7\\]"):
        LatencyTable.load(out, space=get_space("mbv3-digits", expand_list=[3, 6],
                                               depth_list=[2, 3]))
    bad = tmp_path / "bad.json"
    bad.write_text(out.read_text()[:100])
    with pytest.raises(TableError, match="not valid JSON"):
        LatencyTable.load(bad)
    d = json.loads(out.read_text())
    d["entries"]["12"].pop(next(iter(d["entries"]["12"])))
    bad.write_text(json.dumps(d))
    with pytest.raises(TableError, match="no entry for"):
        LatencyPredictor(LatencyTable.load(bad), space)
    d = json.loads(out.read_text())
    del d["context"]["threads"]
    bad.write_text(json.dumps(d))
    with pytest.raises(TableError, match="context lacks \\['threads'\\]"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(TableError, match="not a latency table"):
        LatencyTable.load(bad)


def test_cli_calibrate_refits_a_copied_table(tiny_table, tmp_path, capsys):
    """`ofa lut calibrate` refits a, b on subnets measured here (a table from another machine
    of the type); bad input fails in one line and writes nothing."""
    from ofa.cli import main

    space, out, _ = tiny_table
    d = json.loads(out.read_text())
    d["calibration"] = {"a": 3.0, "b": 5.0, "fitted_on": []}  # another machine's speed
    copied, new = tmp_path / "copied.json", tmp_path / "new.json"
    copied.write_text(json.dumps(d))
    assert main(["lut", "calibrate", str(copied), "--calib", "2", "--out", str(new)]) == 0
    t = LatencyTable.load(new)
    assert len(t.calibration["fitted_on"]) == 4  # 2 random + largest + smallest
    assert t.calibration["repeats"] == 3  # passes over them, each one's median kept
    assert t.calibration["a"] != 3.0 and t.entries == LatencyTable.load(copied).entries
    assert json.loads(copied.read_text())["calibration"]["a"] == 3.0  # --out: source kept
    for f in t.calibration["fitted_on"]:  # the fit explains the subnets it was fitted on
        pred = LatencyPredictor(t, space).predict(SubnetConfig.from_dict(f["config"]))
        cal = t.calibration
        assert cal["unit"] == "probe"  # fitted in probe units, converted at the build's speed
        units = cal["a"] * f["sum"] ** cal["p"] + cal["b"] + cal["w"] * f["mparams"]
        assert f["mparams"] == space.params(SubnetConfig.from_dict(f["config"])) / 1e6
        assert pred == pytest.approx(units * t.probe_ms())
    copied.write_text(out.read_text()[:200])
    capsys.readouterr()
    assert main(["lut", "calibrate", str(copied), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ofa lut: error:") and "copied.json" in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_cli_validate_times_each_subnet_as_often_as_asked(tiny_table, tmp_path, capsys,
                                                         monkeypatch):
    """`ofa lut validate --repeats 2`: the same 4 subnets timed twice (exported once), the
    median kept; the report says so and compares in probe units and in ms."""
    import deploy.lut.measure as measure
    from ofa.cli import main

    _, out, _ = tiny_table
    calls = []
    real = measure._measure_configs

    def counted(space, cfgs, *a, **kw):
        calls.append(len(cfgs))
        return real(space, cfgs, *a, **kw)

    monkeypatch.setattr(measure, "_measure_configs", counted)
    rep_path = tmp_path / "rep.json"
    capsys.readouterr()
    assert main(["lut", "validate", str(out), "-n", "4", "--repeats", "2", "--out",
                 str(rep_path), "--json"]) == 0
    assert calls == [4, 4]
    rep = json.loads(rep_path.read_text())
    assert rep["repeats"] == 2 and rep["n"] == 4 and len(rep["samples"]) == 4
    assert rep["unit"] == "probe" and 0 <= rep["relative"]["within_10pct"] <= 100
    assert all(s["measured_rel"] > 0 and s["measured_ms"] > 0 for s in rep["samples"])
    assert json.loads(capsys.readouterr().out)["repeats"] == 2


def test_cli_calibrate_refit_upgrades_a_straight_line_fit(tiny_table, tmp_path, capsys):
    """`ofa lut calibrate --refit` measures nothing: it refits the power law on the subnets
    the table records (a table calibrated by an earlier version with a line)."""
    import numpy as np

    from deploy.lut import fit_calibration
    from ofa.cli import main

    _, out, _ = tiny_table
    d = json.loads(out.read_text())
    pts = [{"config": {}, "sum_ms": s, "measured_ms": m}
           for s, m in [(0.1, 0.084), (0.5, 0.46), (1.0, 1.0), (5.0, 5.6)]]
    d["calibration"] = {"a": 1.1, "b": -0.05, "fit": "relative", "fitted_on": pts}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(d))
    assert main(["lut", "calibrate", str(old), "--refit", "--out", str(new)]) == 0
    cal = LatencyTable.load(new).calibration
    want = fit_calibration([0.1, 0.5, 1.0, 5.0], [0.084, 0.46, 1.0, 5.6])
    assert cal["fit"] == "log-power" and cal["fitted_on"] == pts
    assert (cal["a"], cal["p"]) == (pytest.approx(want["a"]), pytest.approx(want["p"]))
    assert 1.0 < cal["p"] < 1.2
    assert np.allclose(LatencyTable.load(new).calibrated(np.array([1.0, 5.0])),
                       want["a"] * np.array([1.0, 5.0]) ** want["p"])
    assert "a=1.100 p=1.000 b=-0.050 ms ->" in capsys.readouterr().out
    d["calibration"]["fitted_on"] = pts[:1]
    old.write_text(json.dumps(d))
    assert main(["lut", "calibrate", str(old), "--refit", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "old.json: 1 calibration subnet(s) recorded" in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_build_resumes_from_partial(tmp_path):
    space = get_space("mbv3-digits", ks_list=[3], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    out = tmp_path / "t.json"
    partial = tmp_path / "t.json.partial.json"
    # a build killed after two entries left this partial file behind
    keys = [s.key() for s in space.all_block_shapes([12])]
    fake = {"median": 123.0, "mean": 123.0, "std": 0.0, "p90": 123.0, "count": 1, "rel": 9.0}
    old = {"space": space.to_dict(), "resolutions": [12], "runtime": "onnxruntime",
           "threads": 1, "protocol": {"warmup": 1, "runs": 2, "trials": 1,
                                      "statistic": "median"},
           "entries": {"12": {keys[0]: fake, keys[1]: fake}}, "overhead_ms": 0.001}
    # a partial file from before probe-relative timing is not mixed into a new build
    partial.write_text(json.dumps(old))
    t = build_table(space, [12], "onnxruntime", out, protocol=TimingProtocol(1, 2, 1), calib=0)
    assert t.entries["12"][keys[0]]["median"] < 100.0
    state = {**old, "protocol": asdict(TimingProtocol(1, 2, 1, probe=True)),
             "probe_ms": [0.1], "overhead_rel": 0.01, "overheads_rel": [0.01]}
    partial.write_text(json.dumps(state))
    t = build_table(space, [12], "onnxruntime", out, protocol=TimingProtocol(1, 2, 1), calib=0)
    assert t.entries["12"][keys[0]]["median"] == 123.0  # kept, not re-measured
    assert t.entries["12"][keys[0]]["rel"] == 9.0
    assert t.entries["12"][keys[2]]["median"] < 100.0  # measured now
    assert t.probe["ms"]["batches"] == 2  # the speed of the stopped build's batch, and now
    assert not partial.exists() and out.exists()


def test_import_ofa_yaml_reproduces_yaml_sums():
    folder = shared_path("ofa_reference", "note10")
    space = get_space("mbv3-w1.2")
    table = import_ofa_yaml(folder, space)
    assert table.resolutions == [160, 176, 192, 208, 224]
    sp = space.with_choices(resolutions=tuple(table.resolutions))
    pred = LatencyPredictor(table, sp)
    yamls = {r: yaml.safe_load((folder / f"{r}_lookup_table.yaml").read_text())
             for r in table.resolutions}
    g = random.Random(0)
    for cfg in [sp.max_subnet(), sp.min_subnet()] + [sp.sample(g) for _ in range(20)]:
        expected = sum(yamls[cfg.r][s.key()]["mean"] for s in sp.block_shapes(cfg))
        assert pred.predict(cfg) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(TableError, match="no latencies for resolution"):
        pred.predict_many([SubnetConfig(sp.max_subnet().ks, sp.max_subnet().e,
                                        sp.max_subnet().d, 128)])


def test_calibration_fits_relative_error():
    """One large subnet must not pull the small ones off (the ±10% criterion is relative)."""
    import numpy as np

    from deploy.lut import fit_calibration

    raw = np.r_[np.linspace(0.6, 2.0, 11), 3.82]
    meas = np.r_[np.linspace(0.6, 2.0, 11), 4.67]
    c = fit_calibration(raw, meas)
    assert c["fit"] == "log-power" and c["b"] == 0.0
    err = np.abs(c["a"] * raw ** c["p"] / meas - 1)
    assert (err[:11] <= 0.05).all()  # an ordinary least-squares line puts the first at 25%
    a0, b0 = np.polyfit(raw, meas, 1)
    assert np.abs((a0 * raw[0] + b0 - meas[0]) / meas[0]) > 0.2
    with pytest.raises(ValueError, match="positive"):
        fit_calibration([1.0, 2.0], [1.0, 0.0])


def test_calibration_power_law_fits_whole_subnets_against_block_sums():
    """The 12 calibration subnets of a LiteRT mbv3-digits table (12-20 px, 2026-11-26): whole
    subnets run at 0.84x their block sum at 0.1 ms and 1.13x at 5.7 ms. The power law fits
    them all within ±10%; a line fitted by relative error leaves three outside."""
    import numpy as np

    from deploy.lut import fit_calibration

    raw = np.array([0.484, 1.227, 2.003, 0.391, 0.705, 1.092, 0.422, 0.723, 0.559, 0.577,
                    5.681, 0.097])
    meas = np.array([0.407, 1.286, 2.16, 0.344, 0.686, 0.997, 0.4, 0.638, 0.521, 0.524,
                     6.442, 0.081])
    c = fit_calibration(raw, meas)
    assert c["p"] == pytest.approx(1.084, abs=0.01) and c["a"] == pytest.approx(0.970, abs=0.01)
    assert np.abs(c["a"] * raw ** c["p"] / meas - 1).max() < 0.09
    a, b = np.polyfit(raw, meas, 1, w=1 / meas)  # the earlier fit: a line, relative error
    assert (np.abs((a * raw + b) / meas - 1) > 0.1).sum() == 3
    exact = fit_calibration(np.geomspace(0.1, 6, 8), 0.9 * np.geomspace(0.1, 6, 8) ** 1.1)
    assert (exact["a"], exact["p"]) == (pytest.approx(0.9), pytest.approx(1.1))
    narrow = fit_calibration([1.0, 1.2, 1.1], [1.0, 1.5, 1.2])  # 1.2x span: no curvature
    assert narrow["p"] == 1.0
    steep = fit_calibration([0.1, 1.0], [0.01, 10.0])  # p 2 at most
    assert steep["p"] == 2.0


def test_calibration_weights_term_recovers_a_cost_per_parameter(tiny_table):
    """Whole subnets that pay 0.5 units per million parameters beyond their block sums
    (weights read from memory, not a core's cache): the fit finds the term, within 5%, and
    explains the subnets within 1%; subnets without such a cost get a term near 0. A table
    with the term predicts the same through the vectorised predictor and one at a time."""
    import numpy as np

    from deploy.lut import fit_calibration

    g = np.random.default_rng(3)
    raw, mparams = g.uniform(20, 50, 12), g.uniform(2.4, 5.2, 12)
    meas = 0.9 * raw ** 1.05 + 0.5 * mparams
    c = fit_calibration(raw, meas, mparams)
    assert c["fit"] == "log-power+weights" and c["w"] == pytest.approx(0.5, rel=0.05)
    pred = c["a"] * raw ** c["p"] + c["w"] * mparams
    assert np.abs(pred / meas - 1).max() < 0.01
    none = fit_calibration(raw, 0.9 * raw ** 1.05, mparams)
    assert none["w"] < 0.02 * np.min(raw / mparams)
    assert fit_calibration(raw, meas)["w"] == 0.0  # no parameters given: the power alone
    few = fit_calibration(raw[:7], meas[:7], mparams[:7])  # too few for three parameters
    assert few["fit"] == "log-power" and few["w"] == 0.0
    with pytest.raises(ValueError, match="parameter count"):
        fit_calibration(raw, meas, -mparams)

    space, out, _ = tiny_table
    t = LatencyTable.load(out)
    t.calibration = {**t.calibration, "a": 1.0, "p": 1.0, "b": 0.0, "w": 0.3}
    cfgs = [space.sample(random.Random(i), r=12) for i in range(5)]
    many = LatencyPredictor(t, space).predict_many(cfgs)
    one = [t.predict(space, c) for c in cfgs]
    raw_only = LatencyPredictor(t, space, calibrated=False).predict_many(cfgs)
    assert many == pytest.approx(one)
    assert many - raw_only == pytest.approx(
        [0.3 * space.params(c) / 1e6 * t.probe_ms() for c in cfgs])


def test_litert_blocks_are_timed_channels_last(tmp_path):
    """A LiteRT table times each block with NHWC input and output, the layout between the
    layers of a whole TFLite network: no TRANSPOSE op in the block's file (with NCHW I/O
    litert-torch adds two, which the network does not have), same numbers as the block."""
    import numpy as np
    import torch

    from deploy.lut.convert import _block_model, _export, block_layout
    from deploy.ontarget.runtimes import get_runtime

    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
    assert (block_layout("litert"), block_layout("onnxruntime")) == ("nhwc", "nchw")
    space = get_space("mbv3-digits")
    shapes = space.all_block_shapes([12])
    picks = [shapes[0], next(s for s in shapes if s.kind == "mbconv" and s.se),
             next(s for s in shapes if s.kind == "classifier")]
    for i, s in enumerate(picks):
        model, shape = _block_model(s, "litert")
        assert shape == (1, s.in_size, s.in_size, s.in_ch)
        path = _export(model, shape, get_format("tflite-fp32"), tmp_path / f"b{i}.tflite")
        ops = [o["op_name"] for o in Interpreter(str(path))._get_ops_details()]
        assert "TRANSPOSE" not in ops, (s.key(), ops)
        rt = get_runtime("litert", 1)
        rt.load(str(path))
        x = torch.randn(1, s.in_ch, s.in_size, s.in_size)
        want = model.block(x).detach()
        got = rt.run(rt.prepare(x.numpy()))
        if want.dim() == 4:
            want = want.permute(0, 2, 3, 1)
        assert np.allclose(got.reshape(want.shape), want.numpy(), atol=1e-4)
    onnx_model, onnx_shape = _block_model(shapes[0], "onnxruntime")
    assert onnx_shape == (1, shapes[0].in_ch, 12, 12)


def test_blocks_converted_ahead_are_timed_not_converted_again(tmp_path, monkeypatch):
    """`convert_blocks` (what `ofa run` runs beside training) leaves the block models in
    `<out>.models/`; the build then converts nothing and removes the folder with the table
    written. A second `convert_blocks` finds everything there (resumable)."""
    import deploy.lut.convert as lut

    space = get_space("mbv3-digits", ks_list=[3], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    out = tmp_path / "t.json"
    n = lut.convert_blocks(space, [12], "onnxruntime", out, progress=False)
    keys = {s.key() for s in space.all_block_shapes([12])}
    assert n == len(keys) == len(list(lut.block_models_dir(out).glob("*.onnx")))
    assert lut.convert_blocks(space, [12], "onnxruntime", out, progress=False) == 0
    calls = []
    real = lut._export_block
    monkeypatch.setattr(lut, "_export_block", lambda *a: calls.append(a) or real(*a))
    t = build_table(space, [12], "onnxruntime", out, protocol=TimingProtocol(1, 2, 1),
                    calib=0)
    assert calls == [] and set(t.entries["12"]) == keys
    assert not lut.block_models_dir(out).exists() and out.exists()
    # models of another precision in the folder are not taken for these
    lut.convert_blocks(space, [12], "onnxruntime", out, "int8", progress=False)
    head = json.loads((lut.block_models_dir(out) / "models.json").read_text())
    assert head["precision"] == "int8"
    assert lut.convert_blocks(space, [12], "onnxruntime", out, progress=False) == len(keys)


def test_a_proxyless_table_covers_its_subnets_and_predicts(tmp_path):
    """The ProxylessNAS layout (a fixed one-block last stage, ReLU6, no post-pool conv) goes
    through the same table build and compiled sums (restricted choices keep it small)."""
    import torch

    space = get_space("proxyless-w1.3", num_classes=10, ks_list=[3, 5], expand_list=[3],
                      depth_list=[2], resolutions=[32])
    t = build_table(space, [32], "onnxruntime", tmp_path / "p.json",
                    protocol=TimingProtocol(1, 3, 1), calib=0)
    net = OFAMobileNetV3(space)
    g = random.Random(0)
    pred = LatencyPredictor(t, space, calibrated=False)
    for _ in range(10):
        cfg = net.sample_active_subnet(g)
        sub = net.get_active_subnet()
        assert cfg.d[-1] == 1 and len(sub.blocks) == 1 + sum(cfg.d)
        assert isinstance(sub.stem[2], torch.nn.ReLU6) and isinstance(sub.feature_mix,
                                                                      torch.nn.Identity)
        keys = [s.key() for s in space.block_shapes(cfg)]
        assert all(k in t.entries["32"] for k in keys) and not any("Conv_2" in k for k in keys)
        assert pred.predict(cfg) == pytest.approx(t.predict(space, cfg, calibrated=False))
