"""CCC: our metric against audmetric's independent implementation; the loss per window."""

from __future__ import annotations

import audmetric
import numpy as np
import pytest
import torch

from affvx.trainers.ccc import ccc, ccc_loss


@pytest.mark.parametrize("seed", range(5))
def test_metric_matches_audmetric(seed: int) -> None:
    rng = np.random.default_rng(seed)
    label = np.tanh(rng.normal(0.2, 0.5, 5000))
    prediction = 0.7 * label + rng.normal(0.1, 0.3, 5000)
    label[rng.random(5000) < 0.1] = np.nan
    expected = audmetric.concordance_cc(label, prediction, ignore_nan=True)
    assert ccc(prediction, label) == pytest.approx(expected, rel=1e-12)


def test_metric_edge_cases() -> None:
    assert ccc(np.array([0.5, 0.5]), np.array([0.1, 0.2])) == pytest.approx(0.0)
    assert ccc(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert np.isnan(ccc(np.array([1.0, 2.0]), np.array([np.nan, 0.3])))


def test_loss_is_one_minus_ccc_per_window_over_masked_frames() -> None:
    rng = np.random.default_rng(3)
    prediction = rng.normal(size=(4, 50, 2)).astype(np.float32)
    label = rng.normal(size=(4, 50, 2)).astype(np.float32)
    mask = (rng.random((4, 50, 2)) > 0.2).astype(np.float32)
    mask[2, :, 1] = 0  # a window without labels of one emotion does not count for it
    expected = 0.0
    for e in range(2):
        per_window = [
            1
            - audmetric.concordance_cc(
                label[b, mask[b, :, e] > 0, e], prediction[b, mask[b, :, e] > 0, e]
            )
            for b in range(4)
            if mask[b, :, e].sum() >= 2
        ]
        expected += np.mean(per_window)
    loss = ccc_loss(
        torch.from_numpy(prediction), torch.from_numpy(label * mask), torch.from_numpy(mask)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-4)
