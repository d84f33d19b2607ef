"""The oracle of a synthetic store: the best achievable CCC for any trials and modalities.

A synthetic store keeps, per trial, modality set and emotion, the six moments of the oracle
prediction x and the label y over the trial's valid frames (n, sum x, sum y, sum x^2, sum y^2,
sum xy) in `oracle.parquet`. Moments add up over trials, so the oracle CCC of any fold's
validation trials is exact and costs no frame reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ORACLE_FILE = "oracle.parquet"
N_MOMENTS = 6


def moments(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(n, sum x, sum y, sum x^2, sum y^2, sum xy) of two equally long series."""
    return np.array(
        [
            len(label),
            prediction.sum(),
            label.sum(),
            (prediction**2).sum(),
            (label**2).sum(),
            (prediction * label).sum(),
        ],
        dtype=np.float64,
    )


def ccc_from_moments(total: np.ndarray) -> float:
    """CCC (population estimators) from summed moments; NaN for fewer than two frames."""
    n, sx, sy, sxx, syy, sxy = total
    if n < 2:
        return float("nan")
    mx, my = sx / n, sy / n
    vx, vy = sxx / n - mx**2, syy / n - my**2
    covariance = sxy / n - mx * my
    return float(2 * covariance / (vx + vy + (mx - my) ** 2))


def column_name(emotion: str, modalities: Sequence[str]) -> str:
    return f"{emotion}:{'+'.join(modalities)}"
