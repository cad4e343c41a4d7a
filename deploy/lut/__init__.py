"""Latency lookup tables measured on this machine or a target (``ofa lut``): one concept per
module.

- :mod:`deploy.lut.convert`: every block shape and whole subnet as the runtime's model file;
- :mod:`deploy.lut.measure`: timing whole models beside the reference probe;
- :mod:`deploy.lut.calibrate`: the calibration ``a * sum ** p`` and the validation;
- :mod:`deploy.lut.build`: ``build_table``, resumable, here or on a device.

Formats in ``docs/formats.md``; the table itself is :class:`search.latency_table.LatencyTable`.
"""

from deploy.lut.build import build_table
from deploy.lut.calibrate import calibrate, fit_calibration, refit_calibration, validate_table
from deploy.lut.convert import (
    PRECISIONS,
    block_layout,
    block_models_dir,
    calibration_configs,
    convert_blocks,
    periodic_weights,
    representative_set,
)
from deploy.lut.measure import (
    at_reference,
    measure_module,
    measure_subnets,
    runtime_context,
    table_reference,
    trial_pairs,
)

__all__ = ["measure_module", "measure_subnets", "at_reference", "table_reference", "trial_pairs",
           "build_table", "block_models_dir",
           "convert_blocks", "calibration_configs", "calibrate", "fit_calibration",
           "refit_calibration", "validate_table", "runtime_context", "representative_set",
           "periodic_weights", "block_layout", "PRECISIONS"]
