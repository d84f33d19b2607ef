"""Ingesting Aff-Wild2 trees: annotation layout and LFAN layout round trip exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affvx.storage.reader import FeatureStore
from tests.support.trees import write_annotation_tree, write_lfan_tree, write_trial_list


def assert_same_store(source: FeatureStore, ingested: FeatureStore) -> None:
    """Same trials, partitions, features and labels, NaN exactly where the source has them."""
    assert ingested.trial_names == source.trial_names
    assert set(ingested.modalities) == set(source.modalities)
    for trial in source.trial_names:
        assert ingested.trial_info(trial).partition == source.trial_info(trial).partition
        for modality in source.modalities:
            np.testing.assert_array_equal(
                ingested.features(trial, modality), source.features(trial, modality)
            )
        expected, got = source.labels(trial), ingested.labels(trial)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)])


def test_annotation_layout_round_trip(small_store: Path, tmp_path: Path, cli) -> None:
    source = FeatureStore(small_store)
    write_annotation_tree(source, tmp_path / "tree", rates_hz={"mfcc": 100.0, "egemaps": 100.0})
    trial_list = write_trial_list(source, tmp_path / "trials.csv")
    result = cli(
        "data",
        "ingest-affwild2",
        tmp_path / "tree",
        tmp_path / "store",
        "--rate",
        "mfcc=100",
        "--rate",
        "egemaps=100",
        "--trial-list",
        trial_list,
    )
    assert result.exit_code == 0, result.stderr
    ingested = FeatureStore(tmp_path / "store")
    assert_same_store(source, ingested)
    assert ingested.manifest["modalities"]["mfcc"]["rate_hz"] == 100.0
    assert ingested.trials_in("Test_Set") == source.trials_in("Test_Set") != []
    assert [ingested.trial_info(t).fps for t in ingested.trial_names] == [
        source.trial_info(t).fps for t in source.trial_names
    ]


def test_without_a_trial_list_known_trials_keep_their_measured_frame_rate(
    small_store: Path, tmp_path: Path, cli
) -> None:
    """10-60-1280x720 is a 30 fps video whose name says 60: the built-in list decides, so its
    100 Hz audio rows land on the right frames instead of looking twice too long."""
    source = FeatureStore(small_store)
    assert "10-60-1280x720_right" in source.trial_names
    write_annotation_tree(source, tmp_path / "tree", rates_hz={"mfcc": 100.0})
    result = cli(
        "data", "ingest-affwild2", tmp_path / "tree", tmp_path / "store", "--rate", "mfcc=100"
    )
    assert result.exit_code == 0, result.stderr
    ingested = FeatureStore(tmp_path / "store")
    assert ingested.trial_info("10-60-1280x720_right").fps == 30.0
    np.testing.assert_array_equal(
        ingested.features("10-60-1280x720_right", "mfcc"),
        source.features("10-60-1280x720_right", "mfcc"),
    )


def test_lfan_layout_round_trip(small_store: Path, tmp_path: Path, cli) -> None:
    source = FeatureStore(small_store)
    write_lfan_tree(source, tmp_path / "tree")
    result = cli("data", "ingest-affwild2", tmp_path / "tree", tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    ingested = FeatureStore(tmp_path / "store")
    assert_same_store(source, ingested)
    assert ingested.trials_in("Test_Set") == source.trials_in("Test_Set") != []


def test_minus_five_becomes_nan_and_lengths_follow_the_annotation(tmp_path: Path, cli) -> None:
    root = tmp_path / "tree"
    (root / "annotations/VA_Set/Train_Set").mkdir(parents=True)
    (root / "annotations/VA_Set/Train_Set/1-30-640x360.txt").write_text(
        "valence,arousal\n0.5,-0.25\n-5,-5\n1,-1\n-0.125,0.0\n0.25,0.25\n"
    )
    (root / "features/visual").mkdir(parents=True)
    np.save(
        root / "features/visual/1-30-640x360.npy", np.arange(6, dtype=np.float32).reshape(3, 2)
    )
    np.save(root / "features/visual/2-30-640x360.npy", np.ones((5, 2), dtype=np.float32))
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(tmp_path / "store")
    labels = store.labels("1-30-640x360")
    np.testing.assert_array_equal(labels[[0, 2, 3]], [[0.5, -0.25], [1, -1], [-0.125, 0]])
    assert np.isnan(labels[1]).all()
    # 5 annotated frames (4 labelled), 3 feature rows of a features/ stream: read as video
    # frames, the last row is repeated, the padding recorded and warned about
    np.testing.assert_array_equal(store.features("1-30-640x360", "visual")[:, 0], [0, 2, 4, 4, 4])
    assert store.manifest["padded_rows"] == {"visual": {"1-30-640x360": 2}}
    assert "1-30-640x360 visual: 2 frame(s) padded (3 rows read for 5 frames)" in result.stderr
    # the unannotated trial is a test trial; its length comes from its features
    assert store.trials_in("Test_Set") == ["2-30-640x360"]
    assert store.trial_info("2-30-640x360").fps == 30.0
    assert np.isnan(store.labels("2-30-640x360")).all() and store.n_frames("2-30-640x360") == 5


def test_modalities_option_keeps_only_the_chosen(small_store: Path, tmp_path: Path, cli) -> None:
    write_annotation_tree(
        FeatureStore(small_store), tmp_path / "tree", modalities=["visual", "vggish"]
    )
    result = cli(
        "data", "ingest-affwild2", tmp_path / "tree", tmp_path / "store", "--modalities", "vggish"
    )
    assert result.exit_code == 0, result.stderr
    assert FeatureStore(tmp_path / "store").modalities == {"vggish": 128}


@pytest.mark.parametrize("suffix", [".csv"])
def test_csv_features_with_a_header_are_read(tmp_path: Path, cli, suffix: str) -> None:
    root = tmp_path / "tree"
    (root / "annotations/VA_Set/Validation_Set").mkdir(parents=True)
    (root / "annotations/VA_Set/Validation_Set/7.txt").write_text(
        "valence,arousal\n0.1,0.2\n0.3,0.4\n"
    )
    (root / "features/au").mkdir(parents=True)
    (root / f"features/au/7{suffix}").write_text("AU01,AU02\n0.5,1.5\n2.5,3.5\n")
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(tmp_path / "store")
    np.testing.assert_array_equal(store.features("7", "au"), [[0.5, 1.5], [2.5, 3.5]])
    assert np.isnan(store.trial_info("7").fps)  # a bare number carries no frame rate
