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
from search.encoding import ArchEncoder, Encoded
from search.latency_table import LatencyTable, TableError

__all__ = ["BlockSum", "LatencyPredictor"]


class BlockSum:
    """A per-subnet quantity that is a sum over its layer groups, compiled for batches.

    ``cost(r, shape)`` gives one layer group's contribution at resolution ``r``. It is
    evaluated once per (resolution, block, kernel, expand) into dense arrays ``base[r]``
    (:meth:`SearchSpace.fixed_shapes`: stem, first block, head) and ``block[r, b, k, e]``
    (:meth:`SearchSpace.block_shape`); a batch of encoded configs
    (:data:`search.encoding.Encoded`) is then scored with one gather and one masked sum
    (:meth:`SearchSpace.active_mask`). Latency (from a table), MACs and parameters are all
    such sums (``SearchSpace.macs``/``params`` sum ``BlockShape.macs``/``params``).

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
            stem, head = space.fixed_shapes(r)
            self.base[r] = sum(cost(r, s) for s in stem + head)
            for b in space.blocks:
                if b.position >= dmax:
                    continue  # never active
                for ki, k in enumerate(space.ks_list):
                    for ei, e in enumerate(space.expand_list):
                        self.block[r, b.index, ki, ei] = cost(r, space.block_shape(b.index, r,
                                                                                   k, e))
        self.block_flat = self.block.ravel()

    def missing(self, r: np.ndarray) -> list[int]:
        """Resolutions in ``r`` that were not compiled."""
        return sorted(set(r[np.isnan(self.base[r])].tolist()))

    def __call__(self, enc: Encoded) -> np.ndarray:
        """Sums ``(N,)`` for encoded configs; NaN for a resolution that was not compiled."""
        r = enc["r"]
        _, nb, nk, ne = self.block.shape
        flat = (r[:, None] * nb + np.arange(nb)[None, :]) * (nk * ne) + enc["ks"] * ne + enc["e"]
        val = np.take(self.block_flat, flat)
        val *= self.space.active_mask(enc["d"])
        return self.base[r] + val.sum(1)


class LatencyPredictor:
    """Latency (ms) of subnets of ``space`` from a :class:`LatencyTable`.

    Raw prediction = one invoke's overhead + the sum of the table's entries (each minus the
    overhead it includes, never below 0:
    :meth:`search.latency_table.LatencyTable.net`) for the subnet's layer groups (a
    :class:`BlockSum`).

    Args:
        table: the lookup table (its context is checked against ``space``).
        space: the search space; only resolutions present in the table can be predicted.
        calibrated: apply the table's calibration ``a * raw ** p + b + w * mparams``
            (:meth:`search.latency_table.LatencyTable.calibrated`; ``mparams``, the
            subnet's parameters in millions, another :class:`BlockSum`).
        speed: the device speed a table in probe units converts to ms at (``nominal`` or
            ``sustained``, :meth:`search.latency_table.LatencyTable.probe_ms`).

    Raises:
        TableError: the table misses an entry the space needs, or is for another space.
    """

    def __init__(self, table: LatencyTable, space: SearchSpace, calibrated: bool = True,
                 speed: str = "nominal") -> None:
        table.check(space=space)
        self.speed = speed
        self.ms_per_unit = table.probe_ms(speed)
        self.table, self.space = table, space
        self.resolutions = sorted(set(table.resolutions) & set(space.resolutions))
        if not self.resolutions:
            raise TableError(f"{table.source}: no resolution in common with the space "
                             f"(table {table.resolutions}, space {list(space.resolutions)})")
        self.calibrated = calibrated
        self.sum = BlockSum(space, lambda r, s: table.net(r, s.key()), self.resolutions)
        # the parameters (millions) of a calibration with a weights term
        self.mparams = (BlockSum(space, lambda r, s: s.params(space.divisor) / 1e6,
                                 self.resolutions)
                        if calibrated and table.calibration.get("w") else None)
        self.overhead = table.overhead
        self.encoder = ArchEncoder(space)

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """Latency (ms at :attr:`speed`) ``(N,)`` of encoded configs
        (:data:`search.encoding.Encoded`).

        Raises:
            TableError: a resolution the table has no entries for.
        """
        return self.units_encoded(enc) * self.ms_per_unit

    def units_encoded(self, enc: Encoded) -> np.ndarray:
        """Latency ``(N,)`` in the table's unit (probe units, or ms for a table without
        probe data): what a probe-relative measurement is compared with.

        Raises:
            TableError: a resolution the table has no entries for.
        """
        raw = self.sum(enc)
        if np.isnan(raw).any():
            raise TableError(f"{self.table.source}: no latencies for resolution(s) "
                             f"{self.sum.missing(enc['r'])} (table has {self.resolutions})")
        raw = raw + self.overhead
        if not self.calibrated:
            return raw
        mparams = self.mparams(enc) if self.mparams is not None else None
        return self.table.calibrated(raw, mparams) * self.table.scale(enc["r"])

    def units_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """:meth:`units_encoded` of configs."""
        return self.units_encoded(self.encoder.encode(cfgs))

    def describe(self) -> str:
        """The table's measurement context in words."""
        return self.table.describe()

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.predict_encoded(self.encoder.encode(cfgs))

    def predict(self, cfg: SubnetConfig) -> float:
        """Latency (ms) of one subnet."""
        self.space.validate(cfg)
        return float(self.predict_many([cfg])[0])
