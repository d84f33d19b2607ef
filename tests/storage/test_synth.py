"""The synthetic corpus: its shape follows the trial list, and its oracle is a real bound."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from affvx.storage.reader import FeatureStore
from affvx.storage.synth import (
    DEFAULT_TRIALS,
    MIN_FRAMES,
    SynthConfig,
    make_synthetic_store,
    oracle_for,
)
from tests.conftest import VA_TRIALS


def _file_hashes(path: Path) -> dict[str, str]:
    manifest = json.loads((path / "manifest.json").read_text())
    return {name: entry["sha256"] for name, entry in manifest["files"].items()}


def _ccc(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(), y.mean()
    return float(2 * np.mean((x - mx) * (y - my)) / (x.var() + y.var() + (mx - my) ** 2))


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    config = SynthConfig(n_trials=10, scale=0.02, seed=3, visual_dim=8)
    make_synthetic_store(tmp_path / "a", config)
    make_synthetic_store(tmp_path / "b", config)
    make_synthetic_store(
        tmp_path / "c", SynthConfig(n_trials=10, scale=0.02, seed=4, visual_dim=8)
    )
    assert _file_hashes(tmp_path / "a") == _file_hashes(tmp_path / "b")
    assert (
        _file_hashes(tmp_path / "a")["visual.arrow"]
        != _file_hashes(tmp_path / "c")["visual.arrow"]
    )


def test_default_corpus_is_an_aff_wild2_sample(demo_store: Path) -> None:
    store = FeatureStore(demo_store)
    with open(VA_TRIALS) as handle:
        real = {row["trial"]: row for row in csv.DictReader(handle)}
    assert len(store.trial_names) == DEFAULT_TRIALS
    assert store.modalities == {"visual": 128, "mfcc": 39, "vggish": 128, "egemaps": 23}
    counts = {p: len(store.trials_in(p)) for p in ("Train_Set", "Validation_Set", "Test_Set")}
    assert counts == {"Train_Set": 37, "Validation_Set": 8, "Test_Set": 15}
    for trial in store.trial_names:
        info = store.trial_info(trial)
        assert info.partition == real[trial]["partition"]
        assert info.fps == float(real[trial]["fps"])
        assert info.n_frames == max(MIN_FRAMES, round(int(real[trial]["frames"]) * 0.1))


def test_labels_are_in_range_with_invalid_runs_and_test_labels_hidden(demo_store: Path) -> None:
    store = FeatureStore(demo_store)
    for trial in store.trial_names:
        labels = store.labels(trial)
        if store.trial_info(trial).partition == "Test_Set":
            assert np.isnan(labels).all()
            continue
        valid = labels[~np.isnan(labels)]
        assert valid.size and np.all(np.abs(valid) <= 1.0)
        # valence and arousal are invalid on the same frames, as in Aff-Wild2
        assert np.array_equal(np.isnan(labels[:, 0]), np.isnan(labels[:, 1]))
    invalid = sum(
        store.n_frames(t) - store.trial_info(t).n_labelled for t in store.trials_in("Train_Set")
    )
    assert 0 < invalid < 0.2 * sum(store.n_frames(t) for t in store.trials_in("Train_Set"))


def test_each_modality_sees_its_emotion_best_and_fusion_beats_all(demo_store: Path) -> None:
    manifest = FeatureStore(demo_store).manifest
    train = {
        m: oracle_for(manifest, m.split("+"))["Train_Set"]
        for m in manifest["oracle_ccc_by_modalities"]
    }
    singles = ["visual", "mfcc", "vggish", "egemaps"]
    assert max(singles, key=lambda m: train[m]["valence"]) == "visual"
    assert max(singles, key=lambda m: train[m]["arousal"]) in ("mfcc", "vggish", "egemaps")
    for emotion in ("valence", "arousal"):
        best_single = max(train[m][emotion] for m in singles)
        assert train["visual+mfcc+vggish"][emotion] > best_single + 0.03
        assert (
            manifest["oracle_ccc"]["Train_Set"][emotion]
            == train["visual+mfcc+vggish+egemaps"][emotion]
        )


def test_oracle_is_reachable_but_not_beaten_by_a_fitted_model(demo_store: Path) -> None:
    """A per-frame linear model fitted on Train_Set approaches the oracle on Validation_Set."""
    store = FeatureStore(demo_store)
    modalities = ["visual", "mfcc", "vggish"]

    def frames(partition: str) -> tuple[np.ndarray, np.ndarray]:
        trials = store.trials_in(partition)
        x = np.concatenate([np.hstack([store.features(t, m) for m in modalities]) for t in trials])
        y = np.concatenate([store.labels(t) for t in trials])
        keep = ~np.isnan(y).any(axis=1)
        return np.hstack([x[keep], np.ones((keep.sum(), 1))]).astype(np.float64), y[keep]

    x_train, y_train = frames("Train_Set")
    x_val, y_val = frames("Validation_Set")
    oracle = oracle_for(store.manifest, modalities)["Validation_Set"]
    for e, emotion in enumerate(("valence", "arousal")):
        weights = np.linalg.lstsq(x_train, y_train[:, e], rcond=None)[0]
        fitted = x_train @ weights
        # CCC-optimal scaling of the fit: match the training labels' spread
        scale = y_train[:, e].std() / fitted.std()
        prediction = (x_val @ weights - fitted.mean()) * scale + y_train[:, e].mean()
        ccc = _ccc(prediction, y_val[:, e].astype(np.float64))
        assert 0.85 * oracle[emotion] < ccc < oracle[emotion] + 0.03, (
            emotion,
            ccc,
            oracle[emotion],
        )


def test_from_list_keeps_every_trial_of_the_list(tmp_path: Path) -> None:
    store = FeatureStore(
        make_synthetic_store(
            tmp_path / "s", SynthConfig(trial_list=VA_TRIALS, scale=0.005, visual_dim=4)
        )
    )
    with open(VA_TRIALS) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(store.trial_names) == sorted(r["trial"] for r in rows)
    by_trial = {r["trial"]: r for r in rows}
    assert all(
        store.trial_info(t).partition == by_trial[t]["partition"] for t in store.trial_names
    )
    assert store.manifest["provenance"]["scale"] == 0.005


@pytest.mark.parametrize(
    "config, message",
    [
        (SynthConfig(n_trials=3), "--trials 3: choose between 7 and 561"),
        (SynthConfig(scale=1.5), "--scale 1.5: must be in"),
        (SynthConfig(visual_dim=0), "--visual-dim 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, config: SynthConfig, message: str) -> None:
    from affvx.storage.errors import InputDataError

    with pytest.raises(InputDataError, match=message):
        make_synthetic_store(tmp_path / "s", config)
    assert not (tmp_path / "s").exists()
