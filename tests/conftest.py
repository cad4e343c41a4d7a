import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear message when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared is not checked out here)")
    return p


def synthetic_table(space):
    """A deterministic latency table (ms) for ``space``: latency grows with MACs."""
    from search.latency_table import LatencyTable

    entries = {}
    for r in space.resolutions:
        entries[str(r)] = {
            s.key(): {"median": 0.001 * s.macs() / 1e3 + 0.01, "mean": 0, "std": 0, "p90": 0,
                      "count": 1}
            for s in space.all_block_shapes([r])}
    ctx = {"machine": {"name": "synthetic"}, "runtime": "none", "runtime_version": "0",
           "backend": "none", "threads": 1, "precision": "fp32", "batch": 1}
    return LatencyTable(ctx, space.to_dict(), list(space.resolutions), entries)


def randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics/affine so equality tests are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A briefly trained mbv3-digits supernet (2 resolutions, a few DεpS steps): a real run
    folder for the predictor, export and deploy tests. Accuracy is not the point here."""
    from ofa.train.run import TrainConfig
    from ofa.train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(out=str(out), space="mbv3-digits",
                      space_overrides={"resolutions": [12, 16]}, schedule="deps", epochs=0.4,
                      batch_size=32, eval_images=0, recal_images=64, seed=0))
    return out
