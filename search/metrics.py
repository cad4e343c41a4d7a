"""How well a predictor ranks and fits what was measured (accuracy and latency alike).

Used for the accuracy predictor's held-out score (:mod:`search.acc_dataset`) and a latency
table's validation (:mod:`deploy.lut`). The ±5% / ±10% shares and RMSPE follow the latency
predictor literature (nn-Meter, Zhang et al., MobiSys 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["kendall_tau", "relative_error_report"]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's rank correlation τ-b of two equally long sequences (-1..1)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def relative_error_report(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """% of predictions within ±5% / ±10% of the measurement, RMSPE (%), Kendall τ.

    Args:
        pred, meas: ``(N,)`` predicted and measured values (e.g. ms), ``meas > 0``.
    """
    err = (pred - meas) / meas
    return {"within_5pct": float(np.mean(np.abs(err) <= 0.05) * 100),
            "within_10pct": float(np.mean(np.abs(err) <= 0.10) * 100),
            "rmspe": float(np.sqrt(np.mean(err ** 2)) * 100),
            "kendall_tau": kendall_tau(pred, meas)}
