"""Real audio: speech from espeak-ng, features from openSMILE, aligned to the video frames."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from affvx.storage.reader import FeatureStore

VIDEO = "5-30-640x360"


def speak(path: Path, text: str) -> float:
    """Synthesise `text` into a wav file; return its duration in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert shutil.which("espeak-ng"), "espeak-ng is missing: run scripts/system-packages.sh"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as handle:
        return handle.getnframes() / handle.getframerate()


@pytest.fixture(scope="module")
def speech_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two faces of one video (shared audio, under wav/<partition>/) and one test video."""
    root = tmp_path_factory.mktemp("speech") / "tree"
    seconds = speak(
        root / "wav" / "Train_Set" / f"{VIDEO}.wav",
        "The quick brown fox jumps over the lazy dog, twice, slowly.",
    )
    speak(root / "wav" / "6-25-320x240.wav", "A different speaker says something else entirely.")
    n_frames = int(seconds * 30) - 3
    rng = np.random.default_rng(0)
    for partition, trial in (("Train_Set", f"{VIDEO}_left"), ("Validation_Set", f"{VIDEO}_right")):
        folder = root / "annotations" / "VA_Set" / partition
        folder.mkdir(parents=True)
        rows = "".join(f"{v:.3f},{a:.3f}\n" for v, a in rng.uniform(-1, 1, (n_frames, 2)))
        (folder / f"{trial}.txt").write_text("valence,arousal\n" + rows)
    crops = root / "cropped_aligned" / "6-25-320x240"
    crops.mkdir(parents=True)
    (crops / "00050.jpg").write_bytes(b"")
    return root


def test_opensmile_features_have_one_finite_row_per_frame(
    speech_tree: Path, tmp_path: Path, cli
) -> None:
    result = cli(
        "data",
        "ingest-affwild2",
        speech_tree,
        tmp_path / "store",
        "--wav-dir",
        speech_tree / "wav",
        "--audio-features",
        "egemaps,mfcc",
    )
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(tmp_path / "store")
    assert store.modalities == {"egemaps": 23, "mfcc": 39}
    assert store.trials_in("Test_Set") == ["6-25-320x240"]
    for trial in store.trial_names:
        for modality in ("egemaps", "mfcc"):
            values = store.features(trial, modality)
            assert values.shape[0] == store.n_frames(trial)
            assert np.isfinite(values).all() and values.std(axis=0).max() > 0
    # the two faces of one video share its audio
    np.testing.assert_array_equal(
        store.features(f"{VIDEO}_left", "egemaps"), store.features(f"{VIDEO}_right", "egemaps")
    )
    # rows are openSMILE's own, taken at round(frame / fps * 100)
    from affvx.storage.ingest.audio import _make_smile

    smile = _make_smile("egemaps")
    reference = smile.process_file(
        str(speech_tree / "wav" / "Train_Set" / f"{VIDEO}.wav")
    ).to_numpy(np.float32)
    n = store.n_frames(f"{VIDEO}_left")
    rows = np.minimum(np.rint(np.arange(n) / 30.0 * 100).astype(int), len(reference) - 1)
    np.testing.assert_allclose(
        store.features(f"{VIDEO}_left", "egemaps"), reference[rows], rtol=1e-6
    )
    assert store.n_frames("6-25-320x240") == 50


def test_data_audio_adds_modalities_to_an_existing_store(
    speech_tree: Path, tmp_path: Path, cli
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(speech_tree, tree, ignore=shutil.ignore_patterns("wav"))
    (tree / "features" / "visual").mkdir(parents=True)
    store_path = tmp_path / "store"
    lengths = {}
    for trial_file in tree.glob("annotations/VA_Set/*/*.txt"):
        lengths[trial_file.stem] = len(trial_file.read_text().splitlines()) - 1
    lengths["6-25-320x240"] = 50
    for trial, n in lengths.items():
        np.save(tree / "features" / "visual" / f"{trial}.npy", np.full((n, 3), 1.5, np.float32))
    assert cli("data", "ingest-affwild2", tree, store_path).exit_code == 0
    result = cli("data", "audio", speech_tree / "wav", store_path, "--features", "egemaps")
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(store_path)
    assert store.modalities == {"visual": 3, "egemaps": 23}
    for trial, n in lengths.items():
        assert store.features(trial, "egemaps").shape == (n, 23)
        np.testing.assert_array_equal(store.features(trial, "visual"), np.full((n, 3), 1.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "tree"]
    result = cli("data", "audio", speech_tree / "wav", store_path, "--features", "egemaps")
    assert result.exit_code == 2 and "already has modality egemaps" in result.stderr


def test_missing_audio_is_named(speech_tree: Path, tmp_path: Path, cli) -> None:
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    result = cli(
        "data",
        "ingest-affwild2",
        speech_tree,
        tmp_path / "store",
        "--wav-dir",
        wav_dir,
        "--audio-features",
        "mfcc",
    )
    assert result.exit_code == 2
    assert f"no audio for video {VIDEO}" in result.stderr
    assert not (tmp_path / "store").exists()
