"""Accuracy predictors (Cai et al., *Once-for-All*, ICLR 2020, section 3.3): one-hot
architecture features -> MLP 3 x 400 ReLU -> top-1. Inference is numpy only, so a query
(``ofa search``) needs no torch; fitting imports torch when it runs.

- :class:`AccuracyPredictor`: ours, trained with Adam (lr 1e-3, weight decay 1e-4) on
  (subnet, hold-out top-1) pairs measured after BN recalibration (:mod:`search.acc_dataset`).
- :class:`OFAAccuracyPredictor`: the authors' published predictor for ``mbv3-w1.2``
  (``acc_predictor.pth``), with their 128-value encoding: kernel one-hot (20 x 3), expand
  one-hot (20 x 3), both zero beyond a stage's depth, then resolution one-hot over
  112..224 in steps of 16 (8 values). Its output is top-1 as a fraction. Convert the
  ``.pth`` once with :func:`import_ofa_predictor` (``ofa predictor import-ofa``) to read it
  without torch.

Both files are safetensors weights (keys ``0.weight``, ``0.bias``, ``2.weight`` ... as
``torch.nn.Sequential`` names them) plus a JSON description beside them (``.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ofa.errors import InputError
from ofa.fileio import atomic_write, atomic_write_json, read_json
from ofa.space import SearchSpace, SubnetConfig
from search.encoding import ArchEncoder, Encoded

__all__ = ["MLP", "AccuracyPredictor", "OFAAccuracyPredictor", "load_accuracy_predictor",
           "import_ofa_predictor"]


class MLP:
    """A ReLU MLP in numpy: ``x (N, d_in)`` -> ``(N,)``; weights as in ``nn.Sequential``
    (``{i}.weight`` ``(out, in)``, ``{i}.bias`` ``(out,)`` for Linear layers ``i = 0, 2, ..``).

    Raises:
        ValueError: a state dict that is not such an MLP.
    """

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        idx = sorted(int(k.split(".")[0]) for k in state if k.endswith(".weight"))
        try:
            self.layers = [(np.asarray(state[f"{i}.weight"], np.float32).T.copy(),
                            np.asarray(state[f"{i}.bias"], np.float32)) for i in idx]
        except KeyError as exc:
            raise InputError(f"MLP weights lack {exc.args[0]}") from None
        if not self.layers or any(w.shape[1] != b.shape[0] for w, b in self.layers):
            raise InputError("MLP weights have inconsistent shapes")
        self.d_in = self.layers[0][0].shape[0]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v for i, (w, b) in enumerate(self.layers)
                for k, v in ((f"{2 * i}.weight", w.T.copy()), (f"{2 * i}.bias", b))}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.d_in:
            raise InputError(f"predictor expects {self.d_in} features, got {x.shape[1]}")
        for w, b in self.layers[:-1]:
            x = x @ w  # a fresh array; bias and ReLU in place (no more large temporaries)
            x += b
            np.maximum(x, 0.0, out=x)
        w, b = self.layers[-1]
        return (x @ w + b)[:, 0]


def _save(path: Path, mlp: MLP, meta: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    atomic_write(path, lambda tmp: save_file(mlp.state_dict(), tmp))
    atomic_write_json(path.with_suffix(".json"), meta)


def _load_state(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.exists():
        raise InputError(f"predictor {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(f"{path} is not a readable safetensors file "
                         f"({str(exc).splitlines()[0][:100]})") from None


class AccuracyPredictor:
    """MLP accuracy predictor over one-hot features (:meth:`ArchEncoder.onehot`); top-1 in %.

    The output is ``100 * sigmoid(mlp(x) + base)`` with ``base`` the logit of the mean
    training accuracy: predictions stay inside (0, 100) and keep their order near the top,
    where a linear head extrapolates past 100% for the largest subnets of a well-trained
    supernet (seen on digits) and the search would chase those. Trained on squared error
    in percentage points.
    """

    kind = "ofa-edge-mlp"

    def __init__(self, space: SearchSpace, hidden: int = 400, layers: int = 3) -> None:
        self.space = space
        self.encoder = ArchEncoder(space)
        self.hidden, self.layers = hidden, layers
        self.dim = self.encoder.feature_dim()
        self.mlp: MLP | None = None
        self.base = 0.0  # logit of the mean accuracy; the MLP learns the residual
        self.metrics: dict = {}  # held-out RMSE / Kendall tau, stored with the weights

    def features(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.encoder.onehot(self.encoder.encode(cfgs))

    def fit(self, cfgs: Sequence[SubnetConfig], acc: Sequence[float], epochs: int = 300,
            lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
            batch_size: int = 256) -> list[float]:
        """Train with Adam on (config, top-1 %) pairs (torch, CPU); returns the per-epoch
        training MSE."""
        import torch
        from torch import nn

        torch.manual_seed(seed)
        mods: list[nn.Module] = []
        for i in range(self.layers):
            mods += [nn.Linear(self.dim if i == 0 else self.hidden, self.hidden), nn.ReLU()]
        model = nn.Sequential(*mods, nn.Linear(self.hidden, 1))
        x = torch.from_numpy(self.features(cfgs))
        y = torch.tensor(acc, dtype=torch.float32)
        mean = float(np.clip(y.mean() / 100.0, 1e-3, 1 - 1e-3))
        self.base = float(np.log(mean / (1 - mean)))
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        hist = []
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            tot = 0.0
            for i in range(0, len(y), batch_size):
                idx = perm[i:i + batch_size]
                pred = 100.0 * torch.sigmoid(model(x[idx]).squeeze(1) + self.base)
                loss = ((pred - y[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
            sched.step()
            hist.append(tot / len(y))
        self.mlp = MLP({k: v.detach().numpy() for k, v in model.state_dict().items()})
        return hist

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Top-1 (%) ``(N,)`` float64 from one-hot features ``(N, dim)``.

        Raises:
            ValueError: the predictor was neither fitted nor loaded.
        """
        if self.mlp is None:
            raise InputError("accuracy predictor is not fitted")
        z = self.mlp(feats).astype(np.float64) + self.base
        return 100.0 / (1.0 + np.exp(-z))

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """Top-1 (%) ``(N,)`` for encoded configs (:data:`search.encoding.Encoded`)."""
        return self.predict_features(self.encoder.onehot(enc))

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_features(self.features(cfgs))

    def save(self, path: str | Path) -> None:
        """``path`` (.safetensors weights) + ``path.json`` (space, sizes, base, metrics)."""
        if self.mlp is None:
            raise InputError("accuracy predictor is not fitted")
        _save(Path(path), self.mlp, {
            "kind": self.kind, "space": self.space.to_dict(), "hidden": self.hidden,
            "layers": self.layers, "base": self.base, "output": "sigmoid",
            "metrics": self.metrics})

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Raises ``ValueError`` for missing/corrupt files or a foreign predictor."""
        path = Path(path)
        meta = read_json(path.with_suffix(".json"), "predictor description")
        if meta.get("kind") != cls.kind or meta.get("output") != "sigmoid":
            raise InputError(f"{path}: not an ofa-edge accuracy predictor (or one from before "
                             "the sigmoid head: rebuild it with `ofa predictor build`)")
        p = cls(SearchSpace.from_dict(meta["space"]), meta["hidden"], meta["layers"])
        mlp = MLP(_load_state(path))
        if mlp.d_in != p.dim or len(mlp.layers) != p.layers + 1:
            raise InputError(f"{path}: weights do not fit the space's {p.dim} features")
        p.mlp, p.base, p.metrics = mlp, float(meta["base"]), meta.get("metrics", {})
        return p


class OFAAccuracyPredictor:
    """The published OFA predictor (``mbv3-w1.2``, ImageNet); predicts top-1 in %.

    Args:
        mlp: its weights (:func:`import_ofa_predictor` reads them from OFA's ``.pth``).
        space: an ``mbv3-w1.2`` space whose resolutions the predictor knows.

    Raises:
        ValueError: another space, unknown resolutions, or weights of another shape.
    """

    kind = "ofa-published"
    RES = tuple(range(112, 225, 16))

    def __init__(self, mlp: MLP, space: SearchSpace) -> None:
        if space.preset != "mbv3-w1.2" or space.num_blocks != 20:
            raise InputError(f"the OFA predictor is for mbv3-w1.2, not {space.name}")
        bad = sorted(set(space.resolutions) - set(self.RES))
        if bad:
            raise InputError(f"the OFA predictor knows resolutions {list(self.RES)}; not {bad}")
        self.space, self.mlp = space, mlp
        self.encoder = ArchEncoder(space)
        if mlp.d_in != self.encoder.feature_dim(self.RES):
            raise InputError(f"OFA predictor weights take {mlp.d_in} features, not "
                             f"{self.encoder.feature_dim(self.RES)}")
        self.metrics: dict = {}

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """Top-1 (%) ``(N,)`` float64."""
        return self.mlp(self.encoder.onehot(enc, resolutions=self.RES)).astype(np.float64) * 100

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_encoded(self.encoder.encode(cfgs))


def _read_pth(path: Path) -> MLP:
    """OFA's ``acc_predictor.pth`` (a torch state dict, loaded with ``weights_only``)."""
    import torch

    if not path.exists():
        raise InputError(f"predictor {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return MLP({k: v.numpy() for k, v in sd.items()})
    except Exception as exc:
        raise InputError(f"{path}: not the OFA accuracy predictor "
                         f"({str(exc).splitlines()[0][:100]})") from None


def import_ofa_predictor(pth: str | Path, out: str | Path) -> Path:
    """Convert OFA's published ``acc_predictor.pth`` to ``out`` (.safetensors + .json) once,
    so that searches read it with numpy alone. Needs torch (for reading the ``.pth``).

    Raises:
        ValueError: not OFA's predictor (wrong file or shapes).
    """
    mlp = _read_pth(Path(pth))
    OFAAccuracyPredictor(mlp, SearchSpace.from_dict(
        {"preset": "mbv3-w1.2", "resolutions": list(OFAAccuracyPredictor.RES)}))
    out = Path(out)
    _save(out, mlp, {"kind": OFAAccuracyPredictor.kind, "space": "mbv3-w1.2",
                     "resolutions": list(OFAAccuracyPredictor.RES), "source": str(pth)})
    return out


def load_accuracy_predictor(path: str | Path, space: SearchSpace
                            ) -> AccuracyPredictor | OFAAccuracyPredictor:
    """Ours (``.safetensors`` + ``.json``), OFA's converted one (same files, ``kind``
    ``ofa-published``) or OFA's ``.pth`` directly (imports torch).

    Raises:
        ValueError: missing or foreign files, a predictor of another space.
    """
    path = Path(path)
    if path.suffix == ".pth":
        return OFAAccuracyPredictor(_read_pth(path), space)
    meta = read_json(path.with_suffix(".json"), "predictor description")
    if isinstance(meta, dict) and meta.get("kind") == OFAAccuracyPredictor.kind:
        return OFAAccuracyPredictor(MLP(_load_state(path)), space)
    pred = AccuracyPredictor.load(path)
    ps = pred.space
    if (ps.preset, ps.num_blocks, ps.ks_list, ps.expand_list, ps.depth_list) != (
            space.preset, space.num_blocks, space.ks_list, space.expand_list, space.depth_list):
        raise InputError(f"{path}: a predictor of space {ps.name!r} {ps.ks_list}/"
                         f"{ps.expand_list}/{ps.depth_list}, not of {space.name!r}")
    extra = sorted(set(space.resolutions) - set(ps.resolutions))
    if extra:
        raise InputError(f"{path}: the predictor knows resolutions {list(ps.resolutions)}, "
                         f"not {extra}")
    return pred
