"""The device half against the emulated Raspberry Pi (``tools/emulated_pi.py``): the agent,
a batched measurement and a small latency-table build over SSH on aarch64.

These run when the image is cached on this machine (``python tools/emulated_pi.py build``,
~25 min once) and skip, naming that command, when it is not. Timings under emulation are a
test of the method, not of a Pi: only agreement and structure are asserted.
"""

import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.ontarget.runtimes import TimingProtocol

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("emulated_pi", ROOT / "tools" / "emulated_pi.py")
emulated_pi = importlib.util.module_from_spec(_spec)
sys.modules["emulated_pi"] = emulated_pi
_spec.loader.exec_module(emulated_pi)

pytestmark = pytest.mark.emulated_pi


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pi():
    vm = emulated_pi.EmulatedPi(emulated_pi.default_dir())
    if not vm.base.exists():
        pytest.skip(f"no emulated Pi image in {vm.dir}: build it once with "
                    "`python tools/emulated_pi.py build` (~25 min)")
    try:
        vm.check_host()
    except emulated_pi.PiError as exc:
        pytest.skip(str(exc))
    running = vm.pid() is not None
    if not running:
        vm.start(_free_port(), cpus=2, memory=2048, fresh=True, wait_s=300)
    yield vm
    if not running:
        vm.stop()


@pytest.fixture(scope="module")
def target(pi):
    from deploy.targets import parse_target

    t = parse_target(f"ssh://root@127.0.0.1:{pi.port()}", python=f"{emulated_pi.VENV}/bin/python",
                     identity=str(pi.key), known_hosts=str(pi.known_hosts))
    t.timeout = 900.0  # an emulated interpreter start with onnxruntime takes tens of seconds
    return t


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    """One small subnet exported in all four formats (fp32 and int8, ONNX and TFLite)."""
    import random

    from deploy.bundle import export_subnet
    from ofa.space import get_space

    cfg = get_space("mbv3-digits", resolutions=(12, 16)).sample(random.Random(5),
                                                                depth_list=[2])
    out = tmp_path_factory.mktemp("pi_bundle") / "s"
    export_subnet(tiny_run, cfg, out, formats=("onnx-fp32", "onnx-int8", "tflite-fp32",
                                               "tflite-int8"),
                  parity_images=20, calib_images=32, progress=False)  # 20: emulated TFLite
    return out                                                           # takes ~0.6 s an image


def _model(folder: Path, fmt: str) -> Path:
    return folder / fmt / f"model.{fmt.split('-')[0]}"


def test_agent_on_the_emulated_pi_matches_the_host(target, bundle):
    """fp32 and int8, ONNX Runtime and LiteRT: the device answers as an emulated Cortex-A72
    and its top-1 on the exported images equals this machine's. The one-shot agent
    (``ofa bench --target``: files copied, one interpreter) times and checks the ONNX fp32
    model; the session's agent checks all four in one request (``Target.top1``)."""
    from deploy.targets import LocalTarget

    folder = bundle
    fmts = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
    models = [_model(folder, f) for f in fmts]
    data = [folder / "eval.npz"] * len(models)
    fast = TimingProtocol(1, 3, 1)
    res = target.bench(models[0], 1, fast, data=data[0])
    dev = res["machine"]
    assert dev["arch"] == "aarch64" and dev["cpu_model"] == "ARM Cortex-A72"
    assert "emulated" in dev.get("emulated", "")
    assert res["latency_ms"]["median"] > 0
    here = LocalTarget().top1(models, data)
    assert res["accuracy"]["top1"] == pytest.approx(here[0]["top1"], abs=1e-9)
    there = target.top1(models, data)
    for fmt, a, b in zip(fmts, there, here):
        assert a["images"] == b["images"] > 0, fmt
        assert a["top1"] == pytest.approx(b["top1"], abs=1e-9), fmt


def test_batched_measurement_on_the_emulated_pi(target, bundle):
    folder = bundle
    models = [_model(folder, f) for f in ("onnx-fp32", "onnx-int8")]
    rows = target.bench_many(models, 1, TimingProtocol(1, 3, 1))
    assert [Path(r["model"]).name for r in rows] == [m.name for m in models]
    assert all(r["latency_ms"]["median"] > 0 for r in rows)


def test_small_table_build_over_ssh_on_the_emulated_pi(target, tmp_path):
    from deploy.lut import build_table
    from ofa.space import get_space
    from search.latency import LatencyPredictor

    space = get_space("mbv3-digits", ks_list=[3], expand_list=[3], depth_list=[2],
                      resolutions=[12])
    t = build_table(space, [12], "onnxruntime", tmp_path / "pi.json",
                    protocol=TimingProtocol(1, 3, 1), calib=2, target=target, batch=64)
    assert t.context["machine"]["arch"] == "aarch64"
    assert "EMULATED" in t.describe()
    assert t.build["prefetched"] == 1  # the second batch loaded while the first was timed
    assert np.isfinite(LatencyPredictor(t, space).predict(space.max_subnet(12)))
