"""Export (ONNX/TFLite, fp32/int8), the torch-free device agent, and the targets."""

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.bundle import export_subnet, read_bundle
from deploy.formats import format_for
from deploy.ontarget.protocol import PROTOCOL
from deploy.ontarget.runtimes import Runtime, TimingProtocol, get_runtime, time_interleaved
from deploy.targets import (
    AdbTarget,
    LocalTarget,
    SSHTarget,
    TargetError,
    one_batch_at_a_time,
    parse_benchmark_model,
    parse_target,
    start_in_background,
)
from ofa.space import get_space

ROOT = Path(__file__).resolve().parents[1]
QUICK = TimingProtocol(warmup=1, runs=3, trials=1)


def _export_task(run: str, cfg: dict, folder: str, fmts: tuple[str, ...]) -> dict:
    """One bundle of :func:`bundles` (a converter-pool task: plain arguments)."""
    from ofa.space import SubnetConfig

    return export_subnet(run, SubnetConfig.from_dict(cfg), folder, formats=fmts,
                         parity_images=100, calib_images=32, progress=False)


@pytest.fixture(scope="module")
def bundles(tiny_run, tmp_path_factory):
    """2 random subnets (depth 2, to keep TFLite conversion quick) exported as fp32 ONNX +
    TFLite; the first also as int8. The two exports run side by side, one process each."""
    from deploy.export import converter_pool

    space = get_space("mbv3-digits", resolutions=(12, 16))
    g = random.Random(5)
    out = tmp_path_factory.mktemp("bundles")
    tasks = []
    for i in range(2):
        cfg = space.sample(g, depth_list=[2])
        fmts = ("onnx-fp32", "tflite-fp32") + (("onnx-int8", "tflite-int8") if i == 0 else ())
        tasks.append((str(tiny_run), cfg.to_dict(), str(out / f"s{i}"), fmts))
    with converter_pool(2) as convert:
        reps = list(convert(_export_task, *zip(*tasks)))
    return [(out / f"s{i}", rep) for i, rep in enumerate(reps)]


def test_exports_match_pytorch(bundles):
    for folder, rep in bundles:
        for fmt in ("onnx-fp32", "tflite-fp32"):
            m = rep["models"][fmt]
            assert m["max_abs_diff"] <= 1e-4, (fmt, m)
            assert m["top1_agreement"] == 100.0
            assert m["top1"] == pytest.approx(rep["supernet_top1"])
        meta = json.loads((folder / "onnx-fp32" / "model.json").read_text())
        assert meta["config"] == rep["config"] and meta["resolution"] == rep["config"]["r"]
        assert meta["input"]["layout"] == "NCHW" and meta["classes"] == [str(i) for i in range(10)]
        assert meta["sha256"] == rep["models"]["onnx-fp32"]["sha256"]
        assert read_bundle(folder) == rep
    # int8 runs, really is integer, and agrees with the float model on most images. The tiny
    # supernet is barely trained, so its top logits are often within quantisation error of
    # each other; the 98% target is measured on a trained supernet (see the issue note).
    folder, rep = bundles[0]
    for fmt in ("onnx-int8", "tflite-int8"):
        m = rep["models"][fmt]
        assert m["top1_agreement"] >= 80.0, (fmt, m)
        assert m["bytes"] < 0.5 * rep["models"]["onnx-fp32"]["bytes"]
    tfl = json.loads((folder / "tflite-int8" / "model.json").read_text())
    assert tfl["input"]["dtype"] == "int8"


def test_bundle_detects_tampering(bundles, tmp_path):
    folder, _ = bundles[1]
    copy = tmp_path / "b"
    shutil.copytree(folder, copy)
    with open(copy / "onnx-fp32" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert read_bundle(copy) is None


def _agent(python, *args, env=None):
    return subprocess.run([python, "-m", "deploy.ontarget.agent", *args], capture_output=True,
                          text=True,
                          cwd=ROOT, env=env)


def test_agent_json_and_accuracy(bundles):
    folder, rep = bundles[0]
    for fmt in ("onnx-fp32", "tflite-int8"):
        model = folder / rep["models"][fmt]["path"]
        p = _agent(sys.executable, str(model), "--json", "--runs", "3", "--warmup", "1",
                   "--trials", "1", "--data", str(folder / "eval.npz"))
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)
        assert res["schema"] == "ofa-edge-agent" and res["runs"] == 3
        assert res["latency_ms"]["count"] == 3
        assert 0 < res["min"] <= res["median"] <= res["p90"]
        assert {"cpu_model", "cores", "governor", "arch"} <= set(res["machine"])
        assert res["accuracy"]["images"] == rep["parity_images"]
        assert res["accuracy"]["top1"] == pytest.approx(rep["models"][fmt]["top1"])


def test_agent_errors(tmp_path):
    p = _agent(sys.executable, str(tmp_path / "missing.onnx"))
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.splitlines()) == 1
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not a model at all")
    p = _agent(sys.executable, str(bad))
    assert p.returncode == 2 and "corrupt.onnx" in p.stderr and "Traceback" not in p.stderr
    p = _agent(sys.executable, str(tmp_path / "model.pt"))
    assert p.returncode == 2 and "unknown model type" in p.stderr


def _torch_free_venv(path: Path) -> Path:
    """A venv holding only numpy and onnxruntime (and their requirements), linked from here."""
    from importlib.metadata import PackageNotFoundError, distribution

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    todo, seen = ["numpy", "onnxruntime"], set()
    while todo:
        name = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0]
                            .split("=")[0].split("!")[0].split("~")[0].strip())
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists() and top != "..":
                (site / top).symlink_to(src)
    assert "torch" not in seen
    return path / "bin" / "python"


def test_agent_runs_without_torch(bundles, tmp_path):
    py = _torch_free_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True,
                          env=env).returncode != 0
    folder, rep = bundles[1]
    p = _agent(str(py), str(folder / "onnx-fp32" / "model.onnx"), "--json", "--runs", "3",
               "--warmup", "1", "--trials", "1", "--data", str(folder / "eval.npz"), env=env)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["runtime"] == "onnxruntime"
    assert res["accuracy"]["top1"] == pytest.approx(rep["models"]["onnx-fp32"]["top1"])
    # the same venv lacks LiteRT: a clear one-line error and exit code 3
    p = _agent(str(py), str(folder / "tflite-fp32" / "model.tflite"), env=env)
    assert p.returncode == 3 and "pip install ai-edge-litert" in p.stderr


def test_interleaved_timing_visits_every_model_each_trial():
    """Trial t times every model before trial t + 1 (a drifting machine shifts all alike)."""
    log: list[tuple[str, object]] = []

    class Fake(Runtime):
        def __init__(self, name: str) -> None:
            super().__init__(1)
            self.name = name

        def set_input(self, x):
            log.append(("set", self.name))

        def invoke(self):
            log.append(("invoke", self.name))

    ticks = []
    stats = time_interleaved([Fake("a"), Fake("b")], [None, None], TimingProtocol(1, 2, 3),
                             progress=lambda: ticks.append(1))
    invokes = [n for k, n in log if k == "invoke"]
    assert invokes == (["a"] * 3 + ["b"] * 3) * 3  # (warmup 1 + runs 2) per model per trial
    assert [n for k, n in log if k == "set"] == ["a", "b"]
    assert [st["count"] for st in stats] == [6, 6] and len(ticks) == 6
    with pytest.raises(ValueError, match="2 runtimes but 1 inputs"):
        time_interleaved([Fake("a"), Fake("b")], [None])


def test_local_target(bundles, monkeypatch):
    folder, _ = bundles[1]
    res = LocalTarget().bench(folder / "onnx-fp32" / "model.onnx", 1, QUICK)
    assert res["target"] == "local" and res["runs"] == 3
    # paths relative to the caller's folder (the agent itself runs beside the package)
    monkeypatch.chdir(folder)
    res = LocalTarget().bench("onnx-fp32/model.onnx", 1, QUICK, data="eval.npz")
    assert res["accuracy"]["images"] > 0


def test_parse_target():
    t = parse_target("ssh://pi@raspberrypi.local:2222")
    assert isinstance(t, SSHTarget) and (t.user, t.host, t.port) == ("pi", "raspberrypi.local",
                                                                     2222)
    assert "StrictHostKeyChecking=yes" in t.opts
    assert "StrictHostKeyChecking=no" in parse_target("ssh://h", insecure=True).opts
    a = parse_target("adb:R58M12")
    assert isinstance(a, AdbTarget) and a.serial == "R58M12"
    with pytest.raises(ValueError, match="unknown target"):
        parse_target("telnet://x")


# TFLite benchmark_model output in the tool's two formats (with and without percentiles);
# the samples are written for this test, following the format of the tool's log lines.
DATA = Path(__file__).resolve().parent / "data"


def test_parse_benchmark_model():
    r = parse_benchmark_model((DATA / "benchmark_model_xnnpack.txt").read_text())
    assert r["runs"] == 836 and r["median"] == pytest.approx(1.184)
    assert r["latency_ms"]["mean"] == pytest.approx(1.1964) and r["min"] == pytest.approx(1.098)
    assert r["latency_ms"]["p95"] == pytest.approx(1.309) and r["init_ms"] == pytest.approx(31.207)
    old = parse_benchmark_model((DATA / "benchmark_model_old.txt").read_text())
    assert old["runs"] == 50 and old["median"] == pytest.approx(39.9512)  # no median: avg
    assert old["inference_avg_ms"] == pytest.approx(39.9512) and old["min"] == 38.877
    with pytest.raises(TargetError, match="no timings"):
        parse_benchmark_model("ERROR: Could not open 'model.tflite'.\n")


def test_adb_target_errors(tmp_path):
    m = tmp_path / "m.tflite"
    m.write_bytes(b"x")
    with pytest.raises(TargetError, match="benchmark-binary"):
        AdbTarget().bench(m, 1, QUICK)
    with pytest.raises(TargetError, match=r"runs \.tflite"):
        AdbTarget(benchmark_binary=str(m)).bench(tmp_path / "m.onnx", 1, QUICK)
    with pytest.raises(TargetError, match="adb not found"):
        AdbTarget(benchmark_binary=str(m), adb="/nonexistent/adb").bench(m, 1, QUICK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 with a fresh host key and a client key."""
    sshd_bin = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists()
                                        else None)
    if not sshd_bin or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server/client not installed (apt install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd could not start here: {proc.stderr.read().strip()[-200:]}")
            time.sleep(0.1)
    host_pub = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    import getpass

    yield {"port": port, "dir": d, "user": getpass.getuser()}
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_round_trip(sshd, bundles):
    d = sshd["dir"]
    t = parse_target(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", python=sys.executable,
                     known_hosts=str(d / "known_hosts"), identity=str(d / "client"))
    folder, rep = bundles[0]
    res = t.bench(folder / "onnx-fp32" / "model.onnx", 1, QUICK, data=folder / "eval.npz")
    assert res["target"].startswith("ssh://") and res["runs"] == 3
    assert res["accuracy"]["top1"] == pytest.approx(rep["models"]["onnx-fp32"]["top1"])


def test_ssh_errors(sshd, bundles, tmp_path):
    d = sshd["dir"]
    model = bundles[0][0] / "onnx-fp32" / "model.onnx"
    (tmp_path / "empty_known_hosts").write_text("")
    unknown = SSHTarget(sshd["user"], "127.0.0.1", sshd["port"], python=sys.executable,
                        known_hosts=str(tmp_path / "empty_known_hosts"),
                        identity=str(d / "client"))
    with pytest.raises(TargetError, match="host key unknown"):
        unknown.bench(model, 1, QUICK)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    stranger = SSHTarget(sshd["user"], "127.0.0.1", sshd["port"],
                         known_hosts=str(d / "known_hosts"), identity=str(tmp_path / "k"))
    with pytest.raises(TargetError, match="authentication failed"):
        stranger.bench(model, 1, QUICK)
    no_python = SSHTarget(sshd["user"], "127.0.0.1", sshd["port"], python="/nonexistent/python3",
                          known_hosts=str(d / "known_hosts"), identity=str(d / "client"))
    with pytest.raises(TargetError, match="not found on the device"):
        no_python.bench(model, 1, QUICK)


def test_unreachable_host(tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(b"x")
    t = SSHTarget("nobody", "127.0.0.1", _free_port(), insecure=True)
    with pytest.raises(TargetError, match="host unreachable"):
        t.bench(m, 1, QUICK)


def test_cli_bench_unreachable_is_one_line(tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(b"x")
    p = subprocess.run([sys.executable, "-m", "ofa.cli", "bench", str(m), "--target",
                        f"ssh://nobody@127.0.0.1:{_free_port()}", "--insecure"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "host unreachable" in p.stderr


def test_export_rejects_unknown_format(tiny_run, tmp_path):
    space = get_space("mbv3-digits", resolutions=(12, 16))
    with pytest.raises(ValueError, match="unknown format"):
        export_subnet(tiny_run, space.max_subnet(12), tmp_path / "x", formats=("onnx-fp64",))
    assert not (tmp_path / "x").exists()


def test_lut_build_on_ssh_device(sshd, tmp_path):
    """The table builder exports blocks here and times them on the device (the agent over
    SSH): every block shape gets an entry and the context is the device's."""
    from deploy.lut import build_table
    from ofa.space import get_space

    d = sshd["dir"]
    t = parse_target(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", python=sys.executable,
                     known_hosts=str(d / "known_hosts"), identity=str(d / "client"))
    space = get_space("mbv3-digits", ks_list=[3], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    table = build_table(space, [12], "onnxruntime", tmp_path / "t.json", protocol=QUICK,
                        calib=1, target=t)
    keys = {s.key() for s in space.all_block_shapes([12])}
    assert set(table.entries["12"]) == keys
    assert all(e["median"] > 0 for e in table.entries["12"].values())
    assert table.context["target"] == t.name and table.context["runtime_version"]
    assert table.context["machine"]["cores"] >= 1  # facts reported by the target's agent
    assert len(table.calibration["fitted_on"]) == 3
    assert json.loads((tmp_path / "t.json").read_text())["context"]["target"] == t.name


def test_agent_times_a_batch_in_one_run(bundles, tmp_path):
    """Several models: one agent run, interleaved trials, one entry per model in order;
    a batch takes no --data and is JSON only (one-line error otherwise)."""
    folder, rep = bundles[0]
    model = folder / rep["models"]["onnx-fp32"]["path"]
    paths = []
    for j in range(3):
        paths.append(tmp_path / f"b{j}.onnx")
        shutil.copy(model, paths[-1])
    p = _agent(sys.executable, *map(str, paths), "--json", "--runs", "3", "--warmup", "1",
               "--trials", "2")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert [m["model"] for m in res["models"]] == ["b0.onnx", "b1.onnx", "b2.onnx"]
    assert all(m["latency_ms"]["count"] == 6 and m["median"] > 0 for m in res["models"])
    assert res["runtime"] == "onnxruntime" and res["trials"] == 2
    p = _agent(sys.executable, *map(str, paths), "--json", "--data", str(folder / "eval.npz"))
    assert p.returncode == 2 and "batch" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    for batch in (paths[:1], paths):  # a batch of one is the agent's plain answer
        rows = LocalTarget().bench_many(batch, 1, QUICK)
        assert [r["model"] for r in rows] == [p.name for p in batch]
        assert all(r["latency_ms"]["count"] == 3 for r in rows)


def test_batched_and_one_by_one_tables_agree(tmp_path):
    """The same blocks timed one by one in this process and as one batch by the agent give
    tables of the same blocks, each timed beside the probe in every trial of the protocol
    (probe units, trial counts). How close their numbers come is a timing, measured by
    `bench/batched_vs_one_by_one.py` (docs/benchmarks.md): asserted here, it failed on a
    busy VM (median ratio 1.29 against a bound of 1.25) and passed alone."""
    from deploy.lut import build_table
    from ofa.space import get_space

    space = get_space("mbv3-digits", ks_list=[3, 7], expand_list=[3, 6], depth_list=[2],
                      resolutions=[16])
    proto = TimingProtocol(warmup=5, runs=30, trials=6)  # blocks of 6-60 us: cheap to time
    one = build_table(space, [16], "onnxruntime", tmp_path / "one.json", protocol=proto,
                      calib=0)
    many = build_table(space, [16], "onnxruntime", tmp_path / "many.json", protocol=proto,
                       calib=0, target=LocalTarget(), batch=64)
    assert one.entries["16"].keys() == many.entries["16"].keys()
    assert len(one.entries["16"]) >= 10
    for t in (one, many):
        assert t.probe and t.unit == "probe"
        assert t.build["blocks"] == len(t.entries["16"])
        for e in t.entries["16"].values():
            assert e["rel"] > 0 and e["median"] > 0
            assert 0 < e["count"] <= proto.runs * proto.trials


def test_models_loaded_from_bytes_match_their_files(bundles):
    """A batch sent inline (the device session's requests) loads from memory: the same
    outputs as the files for both runtimes and precisions, sizes from the bytes, loaded in
    parallel threads in the order given."""
    from deploy.ontarget.agent import benchmark_many

    folder, rep = bundles[0]
    r = rep["config"]["r"]
    x = np.random.default_rng(1).standard_normal((1, 3, r, r)).astype(np.float32)
    for fmt in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"):
        path = folder / rep["models"][fmt]["path"]
        kind = "onnxruntime" if path.suffix == ".onnx" else "litert"
        a, b = get_runtime(kind), get_runtime(kind)
        a.load(str(path))
        b.load_bytes(path.read_bytes(), path.name)
        np.testing.assert_array_equal(a.run(a.prepare(x)), b.run(b.prepare(x)))
        with pytest.raises(ValueError, match="empty"):
            b.load_bytes(b"", "x" + path.suffix)
        with pytest.raises(ValueError, match="cannot load"):
            b.load_bytes(b"not a model", "x" + path.suffix)
    onnx = [folder / rep["models"][f]["path"] for f in ("onnx-int8", "onnx-fp32")] * 2
    names = [f"{j}/{p.name}" for j, p in enumerate(onnx)]
    res = benchmark_many(names, 1, QUICK, {n: p.read_bytes() for n, p in zip(names, onnx)})
    assert [m["model"] for m in res["models"]] == [p.name for p in onnx]
    assert [m["model_bytes"] for m in res["models"]] == [p.stat().st_size for p in onnx]
    assert res["models"][0]["model_bytes"] < res["models"][1]["model_bytes"]  # int8, fp32


def test_periodic_weights_keep_the_graph_and_compress(tmp_path):
    """Blocks timed for a table carry a repeated weight tile: exported (ONNX fp32 and int8)
    they are the same graph as with random weights, node for node and tensor shape for
    tensor shape, which is what a runtime's kernels and so the latency depend on (measured:
    trained and periodic exports of one subnet time within 2-3%, `bench/final_measurement.py`,
    `docs/benchmarks.md`), and the files compress > 20x (fp32; > 10x int8, whose per-channel
    scales differ), so device batches are small."""
    import zlib

    import onnx

    from deploy.lut.convert import _export, periodic_weights
    from ofa.static import build_layer

    def graph(path):
        g = onnx.load(str(path)).graph
        return ([(n.op_type, [a.name for a in n.attribute]) for n in g.node],
                sorted(tuple(t.dims) for t in g.initializer))

    shapes = get_space("mbv3-cifar", resolutions=[32]).all_block_shapes([32])[1::12]
    for precision in ("fp32", "int8"):
        raw, packed = 0, 0
        for j, s in enumerate(shapes):
            paths = {}
            for kind in ("random", "periodic"):
                torch.manual_seed(j)
                m = build_layer(s).eval()
                m = periodic_weights(m) if kind == "periodic" else m
                paths[kind] = tmp_path / f"{kind}{j}_{precision}.onnx"
                _export(m, (1, s.in_ch, s.in_size, s.in_size), format_for("onnxruntime", precision),
                        paths[kind])
            assert graph(paths["random"]) == graph(paths["periodic"]), (precision, s.key())
            data = paths["periodic"].read_bytes()
            raw, packed = raw + len(data), packed + len(zlib.compress(data))
        assert raw / packed > {"fp32": 20, "int8": 10}[precision], (precision, raw, packed)


def test_agent_serves_batches_until_input_ends(bundles, tmp_path):
    """``--serve``: one JSON answer line per request line, a failed request answers an error
    and serving goes on, ``delete`` removes the batch's files, a ``top1`` request measures
    top-1 without timing, a malformed request answers an error and ends serving (the
    request after it gets no answer)."""
    folder, rep = bundles[0]
    model = folder / rep["models"]["onnx-fp32"]["path"]
    paths = [tmp_path / f"b{j}.onnx" for j in range(2)]
    for p in paths:
        shutil.copy(model, p)
    def req(op, **kw):
        return {"v": PROTOCOL, "op": op, **kw}

    reqs = [req("bench", models=[str(p) for p in paths], runs=3, warmup=1, trials=2),
            req("bench", models=[str(tmp_path / "missing.onnx")]),
            req("time"),
            req("load", models=[str(paths[1])], workers=1),
            req("time", runs=2, warmup=0, trials=2),
            req("bench", models=[str(paths[0])], runs=2, warmup=0, trials=1, delete=True),
            req("top1", models=[str(paths[1])], data=[str(folder / "eval.npz")], meta=[{}]),
            req("top1", models=["x/m.onnx"], data=[str(folder / "eval.npz")], meta=[{}],
                files={"x/m.onnx": base64.b64encode(model.read_bytes()).decode()}),
            req("top1", models=["x/m.onnx"], data=[str(folder / "eval.npz")], meta=[{}],
                reuse=["x/m.onnx"]),  # the model sent in the request before, not again
            req("top1", models=[str(paths[1])], data=[], meta=[]),  # malformed: ends serving
            req("time")]
    p = subprocess.run([sys.executable, "-m", "deploy.ontarget.agent", "--serve"],
                       input="".join(json.dumps(r) + "\n" for r in reqs), capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    first, missing, nothing, loaded, timed, third, acc, inline, reused, top1 = (
        json.loads(line) for line in p.stdout.strip().splitlines())
    assert [m["model"] for m in first["models"]] == ["b0.onnx", "b1.onnx"]
    assert all(m["latency_ms"]["count"] == 6 for m in first["models"])
    assert first["timing_s"] > 0 and first["load_s"] > 0
    assert missing["code"] == 2 and "missing.onnx" in missing["error"]
    assert nothing["code"] == 2 and "no batch loaded" in nothing["error"]
    assert loaded["loaded"] == 1 and loaded["load_s"] > 0  # held, timed by the next request
    assert [m["model"] for m in timed["models"]] == ["b1.onnx"]
    assert timed["models"][0]["latency_ms"]["count"] == 4 and timed["load_s"] > 0
    assert third["models"][0]["latency_ms"]["count"] == 2
    assert not paths[0].exists() and paths[1].exists()  # deleted after its batch only
    assert top1["code"] == 2 and "one entry per model" in top1["error"]
    assert acc["models"] == [{"model": "b1.onnx", "images": 100,
                              "top1": pytest.approx(rep["models"]["onnx-fp32"]["top1"])}]
    assert inline["models"] == reused["models"] == [{**acc["models"][0], "model": "m.onnx"}]
    assert {a["v"] for a in (first, missing, acc, top1)} == {PROTOCOL}


def test_an_agent_of_another_protocol_version_is_refused_in_one_line(tmp_path):
    """A request of another version (an agent copy from another release) is answered with
    one line naming both versions, and the host refuses an answer without its version."""
    from deploy.ontarget.protocol import ProtocolError, check_answer

    old = {"models": ["m.onnx"], "runs": 2}  # version 1 told requests apart by their keys
    # stdin stays open until the answer is read: a hung-up stdin ends the agent at once
    proc = subprocess.Popen([sys.executable, "-m", "deploy.ontarget.agent", "--serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    proc.stdin.write(json.dumps(old) + "\n" + json.dumps({"v": PROTOCOL, "op": "x"}) + "\n")
    proc.stdin.flush()
    lines = [proc.stdout.readline()]
    assert proc.wait(timeout=60) == 0 and proc.stdout.read() == ""  # the line ends serving
    proc.stdin.close()
    ans = json.loads(lines[0])
    assert ans["code"] == 2 and f"protocol version 1; this agent speaks version {PROTOCOL}" \
        in ans["error"] and "\n" not in ans["error"]
    with pytest.raises(ProtocolError, match=f"pi: the agent speaks protocol version 1, this "
                       f"host {PROTOCOL}"):
        check_answer({"models": []}, "pi")
    assert check_answer({"v": PROTOCOL, "loaded": 1}, "pi")["loaded"] == 1


def _ssh_and_models(sshd, bundles, folder: Path, n: int) -> tuple[SSHTarget, list[Path]]:
    """An SSH target on the test sshd and ``n`` copies of a bundle's ONNX model."""
    d = sshd["dir"]
    t = parse_target(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", python=sys.executable,
                     known_hosts=str(d / "known_hosts"), identity=str(d / "client"))
    bundle, rep = bundles[0]
    paths = [folder / f"b{j}.onnx" for j in range(n)]
    for p in paths:
        shutil.copy(bundle / rep["models"]["onnx-fp32"]["path"], p)
    return t, paths


def test_ssh_session_reuses_one_connection_and_its_agents(sshd, bundles, tmp_path):
    """Batches over SSH go through one master connection and the session's agent processes
    (two, started early in the background), which load the models from the requests and
    write no file; close() ends them all."""
    t, paths = _ssh_and_models(sshd, bundles, tmp_path, 2)
    start_in_background(t, "onnxruntime").join()  # as ofa lut build starts a device
    pids, socket_path = [a.proc.pid for a in t._agents], t._control / "s"
    assert len(set(pids)) == 2  # the second loads the next batch while the first times
    t.start("onnxruntime")  # the build's own start finds the session ready
    rows = t.bench_many(paths, 1, QUICK)
    assert [a.proc.pid for a in t._agents] == pids
    assert socket_path.exists() and rows[0]["batch"]["size"] == 2
    rows = t.bench_many(paths[:1], 1, QUICK)
    assert t._agents[0].proc.pid == pids[0] and [r["model"] for r in rows] == ["b0.onnx"]
    assert rows[0]["machine"]["cores"] >= 1 and rows[0]["runtime_version"]
    written = t.ssh(["find", t.remote_dir, "-name", "b?.onnx"]).stdout.split()
    assert written == []  # the batches were loaded from the requests, never written
    t.close()
    assert t._agents == [None, None] and not socket_path.exists()


def test_ssh_batches_load_the_next_while_this_one_is_timed(sshd, bundles, tmp_path):
    """bench_batches alternates two agent processes: batch i+1 is loaded (on the spare
    core) while batch i is timed, in order, each batch's rows as bench_many gives them; a
    caller that stops mid-way leaves no answer unread for the next request."""
    t, paths = _ssh_and_models(sshd, bundles, tmp_path, 5)
    batches = [paths[:2], paths[2:3], paths[3:]]
    t.start("onnxruntime")
    if t._cores < 2:
        pytest.skip(f"this machine has {t._cores} core: nothing to load on beside the timing")
    out = list(t.bench_batches(iter(batches), 1, QUICK))
    assert [[r["model"] for r in rows] for rows in out] == [
        [p.name for p in b] for b in batches]
    assert [rows[0]["batch"]["prefetched"] for rows in out] == [False, True, True]
    assert all(r["latency_ms"]["count"] == QUICK.runs * QUICK.trials for rows in out
               for r in rows)
    assert out[0][0]["batch"]["load_wait_s"] >= out[0][0]["batch"]["load_s"] > 0
    gen = t.bench_batches(iter(batches), 1, QUICK)
    next(gen)  # the second batch is being loaded: stop here
    gen.close()
    rows = t.bench_many(paths[:1], 1, QUICK)  # the session still answers in order
    assert [r["model"] for r in rows] == ["b0.onnx"]
    t.prefetch = False
    out = list(t.bench_batches(iter(batches), 1, QUICK))
    assert [rows[0]["batch"]["prefetched"] for rows in out] == [False, False, False]
    t.close()


def test_batched_ssh_build_survives_a_dropped_device(sshd, tmp_path):
    """Blocks go to the device in batches (one copy, one agent run each); the device going
    away after the first batch leaves that batch in the partial file, and a rerun measures
    only the rest."""
    from deploy.lut import block_models_dir, build_table
    from ofa.space import get_space

    d = sshd["dir"]
    t = parse_target(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", python=sys.executable,
                     known_hosts=str(d / "known_hosts"), identity=str(d / "client"))
    space = get_space("mbv3-digits", ks_list=[3, 5], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    keys = {s.key() for s in space.all_block_shapes([12])}
    sent: list[int] = []

    class Dropping:
        name = t.name

        def bench(self, *a, **kw):
            return t.bench(*a, **kw)

        def start(self, runtime):
            t.start(runtime)

        def bench_batches(self, batches, threads=1, protocol=None):
            return one_batch_at_a_time(self, batches, threads, protocol)

        def bench_many(self, models, threads=1, protocol=None):
            if sent:
                raise TargetError(f"{t.name}: host unreachable (connection closed)")
            sent.append(len(models))
            return t.bench_many(models, threads, protocol)

    out = tmp_path / "t.json"
    with pytest.raises(TargetError, match="host unreachable"):
        build_table(space, [12], "onnxruntime", out, protocol=QUICK, calib=0, target=Dropping(),
                    batch=4)
    partial = json.loads((tmp_path / "t.json.partial.json").read_text())
    first = partial["entries"]["12"]
    # the probe, the overhead model and 4 blocks
    assert sent == [6] and len(first) == 4 and len(keys) > 4
    kept = len(list(block_models_dir(out).glob("*.onnx")))  # converted, kept for the rerun
    assert kept >= 4
    table = build_table(space, [12], "onnxruntime", out, protocol=QUICK, calib=0, target=t,
                        batch=4)
    assert table.build["converted"] == len(keys) - kept  # nothing converted twice
    assert not block_models_dir(out).exists()
    assert set(table.entries["12"]) == keys
    assert all(table.entries["12"][k] == v for k, v in first.items())  # kept, not re-timed
    assert not (tmp_path / "t.json.partial.json").exists()
    # the rerun's batches after the first were loaded while the one before was timed
    assert table.build["prefetched"] == -(-(len(keys) - 4) // 4) - 1
    assert 0 < table.build["load_wait_s"] and table.build["timing_s"] > 0


def test_run_builds_the_device_table_over_ssh(sshd, tmp_path):
    """`ofa run --target ssh://...` without --table measures the table on the device (its
    context says so) and a rerun finds it done."""
    from ofa.pipeline import DeploySettings, RunConfig, TableSettings
    from ofa.pipeline.tables import run_table as _table

    d = sshd["dir"]
    rc = RunConfig(name="dev", root=str(tmp_path),
                   deploy=DeploySettings(
                       target=f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}",
                       target_options={"python": sys.executable,
                                       "known_hosts": str(d / "known_hosts"),
                                       "identity": str(d / "client")}),
                   table=TableSettings(protocol=asdict(QUICK), calib=1))
    space = get_space("mbv3-digits", ks_list=[3], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    rc.folder.mkdir(parents=True)
    table = _table(rc, space)
    assert table.context["target"] == rc.deploy.target
    assert set(table.entries["12"]) == {s.key() for s in space.all_block_shapes([12])}
    assert len(table.calibration["fitted_on"]) == 3  # 1 random + largest + smallest
    again = _table(rc, space)
    assert again.entries == table.entries


def _bundled_rows(bundles, out: Path) -> list[dict]:
    """Search-result rows for the bundles, copied into ``out`` under their labels (so that
    validate_subnets reuses them instead of exporting)."""
    rows = []
    for folder, rep in bundles:
        shutil.copytree(folder, out / folder.name)
        rows.append({"config": rep["config"], "label": folder.name, "latency_ms": 1.0,
                     "acc": 90.0})
    return rows


def _fake_adb(folder: Path) -> tuple[str, Path]:
    """An ``adb`` that logs its arguments (one JSON line per call) and answers a
    ``benchmark_model`` run with a real one's output (``tests/data``); (path, log)."""
    log = folder / "adb.log"
    script = folder / "adb"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if any(a.startswith('--graph=') for a in sys.argv):  # a benchmark_model run\n"
        f"    print(open({str(DATA / 'benchmark_model_xnnpack.txt')!r}).read())\n")
    script.chmod(0o755)
    return str(script), log


def test_deploy_to_a_phone_reports_the_files_top1_measured_here(tiny_run, bundles, tmp_path):
    """adb (a fake adb here): benchmark_model is pushed once for all models, each model
    pushed once and timed in each of the final measurement's batches; it checks no
    accuracy, so the table gives the same file's top-1 measured here at export, said so,
    instead of no top-1 (which ofa run's report cannot take)."""
    from deploy.validate import markdown_table, validate_subnets

    adb, log = _fake_adb(tmp_path)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    t = AdbTarget("R58M", benchmark_binary=str(binary), adb=adb)
    res = validate_subnets(tiny_run, _bundled_rows(bundles, tmp_path / "out"), tmp_path / "out",
                           t, runtime="litert", formats=("tflite-fp32",), protocol=QUICK,
                           progress=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(c[:2] == ["-s", "R58M"] for c in calls)
    pushes = [c[3] for c in calls if c[2] == "push"]
    from deploy.probe import probe_file

    # the probe once (it is timed before the first model and after each), then the models
    assert pushes == [str(binary), str(probe_file("litert"))] + [
        str(tmp_path / "out" / f"s{i}" / "tflite-fp32" / "model.tflite") for i in range(2)]
    runs = [c for c in calls if c[2] == "shell" and any("--graph=" in a for a in c)]
    assert len(runs) == 3 * (2 + 3)  # 3 batches (REPEATS) of 2 models, the probe 3 times
    assert [r["label"] for r in res] == ["s0", "s1"]
    for r, (_, rep) in zip(res, bundles):
        assert r["measured_ms"] == pytest.approx(1.184)  # benchmark_model's median, in ms
        assert r["measured_top1"] == rep["models"]["tflite-fp32"]["top1"]
        assert r["top1_measured_on"] == "here" and "accuracy" not in r["measurement"]
    assert markdown_table(res).count(" (here) |") == 2
    r = res[0]  # ± one standard error of a top-1 on the bundle's 100 parity images
    p = r["measured_top1"] / 100
    assert r["top1_images"] == 100
    assert r["top1_se"] == pytest.approx((p * (1 - p) / 100) ** 0.5 * 100)
    assert f"{r['measured_top1']:.2f} ± {r['top1_se']:.2f} (here) |" in markdown_table(res)


def test_top1_standard_error():
    from deploy.validate import top1_standard_error

    assert top1_standard_error(97.0, 359) == pytest.approx(0.9003, abs=1e-4)
    assert top1_standard_error(80.0, 10_000) == pytest.approx(0.4)
    assert top1_standard_error(100.0, 50) == 0.0
    with pytest.raises(ValueError, match="not a measurement"):
        top1_standard_error(50.0, 0)


def test_deploy_over_ssh_checks_top1_in_the_session(sshd, tiny_run, bundles, tmp_path):
    """ofa deploy's top-1 over SSH: one request to the session's agent process, models and
    evaluation images inline (nothing written on the device; the models, sent with the
    timing request just before, are not sent again), the same top-1 as this machine's run
    of the same files."""
    from deploy.targets.ssh import SSHTarget as Ssh
    from deploy.validate import EXTRA_REPEATS, REPEATS, validate_subnets

    t, _ = _ssh_and_models(sshd, bundles, tmp_path, 0)
    lines = []  # what goes down the wire

    def reusing(agent, req):
        lines.append(Ssh._reusing(agent, req))
        return lines[-1]

    t._reusing = reusing
    rows = _bundled_rows(bundles, tmp_path / "out")
    mark = f"{t.remote_dir}/before-deploy"
    t.ssh(["mkdir", "-p", t.remote_dir])
    t.ssh(["touch", mark])
    res = validate_subnets(tiny_run, rows, tmp_path / "out", t, formats=("onnx-fp32",),
                           protocol=QUICK, progress=False)
    pid = t._agents[0].proc.pid
    for r, (_, rep) in zip(res, bundles):
        assert r["top1_measured_on"] == t.name
        assert r["measured_top1"] == pytest.approx(rep["models"]["onnx-fp32"]["top1"])
        assert r["measurement"]["accuracy"]["images"] == 100
    written = t.ssh(["find", t.remote_dir, "-newer", mark, "(", "-name", "*.onnx", "-o",
                     "-name", "*.npz", ")"])
    assert written.returncode == 0 and written.stdout.split() == []
    *timings, top1 = [r for r in lines if r["op"] in ("bench", "load", "top1")]
    # the first timing request carried the probe first, then the models, and the final
    # measurement's other batches (REPEATS, and EXTRA_REPEATS more where these tiny models'
    # batches disagreed) reuse them all; the top-1 request reuses the models (named by
    # content, wherever they stood) and not the probe
    timing, sent = timings[0], timings[0]["models"]
    assert len(timings) in (REPEATS, REPEATS + EXTRA_REPEATS) and all(
        sorted(t["reuse"]) == sorted(sent) and not t.get("files") for t in timings[1:])
    assert top1["op"] == "top1" and timing["v"] == top1["v"] == PROTOCOL
    assert "probe-v1" in sent[0] and sorted(top1["reuse"]) == sorted(top1["models"])
    assert set(top1["reuse"]) == set(timing["files"]) - {sent[0]}
    assert top1["files"] and all(n.startswith("data/") for n in top1["files"])
    again = t.top1([Path(res[0]["model"])] * 2, [tmp_path / "out/s0/eval.npz"] * 2)
    assert t._agents[0].proc.pid == pid  # the same agent process answered
    assert [a["top1"] for a in again] == pytest.approx([res[0]["measured_top1"]] * 2)
    t.close()


def test_one_format_table_agrees_with_the_runtimes():
    from deploy.formats import FORMATS, format_for, parse_formats
    from deploy.ontarget.runtimes import RUNTIMES, runtime_for

    for f in FORMATS.values():
        assert RUNTIMES[f.runtime].suffix == f.suffix
        assert runtime_for(f"model{f.suffix}") == f.runtime
    assert format_for("litert", "int8").name == "tflite-int8"
    assert parse_formats("onnx-fp32, onnx-fp32,tflite-int8") == ["onnx-fp32", "tflite-int8"]
    with pytest.raises(ValueError, match="unknown format"):
        parse_formats("onnx-fp16")
    with pytest.raises(ValueError, match="no export format"):
        parse_formats(" , ")


def test_torch_runtime_goes_through_the_one_timing_loop(tmp_path):
    import torch

    from deploy.lut import measure_module, runtime_context

    st = measure_module(torch.nn.Conv2d(3, 8, 3), (1, 3, 8, 8), "torch", 1,
                        TimingProtocol(warmup=1, runs=4, trials=2), tmp_path)
    assert st["count"] == 8 and 0 < st["min"] <= st["median"]
    ctx = runtime_context("torch", 1)
    assert ctx["runtime_version"] == torch.__version__ and ctx["backend"] == "eager CPU"
