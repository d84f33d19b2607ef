"""Models: shapes, causality of the TCN, the leader of LFAN, windows over trials."""

from __future__ import annotations

import pytest
import torch

from affvx.trainers.models import build_model
from affvx.trainers.spec import ModelConfig
from affvx.trainers.windows import window_starts

DIMS = {"visual": 12, "mfcc": 5, "vggish": 7}


@pytest.mark.parametrize("name", ["tcn", "lfan", "gru"])
def test_every_model_maps_modalities_to_one_output_per_emotion(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, channels=16), DIMS, 2, leader="visual")
    inputs = {m: torch.randn(3, 40, d) for m, d in DIMS.items()}
    assert model(inputs).shape == (3, 40, 2)


@pytest.mark.parametrize("name", ["tcn", "lfan"])
def test_convolutional_models_are_causal(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name=name, channels=16, dropout=0.0), DIMS, 1, leader="visual"
    ).eval()
    inputs = {m: torch.randn(1, 60, d) for m, d in DIMS.items()}
    changed = {m: x.clone() for m, x in inputs.items()}
    changed["mfcc"][:, 30:] += 5.0
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    assert torch.equal(before[:, :30], after[:, :30])
    assert not torch.equal(before[:, 30:], after[:, 30:])


def test_tcn_receptive_field_matches_seed_002() -> None:
    """4 levels, kernel 5, dilations 1, 2, 4, 8: each frame sees 1 + 2*4*15 = 121 frames."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name="tcn", channels=8, dropout=0.0), {"visual": 3}, 1, "visual"
    ).eval()
    x = torch.zeros(1, 300, 3)
    y = torch.zeros(1, 300, 3)
    y[0, 100] = 1.0
    with torch.no_grad():
        diff = (model({"visual": x}) - model({"visual": y})).abs()[0, :, 0]
    touched = torch.nonzero(diff > 0).flatten()
    assert touched.min() == 100 and touched.max() == 100 + 120


def test_lfan_leader_gets_the_wide_branch() -> None:
    model = build_model(
        ModelConfig(name="lfan", channels=24, follower_channels=8), DIMS, 1, leader="mfcc"
    )
    assert model.branches["mfcc"].out_features == 24
    assert model.branches["visual"].out_features == 8


@pytest.mark.parametrize(
    "n, expected",
    [
        (1000, [0, 200, 400, 600, 700]),
        (900, [0, 200, 400, 600]),
        (300, [0]),
        (120, [0]),
        (301, [0, 1]),
    ],
)
def test_window_starts_cover_the_trial_with_an_end_window(n: int, expected: list[int]) -> None:
    assert window_starts(n, 300, 200) == expected
