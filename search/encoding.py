"""The one encoding of subnets for predictors and search (after OFA's ``arch_encoder.py``).

:class:`ArchEncoder` owns every representation of a subnet that is not the
:class:`~ofa.space.SubnetConfig` itself, so nothing else slices configs by position:

- **batch arrays** (:data:`Encoded`): ``ks`` ``(N, B)`` and ``e`` ``(N, B)`` hold *indices* into
  the space's ``ks_list``/``expand_list``; ``d`` ``(N, S)`` and ``r`` ``(N,)`` hold values.
  Latency, MACs and accuracy of a whole population are computed from these in one call;
- **genes**: the Optuna parameters ``b0..b{B-1}`` (kernel and expand of a block together),
  ``d0..``, ``r``, as indices with integer distributions, for :mod:`search.evolution`;
- **one-hot features** for the accuracy predictor (Cai et al., *Once-for-All*, ICLR 2020,
  section 3.3): kernel and expand one-hot per block, zero beyond a stage's depth, then the
  resolution one-hot;
- **network rows** that identify the network (genes of inactive blocks masked);
- **stratified sampling** over subnet sizes, used by the accuracy-predictor dataset and the
  search's pre-screen and mutation.

Numpy only; Optuna is imported only by the gene methods that return Optuna objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ofa.errors import InputError
from ofa.space import SearchSpace, SubnetConfig

__all__ = ["ArchEncoder", "Encoded", "take", "concat"]

#: a batch of encoded subnets: ``{"ks": (N, B), "e": (N, B), "d": (N, S), "r": (N,)}`` int64
Encoded = dict[str, np.ndarray]


def take(enc: Encoded, idx: Any) -> Encoded:
    """Rows ``idx`` of an encoded batch."""
    return {g: v[idx] for g, v in enc.items()}


def concat(a: Encoded, b: Encoded) -> Encoded:
    """Two encoded batches, one after the other."""
    return {g: np.concatenate([a[g], b[g]]) for g in a}


class ArchEncoder:
    """Encode, decode, featurise and sample subnets of one :class:`SearchSpace`.

    Args:
        space: the search space; its choice lists fix the index encoding.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.nb, self.ns = space.num_blocks, space.num_stages
        self._ks_pos = {k: i for i, k in enumerate(space.ks_list)}
        self._e_pos = {e: i for i, e in enumerate(space.expand_list)}

    # --- batch arrays ----------------------------------------------------------------------
    def encode(self, cfgs: Sequence[SubnetConfig]) -> Encoded:
        """Configs -> :data:`Encoded` arrays.

        Raises:
            ValueError: a kernel or expand value outside the space's choice lists.
        """
        try:
            return {
                "ks": np.array([[self._ks_pos[k] for k in c.ks] for c in cfgs],
                               dtype=np.int64).reshape(len(cfgs), self.nb),
                "e": np.array([[self._e_pos[e] for e in c.e] for c in cfgs],
                              dtype=np.int64).reshape(len(cfgs), self.nb),
                "d": np.array([c.d for c in cfgs], dtype=np.int64).reshape(len(cfgs), self.ns),
                "r": np.array([c.r for c in cfgs], dtype=np.int64).reshape(len(cfgs)),
            }
        except KeyError as exc:
            raise InputError(f"value {exc.args[0]!r} is not a choice of space "
                             f"{self.space.name!r}") from None

    def decode(self, enc: Encoded, i: int) -> SubnetConfig:
        """Row ``i`` of an encoded batch as a :class:`SubnetConfig`."""
        sp = self.space
        return SubnetConfig(ks=[sp.ks_list[j] for j in enc["ks"][i]],
                            e=[sp.expand_list[j] for j in enc["e"][i]],
                            d=[int(v) for v in enc["d"][i]], r=int(enc["r"][i]))

    def decode_all(self, enc: Encoded) -> list[SubnetConfig]:
        return [self.decode(enc, i) for i in range(len(enc["r"]))]

    def active(self, enc: Encoded) -> np.ndarray:
        """``(N, B)`` bool: the blocks each subnet keeps (:meth:`SearchSpace.active_mask`)."""
        return self.space.active_mask(enc["d"])

    def network_rows(self, enc: Encoded) -> np.ndarray:
        """One int row per subnet that identifies the network ``(N, 2B + S + 1)``: kernel
        and expand genes of blocks beyond a stage's depth are masked (-1), since they change
        neither the network nor its predicted accuracy or latency."""
        act = self.active(enc)
        return np.concatenate([np.where(act, enc["ks"], -1), np.where(act, enc["e"], -1),
                               enc["d"], enc["r"][:, None]], axis=1)

    # --- features --------------------------------------------------------------------------
    def feature_dim(self, resolutions: Sequence[int] | None = None) -> int:
        res = resolutions or self.space.resolutions
        return self.nb * (len(self.space.ks_list) + len(self.space.expand_list)) + len(res)

    def onehot(self, enc: Encoded, resolutions: Sequence[int] | None = None) -> np.ndarray:
        """One-hot features ``(N, B * (K + E) + R)`` float32: kernel per block, expand per
        block (zeros beyond the active depth), then resolution over ``resolutions``
        (default: the space's).

        Raises:
            ValueError: a resolution outside ``resolutions``.
        """
        n = len(enc["r"])
        nk, ne = len(self.space.ks_list), len(self.space.expand_list)
        res = list(resolutions or self.space.resolutions)
        ks = np.zeros((n, self.nb, nk), np.float32)
        es = np.zeros((n, self.nb, ne), np.float32)
        rows, cols = np.nonzero(self.active(enc))
        ks[rows, cols, enc["ks"][rows, cols]] = 1
        es[rows, cols, enc["e"][rows, cols]] = 1
        r_pos = {r: i for i, r in enumerate(res)}
        bad = sorted({int(r) for r in enc["r"]} - set(r_pos))
        if bad:
            raise InputError(f"resolution(s) {bad} not among the predictor's {res}")
        rr = np.zeros((n, len(res)), np.float32)
        rr[np.arange(n), [r_pos[int(r)] for r in enc["r"]]] = 1
        return np.concatenate([ks.reshape(n, -1), es.reshape(n, -1), rr], axis=1)

    # --- Optuna genes ----------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        """Gene names in a fixed order: ``b0..b{B-1}`` (a block's kernel *and* expand ratio,
        one gene, as OFA's mutation resamples them together), ``d0..d{S-1}``, ``r``."""
        return [f"b{i}" for i in range(self.nb)] + [f"d{i}" for i in range(self.ns)] + ["r"]

    def _sizes(self) -> dict[str, int]:
        sp = self.space
        nke = len(sp.ks_list) * len(sp.expand_list)
        return {g: nke if g[0] == "b" else len(sp.stage_depths(int(g[1:]))) if g[0] == "d"
                else len(sp.resolutions) for g in self.genes}

    def to_params(self, cfg: SubnetConfig) -> dict[str, int]:
        """A subnet as gene values: indices into the (kernel x expand) pairs, the stage's
        depth choices (:meth:`ofa.space.SearchSpace.stage_depths`) and the resolutions (what
        :meth:`suggest` asks Optuna for)."""
        sp, ne = self.space, len(self.space.expand_list)
        out = {f"b{i}": self._ks_pos[k] * ne + self._e_pos[e]
               for i, (k, e) in enumerate(zip(cfg.ks, cfg.e))}
        out.update({f"d{i}": sp.stage_depths(i).index(d) for i, d in enumerate(cfg.d)})
        out["r"] = sp.resolutions.index(cfg.r)
        return out

    def from_params(self, params: dict[str, Any]) -> SubnetConfig:
        """Gene values -> config (the inverse of :meth:`to_params`)."""
        sp, ne = self.space, len(self.space.expand_list)
        blocks = [divmod(int(params[f"b{i}"]), ne) for i in range(self.nb)]
        return SubnetConfig(ks=[sp.ks_list[k] for k, _ in blocks],
                            e=[sp.expand_list[e] for _, e in blocks],
                            d=[sp.stage_depths(i)[int(params.get(f"d{i}", 0))]
                               for i in range(self.ns)],
                            r=sp.resolutions[int(params["r"])])

    def distributions(self) -> dict[str, Any]:
        """An Optuna ``IntDistribution`` of indices per gene with more than one choice
        (integer genes keep Optuna's per-parameter bookkeeping cheap)."""
        from optuna.distributions import IntDistribution

        return {g: IntDistribution(0, n - 1) for g, n in self._sizes().items() if n > 1}

    def suggest(self, trial: Any) -> SubnetConfig:
        """Ask an Optuna trial for every gene (NSGA-II needs all genes on every trial)."""
        return self.from_params({g: trial.suggest_int(g, 0, n - 1) if n > 1 else 0
                                 for g, n in self._sizes().items()})

    # --- sampling --------------------------------------------------------------------------
    def sample_stratified(self, n: int, rng: np.random.Generator,
                          levels: np.ndarray | None = None,
                          cycle_resolutions: bool = False) -> Encoded:
        """``n`` encoded subnets spread evenly over sizes.

        Each subnet has a size level ``u`` in [0, 1) (drawn uniformly, or given as
        ``levels`` ``(n,)``) and every gene picks a choice whose rank by value lies around
        ``u`` (``u`` +- 0.35), so tiny and huge subnets are as common as mid-size ones;
        uniform sampling concentrates on mid-size subnets (central limit), which leaves tight
        budgets with few candidates and an accuracy predictor with few extremes.
        ``cycle_resolutions`` assigns resolutions in turn instead (an even share each).
        """
        u = (rng.random(n) if levels is None else np.asarray(levels, float))[:, None]

        def pick(choices: Sequence, width: int) -> np.ndarray:
            """Positions in ``choices`` (smallest value first within the level)."""
            x = np.clip(u + rng.uniform(-0.35, 0.35, (n, width)), 0.0, 1.0 - 1e-9)
            return np.argsort(choices)[(x * len(choices)).astype(np.int64)]

        sp = self.space
        depth, res = np.asarray(sp.depth_list), np.asarray(sp.resolutions)
        r = res[np.arange(n) % len(res)] if cycle_resolutions else res[pick(res, 1)[:, 0]]
        d = depth[pick(depth, self.ns)]
        for s, st in enumerate(sp.stages):
            if st.fixed_depth:
                d[:, s] = st.fixed_depth
        return {"ks": pick(sp.ks_list, self.nb), "e": pick(sp.expand_list, self.nb),
                "d": d, "r": r.astype(np.int64)}

    def stratified_configs(self, n: int, seed: int = 0) -> list[SubnetConfig]:
        """``n`` subnets for an accuracy-predictor dataset (deterministic per ``seed``): the
        largest and smallest at every resolution first, then :meth:`sample_stratified` with
        size levels on a golden-ratio sweep and resolutions in turn.

        Not prefix-stable: the first 300 of ``n = 1000`` are not those of ``n = 300`` (the
        noise is drawn per gene over all ``n``), so a cached dataset grown from 300 to 1,000
        (:func:`search.acc_dataset.build_accuracy_dataset`) keeps its 300 rows and adds rows
        300-999 of the larger sweep; both halves are spread over sizes."""
        sp = self.space
        cfgs = [c for r in sorted(sp.resolutions) for c in (sp.max_subnet(r), sp.min_subnet(r))]
        rest = max(0, n - len(cfgs))
        levels = (np.arange(rest) * 0.618034) % 1.0
        enc = self.sample_stratified(rest, np.random.default_rng(seed), levels,
                                     cycle_resolutions=True)
        return (cfgs + self.decode_all(enc))[:n]
