"""The concordance correlation coefficient, as metric (numpy) and as loss (torch).

CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2) with population (ddof = 0)
estimators. As a metric it is computed over all valid frames of a partition concatenated; as a
loss, 1 - CCC is computed per window over its valid frames and averaged over windows.
"""

from __future__ import annotations

import numpy as np
import torch


def ccc(prediction: np.ndarray, label: np.ndarray) -> float:
    """CCC over the frames where `label` is finite (NaN if fewer than two such frames)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    valid = np.isfinite(label)
    if valid.sum() < 2:
        return float("nan")
    x, y = prediction[valid], label[valid]
    mean_x, mean_y = x.mean(), y.mean()
    covariance = np.mean((x - mean_x) * (y - mean_y))
    denominator = x.var() + y.var() + (mean_x - mean_y) ** 2
    return float(2.0 * covariance / denominator) if denominator > 0 else 0.0


def ccc_loss(prediction: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over windows and emotions of 1 - CCC, counting only frames where `mask` is 1.

    Shapes: prediction, label and mask (batch, frames, emotions); label is 0 where masked.
    Windows with fewer than two valid frames of an emotion do not count for that emotion.
    """
    count = mask.sum(dim=1)
    usable = count >= 2
    safe_count = count.clamp(min=1)
    mean_x = (prediction * mask).sum(dim=1) / safe_count
    mean_y = (label * mask).sum(dim=1) / safe_count
    dx = (prediction - mean_x.unsqueeze(1)) * mask
    dy = (label - mean_y.unsqueeze(1)) * mask
    var_x = (dx * dx).sum(dim=1) / safe_count
    var_y = (dy * dy).sum(dim=1) / safe_count
    covariance = (dx * dy).sum(dim=1) / safe_count
    value = 2.0 * covariance / (var_x + var_y + (mean_x - mean_y) ** 2 + 1e-8)
    per_emotion = torch.where(usable, 1.0 - value, torch.zeros_like(value)).sum(dim=0)
    windows = usable.sum(dim=0).clamp(min=1)
    # summed over emotions: the multi-task loss of seed 000
    return (per_emotion / windows).sum()
