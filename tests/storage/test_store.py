"""The feature store: writer, reader, zero-copy windows, statistics, atomicity, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affvx.storage import format as fmt
from affvx.storage.errors import DamagedStoreError, InputDataError, StoreExistsError
from affvx.storage.reader import FeatureStore
from affvx.storage.writer import ModalitySpec, StoreWriter
from tests.conftest import leftovers


def _trial_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    labels = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    labels[: n // 5] = np.nan
    features = {
        "visual": rng.normal(3.0, 2.0, (n, 8)).astype(np.float32),
        "mfcc": rng.normal(-1.0, 0.5, (n, 5)).astype(np.float32),
    }
    return labels, features


def _write(path: Path, sizes: dict[str, tuple[str, int]]) -> dict[str, tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(0)
    written = {}
    specs = [ModalitySpec("visual", 8), ModalitySpec("mfcc", 5, rate_hz=100.0)]
    with StoreWriter(path, specs, provenance={"test": True}) as writer:
        for trial, (partition, n) in sizes.items():
            labels, features = _trial_data(rng, n)
            writer.add_trial(
                trial=trial, partition=partition, fps=30.0, labels=labels, features=features
            )
            written[trial] = (labels, features)
    return written


SIZES = {
    "a": ("Train_Set", 50),
    "b_left": ("Train_Set", 70),
    "c": ("Validation_Set", 40),
    "d": ("Test_Set", 33),
}


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    written = _write(tmp_path / "s", SIZES)
    store = FeatureStore(tmp_path / "s")
    assert store.trial_names == list(SIZES)
    assert store.modalities == {"visual": 8, "mfcc": 5}
    for trial, (labels, features) in written.items():
        assert store.trial_info(trial).partition == SIZES[trial][0]
        for name, values in features.items():
            np.testing.assert_array_equal(store.features(trial, name), values)
        np.testing.assert_array_equal(store.labels(trial), labels)
    assert store.trial_info("b_left").video == "b"
    assert store.manifest["modalities"]["mfcc"]["rate_hz"] == 100.0
    assert store.trial_info("a").n_labelled == 40


def test_window_is_a_read_only_view_into_the_memory_map(tmp_path: Path) -> None:
    written = _write(tmp_path / "s", SIZES)
    store = FeatureStore(tmp_path / "s")
    visual, mfcc = store.window("b_left", start=10, length=30, modalities=["visual", "mfcc"])
    np.testing.assert_array_equal(visual, written["b_left"][1]["visual"][10:40])
    assert not visual.flags.owndata and not visual.flags.writeable
    assert np.shares_memory(visual, store.features("b_left", "visual"))
    # a second window of the same trial reads the same memory, not a copy
    again = store.window("b_left", start=0, length=70, modalities=["visual"])[0]
    assert np.shares_memory(visual, again)
    # clipped at the end of the trial
    assert store.window("c", start=30, length=300, modalities=["mfcc"])[0].shape == (10, 5)


def test_normalisation_from_sums_equals_statistics_of_the_frames(tmp_path: Path) -> None:
    written = _write(tmp_path / "s", SIZES)
    store = FeatureStore(tmp_path / "s")
    frames = np.concatenate([written[t][1]["visual"] for t in ("a", "c")]).astype(np.float64)
    mean, std = store.normalisation(["a", "c"], "visual")
    np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-4)


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", [ModalitySpec("visual", 8)]) as writer:
            labels, features = _trial_data(np.random.default_rng(1), 10)
            writer.add_trial(
                trial="a",
                partition="Train_Set",
                fps=30.0,
                labels=labels,
                features={"visual": features["visual"]},
            )
            raise RuntimeError("interrupted")
    assert leftovers(tmp_path, "s") == []


def test_bad_trials_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels, features = _trial_data(rng, 10)
    broken = dict(features, visual=np.full((10, 8), np.nan, dtype=np.float32))
    with pytest.raises(InputDataError, match="NaN or inf"):
        with StoreWriter(
            tmp_path / "s", [ModalitySpec("visual", 8), ModalitySpec("mfcc", 5)]
        ) as w:
            w.add_trial(trial="a", partition="Train_Set", fps=30.0, labels=labels, features=broken)
    with pytest.raises(InputDataError, match="added twice"):
        with StoreWriter(
            tmp_path / "s", [ModalitySpec("visual", 8), ModalitySpec("mfcc", 5)]
        ) as w:
            w.add_trial(
                trial="a", partition="Train_Set", fps=30.0, labels=labels, features=features
            )
            w.add_trial(
                trial="a", partition="Test_Set", fps=30.0, labels=labels, features=features
            )
    with pytest.raises(InputDataError, match="not allowed"):
        with StoreWriter(
            tmp_path / "s", [ModalitySpec("visual", 8), ModalitySpec("mfcc", 5)]
        ) as w:
            w.add_trial(
                trial="../x", partition="Train_Set", fps=30.0, labels=labels, features=features
            )
    assert leftovers(tmp_path, "s") == []


def test_an_existing_path_is_never_overwritten(tmp_path: Path) -> None:
    _write(tmp_path / "s", {"a": ("Train_Set", 10)})
    before = (tmp_path / "s" / "manifest.json").read_bytes()
    with pytest.raises(StoreExistsError, match="already exists"):
        _write(tmp_path / "s", {"z": ("Train_Set", 12)})
    assert (tmp_path / "s" / "manifest.json").read_bytes() == before


def test_truncated_file_is_reported_as_damaged(tmp_path: Path) -> None:
    _write(tmp_path / "s", SIZES)
    path = tmp_path / "s" / "mfcc.arrow"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DamagedStoreError, match="mfcc.arrow: damaged"):
        FeatureStore(tmp_path / "s")


def test_verify_detects_a_flipped_byte(tmp_path: Path) -> None:
    _write(tmp_path / "s", SIZES)
    FeatureStore(tmp_path / "s").verify()
    path = tmp_path / "s" / "visual.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    store = FeatureStore(tmp_path / "s")  # the structure is intact ...
    with pytest.raises(DamagedStoreError, match="visual.arrow: damaged"):
        store.verify()  # ... but the content is not


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "s", SIZES)
    manifest_path = tmp_path / "s" / fmt.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = fmt.FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DamagedStoreError, match="format version"):
        FeatureStore(tmp_path / "s")


def test_rows_that_disagree_with_the_trial_table_are_reported(tmp_path: Path) -> None:
    _write(tmp_path / "s", {"a": ("Train_Set", 10), "b": ("Train_Set", 12)})
    _write(tmp_path / "t", {"a": ("Train_Set", 11), "b": ("Train_Set", 12)})
    (tmp_path / "s" / "labels.arrow").write_bytes((tmp_path / "t" / "labels.arrow").read_bytes())
    with pytest.raises(DamagedStoreError, match="trial a has 11 rows, trials.parquet says 10"):
        FeatureStore(tmp_path / "s")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "a b", ""])
def test_unsafe_trial_names_are_refused(name: str) -> None:
    with pytest.raises(InputDataError, match="not allowed"):
        fmt.check_trial_name(name, "here")
