"""Vectorised latency prediction from a lookup table (OFA section 4; nn-Meter-style sums).

The table is compiled once into dense arrays: ``base[r]`` (stem, first block, head, one
invoke's overhead) and ``block[r, b, k, e]`` (block ``b`` with kernel index ``k`` and expand
index ``e``, overhead removed). A population of configs encoded as integer arrays is then
scored with one gather and one masked sum, millions of configs per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ofa.space import BlockShape, SearchSpace, SubnetConfig
from search.latency_table import LatencyTable, TableError

__all__ = ["BlockSum", "LatencyPredictor", "encode_configs"]


def encode_configs(space: SearchSpace, cfgs: Sequence[SubnetConfig]) -> dict[str, np.ndarray]:
    """Configs -> index arrays ``ks (N, B)``, ``e (N, B)``, ``d (N, S)``, ``r (N,)`` (values).

    ``ks``/``e`` hold indices into the space's choice lists; ``d`` and ``r`` hold values.
    """
    ks_pos = {k: i for i, k in enumerate(space.ks_list)}
    e_pos = {e: i for i, e in enumerate(space.expand_list)}
    return {
        "ks": np.array([[ks_pos[k] for k in c.ks] for c in cfgs], dtype=np.int64),
        "e": np.array([[e_pos[e] for e in c.e] for c in cfgs], dtype=np.int64),
        "d": np.array([c.d for c in cfgs], dtype=np.int64),
        "r": np.array([c.r for c in cfgs], dtype=np.int64),
    }


class BlockSum:
    """A per-subnet quantity that is a sum over its layer groups, compiled for batches.

    ``cost(r, shape)`` gives one layer group's contribution at resolution ``r``. It is
    evaluated once per (resolution, block, kernel, expand) into dense arrays ``base[r]``
    (stem, first block, head) and ``block[r, b, k, e]``; a batch of encoded configs is then
    scored with one gather and one masked sum. Latency (from a table), MACs and parameters
    are all such sums (``SearchSpace.macs``/``params`` sum ``BlockShape.macs``/``params``).

    Args:
        space: the search space.
        cost: ``(resolution, BlockShape) -> float``.
        resolutions: resolutions to compile (default: all of the space's).
    """

    def __init__(self, space: SearchSpace, cost: Callable[[int, BlockShape], float],
                 resolutions: Sequence[int] | None = None) -> None:
        self.space = space
        self.resolutions = sorted(resolutions or space.resolutions)
        nb, nk, ne = space.num_blocks, len(space.ks_list), len(space.expand_list)
        size = max(space.resolutions) + 1
        self.block = np.zeros((size, nb, nk, ne))
        self.base = np.full(size, np.nan)
        dmax = max(space.depth_list)
        for r in self.resolutions:
            for ki, k in enumerate(space.ks_list):
                for ei, e in enumerate(space.expand_list):
                    shapes = space.block_shapes(space.config(k, e, dmax, r))
                    blocks = shapes[2:-4]
                    for b, s in zip(space.active_blocks(space.config(k, e, dmax, r)), blocks):
                        self.block[r, b, ki, ei] = cost(r, s)
            self.base[r] = sum(cost(r, s) for s in shapes[:2] + shapes[-4:])
        self.block_flat = self.block.ravel()
        self.stage_of = np.arange(nb) // space.max_depth
        self.pos_in_stage = np.arange(nb) % space.max_depth

    def missing(self, r: np.ndarray) -> list[int]:
        """Resolutions in ``r`` that were not compiled."""
        return sorted(set(r[np.isnan(self.base[r])].tolist()))

    def __call__(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Sums ``(N,)`` for encoded configs (see :func:`encode_configs`); NaN for a
        resolution that was not compiled."""
        r = enc["r"]
        _, nb, nk, ne = self.block.shape
        flat = (r[:, None] * nb + np.arange(nb)[None, :]) * (nk * ne) + enc["ks"] * ne + enc["e"]
        val = np.take(self.block_flat, flat)
        val *= self.pos_in_stage[None, :] < np.take(enc["d"], self.stage_of, axis=1)
        return self.base[r] + val.sum(1)


class LatencyPredictor:
    """Latency (ms) of subnets of ``space`` from a :class:`LatencyTable`.

    Raw prediction = one invoke's overhead + the sum of the table's entries (each minus the
    overhead it includes) for the subnet's layer groups (a :class:`BlockSum`).

    Args:
        table: the lookup table (its context is checked against ``space``).
        space: the search space; only resolutions present in the table can be predicted.
        calibrated: apply the table's linear calibration ``a * raw + b``.

    Raises:
        TableError: the table misses an entry the space needs, or is for another space.
    """

    def __init__(self, table: LatencyTable, space: SearchSpace, calibrated: bool = True) -> None:
        table.check(space=space)
        self.table, self.space = table, space
        self.resolutions = sorted(set(table.resolutions) & set(space.resolutions))
        if not self.resolutions:
            raise TableError(f"{table.source}: no resolution in common with the space "
                             f"(table {table.resolutions}, space {list(space.resolutions)})")
        self.a = float(table.calibration["a"]) if calibrated else 1.0
        self.b = float(table.calibration["b"]) if calibrated else 0.0
        ov = table.overhead_ms
        self.sum = BlockSum(space, lambda r, s: table.entry(r, s.key()) - ov, self.resolutions)
        self.overhead_ms = ov

    def predict_encoded(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Latency (ms) ``(N,)`` of encoded configs (see :func:`encode_configs`).

        Raises:
            TableError: a resolution the table has no entries for.
        """
        raw = self.sum(enc)
        if np.isnan(raw).any():
            raise TableError(f"{self.table.source}: no latencies for resolution(s) "
                             f"{self.sum.missing(enc['r'])} (table has {self.resolutions})")
        return self.a * (raw + self.overhead_ms) + self.b

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_encoded(encode_configs(self.space, cfgs))

    def predict(self, cfg: SubnetConfig) -> float:
        """Latency (ms) of one subnet."""
        self.space.validate(cfg)
        return float(self.predict_many([cfg])[0])
