"""LFAN's npy_data holds one row per LABELLED frame: ingest puts every row back on its frame.

The arrays are written as LFAN's preprocessing.py writes them (seed 002, research/seeds.md):
only frames whose annotation has both values other than -5 are kept, `frame.npy` is
(T, H, W, 3) uint8, `mfcc.npy` / `egemaps.npy` float64, `vggish.npy` float32, `label.npy`
(T, 2) float64 without -5; test trials keep every frame and have no label.npy. Every feature
row encodes the video frame it came from, so a shift by even one frame is caught.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from affvx.storage.reader import FeatureStore
from tests.conftest import leftovers

FPS = 30
# trial -> (partition, frames, unlabelled runs [start, stop))
TRIALS = {
    "1-30-640x360": ("Train_Set", 400, [(0, 20), (150, 170), (380, 400)]),  # start, middle, end
    "2-30-640x360": ("Train_Set", 300, []),  # every frame labelled
    "3-30-640x360": ("Validation_Set", 816, [(311, 317)]),  # under 1 s: used to be padded
    "4-30-640x360": ("Test_Set", 250, []),  # test: every frame kept, no labels
}
DIMS = {"mfcc": 39, "egemaps": 23, "vggish": 128}


def label_of(frame: np.ndarray) -> np.ndarray:
    """The (valence, arousal) of a frame: distinct for every frame index below 1000."""
    valence = np.round(((frame * 7) % 1000) / 1000 * 2 - 1, 3)
    arousal = np.round(((frame * 13) % 1000) / 1000 * 2 - 1, 3)
    return np.stack([valence, arousal], axis=-1)


def unlabelled_mask(trial: str) -> np.ndarray:
    _, n_frames, runs = TRIALS[trial]
    mask = np.zeros(n_frames, dtype=bool)
    for start, stop in runs:
        mask[start:stop] = True
    return mask


def encoded_rows(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Feature rows for the given video frame indices, each encoding its frame index."""
    f = frames.astype(np.float64)[:, None]
    crops = np.zeros((len(frames), 8, 8, 3), dtype=np.uint8)
    crops[:, 0, 0, 0] = frames % 256
    crops[:, 0, 0, 1] = frames // 256
    return {
        "frame": crops,
        "mfcc": f + np.arange(DIMS["mfcc"]) / 100.0,
        "egemaps": -f - np.arange(DIMS["egemaps"]) / 100.0,
        "vggish": (f * 2 + np.arange(DIMS["vggish"]) / 100.0).astype(np.float32),
    }


def decoded_frame(store: FeatureStore, trial: str) -> dict[str, np.ndarray]:
    """The frame index each stored row encodes, per modality."""
    crops = store.features(trial, "frame")
    return {
        "frame": crops[:, 0].astype(np.int64) + 256 * crops[:, 1].astype(np.int64),
        "mfcc": np.rint(store.features(trial, "mfcc")[:, 0]).astype(np.int64),
        "egemaps": np.rint(-store.features(trial, "egemaps")[:, 0]).astype(np.int64),
        "vggish": np.rint(store.features(trial, "vggish")[:, 0] / 2).astype(np.int64),
    }


def write_lfan_preprocessed(root: Path, trials: dict = TRIALS) -> Path:
    """annotations/VA_Set + cropped_aligned + npy_data + dataset_info.pkl, as LFAN leaves them."""
    partitions: dict[str, dict[str, int]] = {"Train_Set": {}, "Validation_Set": {}, "Test_Set": {}}
    for trial, (partition, n_frames, _) in trials.items():
        frames = np.arange(n_frames)
        unlabelled = unlabelled_mask(trial)
        labels = label_of(frames)
        crops = root / "cropped_aligned" / trial
        crops.mkdir(parents=True)
        (crops / f"{n_frames:05d}.jpg").write_bytes(b"")
        folder = root / "npy_data" / trial
        folder.mkdir(parents=True)
        if partition == "Test_Set":
            kept = frames
        else:
            annotation = root / "annotations" / "VA_Set" / partition / f"{trial}.txt"
            annotation.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                "-5,-5" if gap else f"{v:.3f},{a:.3f}" for (v, a), gap in zip(labels, unlabelled)
            ]
            annotation.write_text("valence,arousal\n" + "\n".join(lines) + "\n")
            kept = frames[~unlabelled]
            np.save(folder / "label.npy", labels[kept].astype(np.float64))
        for name, rows in encoded_rows(kept).items():
            np.save(folder / f"{name}.npy", rows)
        partitions[partition][trial] = len(kept)
    (root / "dataset_info.pkl").write_bytes(pickle.dumps({"partition": partitions}))
    return root


def test_every_frame_keeps_its_own_features_and_label(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr
    store = FeatureStore(tmp_path / "store")
    for trial, (partition, n_frames, _) in TRIALS.items():
        assert store.trial_info(trial).partition == partition
        assert store.n_frames(trial) == n_frames  # the video's frames, not LFAN's rows
        unlabelled = unlabelled_mask(trial)
        labelled = np.flatnonzero(~unlabelled)
        labels = store.labels(trial)
        for modality, encoded in decoded_frame(store, trial).items():
            # every labelled frame holds the features of exactly that frame ...
            np.testing.assert_array_equal(encoded[labelled], labelled, err_msg=modality)
            # ... and an unlabelled one repeats the labelled frame before it (the first
            # labelled frame for a leading run)
            previous = labelled[np.maximum(np.searchsorted(labelled, np.arange(n_frames)) - 1, 0)]
            expected = np.where(unlabelled, previous, np.arange(n_frames))
            np.testing.assert_array_equal(encoded, expected, err_msg=modality)
            if partition != "Test_Set":
                # the label stored with each frame is the label of the frame its row came from
                np.testing.assert_allclose(
                    labels[labelled], label_of(encoded[labelled]), atol=1e-6
                )
        if partition == "Test_Set":
            assert np.isnan(labels).all()
        else:
            assert np.isnan(labels[unlabelled]).all()
            assert np.isfinite(labels[~unlabelled]).all()


def test_the_alignment_is_reported_per_trial(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    assert "2 trial(s) had one row per labelled frame" in result.stderr
    assert "66 unlabelled frames" in result.stderr  # 60 + 6
    alignment = FeatureStore(tmp_path / "store").manifest["alignment"]
    assert alignment["1-30-640x360"] == {
        "frames": 400,
        "labelled_frames": 340,
        "streams": {
            m: {"rows": 340, "layout": "labelled", "padded": 0, "filled": 60}
            for m in ("egemaps", "frame", "mfcc", "vggish")
        },
    }
    assert alignment["2-30-640x360"]["streams"]["mfcc"]["layout"] == "frames"
    assert alignment["3-30-640x360"]["streams"]["vggish"] == {
        "rows": 810,
        "layout": "labelled",
        "padded": 0,
        "filled": 6,
    }
    assert alignment["4-30-640x360"]["labelled_frames"] is None

    info = cli("data", "info", tmp_path / "store", "--json")
    assert info.exit_code == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["alignment"] == alignment
    assert described["modalities"]["mfcc"]["re_expanded_trials"] == 2
    assert described["modalities"]["mfcc"]["filled_frames"] == 66
    assert described["modalities"]["mfcc"]["padded_frames"] == 0

    table = cli("data", "info", tmp_path / "store", "--alignment")
    assert table.exit_code == 0, table.stderr
    row = next(
        line for line in table.stdout.splitlines() if "3-30-640x360" in line and "mfcc" in line
    )
    for cell in ("816", "810", "labelled frames", "yes (6)"):
        assert cell in row, row


def test_features_stay_finite_and_unlabelled_frames_teach_nothing(tmp_path: Path, cli) -> None:
    from affvx.trainers.windows import Window, WindowReader

    root = write_lfan_preprocessed(tmp_path / "aw2")
    assert cli("data", "ingest-affwild2", root, tmp_path / "store").exit_code == 0
    store = FeatureStore(tmp_path / "store")
    train = store.trials_in("Train_Set")
    normalisation = {m: store.normalisation(train, m) for m in store.modalities}
    for mean, std in normalisation.values():
        assert np.isfinite(mean).all() and np.isfinite(std).all()
    reader = WindowReader(
        store,
        modalities=tuple(store.modalities),
        emotions=("valence", "arousal"),
        normalisation=normalisation,
        length=400,
        batch_size=1,
    )
    batch = reader.batch([Window("1-30-640x360", 0)])
    for values in batch.inputs.values():
        assert np.isfinite(values.numpy()).all()
    mask = batch.label_mask.numpy()[0]
    np.testing.assert_array_equal(mask[:, 0] == 0, unlabelled_mask("1-30-640x360"))


def test_old_padding_now_warns_loudly(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    # a per-frame features/ stream that merely ends 3 frames early is padded, but not silently
    (root / "features" / "au").mkdir(parents=True)
    for trial, (_, n_frames, _) in TRIALS.items():
        rows = n_frames - 3 if trial == "2-30-640x360" else n_frames
        np.save(root / "features" / "au" / f"{trial}.npy", np.ones((rows, 2), np.float32))
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    assert "warning: 1 feature stream(s) were shorter than their trial" in result.stderr
    assert "2-30-640x360 au: 3 frame(s) padded (297 rows read for 300 frames)" in result.stderr
    stored = FeatureStore(tmp_path / "store").manifest["alignment"]["2-30-640x360"]
    assert stored["streams"]["au"] == {"rows": 297, "layout": "frames", "padded": 3, "filled": 0}


def test_rows_frames_reads_rows_as_video_frames(tmp_path: Path, cli) -> None:
    trials = {"3-30-640x360": TRIALS["3-30-640x360"]}
    root = write_lfan_preprocessed(tmp_path / "aw2", trials)
    (root / "npy_data" / "3-30-640x360" / "label.npy").unlink()
    result = cli("data", "ingest-affwild2", root, tmp_path / "store", "--rows", "frames")
    assert result.exit_code == 0, result.stderr
    assert "3-30-640x360 mfcc: 6 frame(s) padded" in result.stderr


def _assert_refused(result, tmp_path: Path, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert leftovers(tmp_path, "store") == []
    assert not (tmp_path / "store").exists()


def test_an_array_of_neither_length_is_refused(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    path = root / "npy_data" / "3-30-640x360" / "mfcc.npy"
    np.save(path, np.load(path)[:-2])  # 808 rows: neither 816 frames nor 810 labelled
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    _assert_refused(
        result, tmp_path, str(path), "808 rows", "816 frames, 810 labelled", "--rows frames"
    )


def test_arrays_of_one_trial_that_disagree_are_refused(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    folder = root / "npy_data" / "1-30-640x360"
    np.save(folder / "vggish.npy", encoded_rows(np.arange(400))["vggish"])  # one per frame
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    _assert_refused(result, tmp_path, str(folder), "vggish.npy", "--rows")


def test_rows_labelled_refuses_a_per_frame_array(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    path = root / "npy_data" / "1-30-640x360" / "vggish.npy"
    np.save(path, encoded_rows(np.arange(400))["vggish"])
    result = cli("data", "ingest-affwild2", root, tmp_path / "store", "--rows", "labelled")
    _assert_refused(result, tmp_path, str(path), "400 rows", "--rows labelled needs one per")


def test_a_label_file_from_other_annotations_is_refused(tmp_path: Path, cli) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    path = root / "npy_data" / "3-30-640x360" / "label.npy"
    labels = np.load(path)
    labels[400] = [0.999, 0.999]
    np.save(path, labels)
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    _assert_refused(result, tmp_path, str(path), "row 400", "frame 406", "other annotations")


def test_labelled_rows_without_their_annotation_are_refused(tmp_path: Path, cli) -> None:
    trials = {"1-30-640x360": TRIALS["1-30-640x360"]}
    root = write_lfan_preprocessed(tmp_path / "aw2", trials)
    (root / "annotations/VA_Set/Train_Set/1-30-640x360.txt").unlink()
    trial_list = tmp_path / "trials.csv"
    trial_list.write_text(
        "trial,partition,video,frames,fps,labelled_frames\n"
        "1-30-640x360,Train_Set,1-30-640x360,400,30.0,340\n"
    )
    args = ("data", "ingest-affwild2", root, tmp_path / "store", "--trial-list", trial_list)
    result = cli(*args)
    _assert_refused(result, tmp_path, "label.npy", "340 rows without -5", "--rows frames")
    assert cli(*args, "--rows", "frames").exit_code == 0


@pytest.mark.parametrize("value", ["video", ""])
def test_an_unknown_rows_choice_is_one_line(tmp_path: Path, cli, value: str) -> None:
    root = write_lfan_preprocessed(tmp_path / "aw2")
    result = cli("data", "ingest-affwild2", root, tmp_path / "store", "--rows", value)
    _assert_refused(result, tmp_path, "--rows", "auto, frames, labelled")


def test_under_a_second_unlabelled_is_not_padded_and_shifted(tmp_path: Path, cli) -> None:
    # 6 unlabelled frames (0.2 s) at 311: within --max-pad-s, so this used to ingest silently
    # with every frame from 311 on holding the features of the frame 6 later
    trials = {"3-30-640x360": TRIALS["3-30-640x360"]}
    root = write_lfan_preprocessed(tmp_path / "aw2", trials)
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(tmp_path / "store")
    labelled = np.flatnonzero(~unlabelled_mask("3-30-640x360"))
    for modality, encoded in decoded_frame(store, "3-30-640x360").items():
        np.testing.assert_array_equal(encoded[labelled], labelled, err_msg=modality)
    assert store.manifest["padded_rows"] == {}
