"""Accuracy predictors (OFA section 4): one-hot architecture encoding -> MLP 3 x 400 -> top-1.

- :class:`AccuracyPredictor`: ours, trained with Adam (lr 1e-3, weight decay 1e-4) on
  (subnet, hold-out top-1) pairs measured after BN recalibration.
- :class:`OFAAccuracyPredictor`: the authors' published predictor for ``mbv3-w1.2``
  (``acc_predictor.pth``), with their 128-value encoding: kernel one-hot (20 x 3), expand
  one-hot (20 x 3), both zero beyond a stage's depth, then resolution one-hot
  ``(r - 112) // 16`` (8 values). Its output is top-1 as a fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ofa.fileio import atomic_write_json, read_json
from ofa.space import SearchSpace, SubnetConfig
from search.latency import encode_configs

__all__ = ["onehot", "AccuracyPredictor", "OFAAccuracyPredictor", "load_accuracy_predictor"]


def onehot(space: SearchSpace, enc: dict[str, np.ndarray],
           resolutions: Sequence[int] | None = None) -> np.ndarray:
    """One-hot features ``(N, 2 * B * 3 + R)``: kernel per block, expand per block (zeros
    beyond the active depth), then resolution over ``resolutions`` (default: the space's)."""
    n, nb = enc["ks"].shape
    nk, ne = len(space.ks_list), len(space.expand_list)
    res = list(resolutions or space.resolutions)
    active = (np.arange(nb)[None, :] % space.max_depth) < np.take(
        enc["d"], np.arange(nb) // space.max_depth, axis=1)
    ks = np.zeros((n, nb, nk), np.float32)
    es = np.zeros((n, nb, ne), np.float32)
    rows, cols = np.nonzero(active)
    ks[rows, cols, enc["ks"][rows, cols]] = 1
    es[rows, cols, enc["e"][rows, cols]] = 1
    r_pos = {r: i for i, r in enumerate(res)}
    rr = np.zeros((n, len(res)), np.float32)
    rr[np.arange(n), [r_pos[int(r)] for r in enc["r"]]] = 1
    return np.concatenate([ks.reshape(n, -1), es.reshape(n, -1), rr], axis=1)


def _mlp(d_in: int, hidden: int = 400, layers: int = 3) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, 1))
    return nn.Sequential(*mods)


class AccuracyPredictor:
    """MLP accuracy predictor over :func:`onehot` features; predicts top-1 in %.

    The output is ``100 * sigmoid(mlp(x) + base)`` with ``base`` the logit of the mean
    training accuracy: predictions stay inside (0, 100) and keep their order near the top,
    where a linear head extrapolates past 100% for the largest subnets of a well-trained
    supernet (seen on digits) and the search would chase those. Trained on squared error
    in percentage points.
    """

    kind = "ofa-edge-mlp"

    def __init__(self, space: SearchSpace, hidden: int = 400, layers: int = 3) -> None:
        self.space = space
        self.hidden, self.layers = hidden, layers
        self.dim = space.num_blocks * (len(space.ks_list) + len(space.expand_list)) + len(
            space.resolutions)
        self.model = _mlp(self.dim, hidden, layers)
        self.base = 0.0  # logit of the mean accuracy; the MLP learns the residual
        self.metrics: dict = {}  # held-out RMSE / Kendall tau, stored with the weights

    def features(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return onehot(self.space, encode_configs(self.space, cfgs))

    def fit(self, cfgs: Sequence[SubnetConfig], acc: Sequence[float], epochs: int = 300,
            lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
            batch_size: int = 256) -> list[float]:
        """Train with Adam on (config, top-1 %) pairs; returns the per-epoch training MSE."""
        torch.manual_seed(seed)
        x = torch.from_numpy(self.features(cfgs))
        y = torch.tensor(acc, dtype=torch.float32)
        mean = float(np.clip(y.mean() / 100.0, 1e-3, 1 - 1e-3))
        self.base = float(np.log(mean / (1 - mean)))
        opt = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        hist = []
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            tot = 0.0
            for i in range(0, len(y), batch_size):
                idx = perm[i:i + batch_size]
                pred = 100.0 * torch.sigmoid(self.model(x[idx]).squeeze(1) + self.base)
                loss = ((pred - y[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
            sched.step()
            hist.append(tot / len(y))
        return hist

    @torch.no_grad()
    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Top-1 (%) ``(N,)`` from :func:`onehot` features ``(N, dim)``."""
        self.model.eval()
        z = self.model(torch.from_numpy(feats)).squeeze(1) + self.base
        return (100.0 * torch.sigmoid(z.double())).numpy()

    def predict_encoded(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Top-1 (%) ``(N,)`` for encoded configs."""
        return self.predict_features(onehot(self.space, enc))

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_features(self.features(cfgs))

    def save(self, path: str | Path) -> None:
        """``path`` (.safetensors weights) + ``path.json`` (space, sizes, base)."""
        from ofa.train.checkpoint import save_weights

        path = Path(path)
        save_weights(path, self.model.state_dict())
        atomic_write_json(path.with_suffix(".json"), {
            "kind": self.kind, "space": self.space.to_dict(), "hidden": self.hidden,
            "layers": self.layers, "base": self.base, "output": "sigmoid",
            "metrics": self.metrics})

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Raises ``ValueError`` for missing/corrupt files or a foreign predictor."""
        from ofa.train.checkpoint import load_weights

        path = Path(path)
        meta = read_json(path.with_suffix(".json"), "predictor description")
        if meta.get("kind") != cls.kind or meta.get("output") != "sigmoid":
            raise ValueError(f"{path}: not an ofa-edge accuracy predictor (or one from before "
                             "the sigmoid head: rebuild it with `ofa predictor build`)")
        p = cls(SearchSpace.from_dict(meta["space"]), meta["hidden"], meta["layers"])
        try:
            p.model.load_state_dict(load_weights(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not fit ({str(exc).splitlines()[0]})") from None
        p.base = float(meta["base"])
        p.metrics = meta.get("metrics", {})
        return p


class OFAAccuracyPredictor:
    """The published OFA predictor (``mbv3-w1.2``, ImageNet); predicts top-1 in %."""

    kind = "ofa-published"
    RES = tuple(range(112, 225, 16))

    def __init__(self, path: str | Path, space: SearchSpace) -> None:
        if space.preset != "mbv3-w1.2" or space.num_blocks != 20:
            raise ValueError(f"the OFA predictor is for mbv3-w1.2, not {space.name}")
        bad = sorted(set(space.resolutions) - set(self.RES))
        if bad:
            raise ValueError(f"the OFA predictor knows resolutions {list(self.RES)}; not {bad}")
        self.space = space
        self.model = _mlp(128)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(sd)
        except FileNotFoundError:
            raise ValueError(f"predictor {path} does not exist") from None
        except Exception as exc:
            raise ValueError(f"{path}: not the OFA accuracy predictor "
                             f"({str(exc).splitlines()[0][:100]})") from None
        self.model.eval()

    def features(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        return onehot(self.space, enc, resolutions=self.RES)

    @torch.no_grad()
    def predict_encoded(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        return self.model(torch.from_numpy(self.features(enc))).squeeze(1).numpy() * 100.0

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_encoded(encode_configs(self.space, cfgs))


def load_accuracy_predictor(path: str | Path, space: SearchSpace):
    """Ours (``.safetensors`` + ``.json``) or OFA's published ``.pth``."""
    path = Path(path)
    if path.suffix == ".pth":
        return OFAAccuracyPredictor(path, space)
    return AccuracyPredictor.load(path)
