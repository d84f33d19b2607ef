"""Writing Aff-Wild2 source trees from a store, so that ingestion can be checked round trip."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from affvx.storage.reader import FeatureStore


def write_trial_list(store: FeatureStore, path: Path) -> Path:
    """A trial list (the va_trials.csv format) describing every trial of `store`."""
    lines = ["trial,partition,video,frames,fps,labelled_frames"]
    for trial in store.trial_names:
        info = store.trial_info(trial)
        lines.append(
            f"{trial},{info.partition},{info.video},{info.n_frames},{info.fps!r},{info.n_labelled}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def annotation_text(labels: np.ndarray) -> str:
    """An annotation file's text: header, one `v,a` line per frame, -5 where NaN."""
    rows = ["valence,arousal"]
    for valence, arousal in labels:
        rows.append(f"{_label(valence)},{_label(arousal)}")
    return "\n".join(rows) + "\n"


def _label(value: float) -> str:
    return "-5" if np.isnan(value) else repr(float(value))


def write_annotation_tree(
    store: FeatureStore,
    root: Path,
    *,
    modalities: list[str] | None = None,
    rates_hz: dict[str, float] | None = None,
) -> Path:
    """annotations/VA_Set/<partition>/<trial>.txt + features/<modality>/<trial>.npy.

    Test trials get features and a cropped_aligned/<trial>/ folder whose last crop numbers
    the trial's frames. A modality in `rates_hz` is written at that rate, sampled so that
    aligning it back to the video frames gives the store's rows exactly.
    """
    rates_hz = rates_hz or {}
    for trial in store.trial_names:
        info = store.trial_info(trial)
        if info.partition == "Test_Set":
            crops = root / "cropped_aligned" / trial
            crops.mkdir(parents=True, exist_ok=True)
            (crops / f"{info.n_frames:05d}.jpg").write_bytes(b"")
        else:
            folder = root / "annotations" / "VA_Set" / info.partition
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{trial}.txt").write_text(annotation_text(store.labels(trial)))
        for modality in modalities or list(store.modalities):
            folder = root / "features" / modality
            folder.mkdir(parents=True, exist_ok=True)
            values = store.features(trial, modality)
            if modality in rates_hz:
                values = resample_to_rate(values, info.fps, rates_hz[modality])
            np.save(folder / f"{trial}.npy", values)
    return root


def resample_to_rate(values: np.ndarray, fps: float, rate_hz: float) -> np.ndarray:
    """A stream at `rate_hz` (> fps) whose nearest-row alignment gives back `values`."""
    n_rows = int(np.rint((len(values) - 1) / fps * rate_hz)) + 1
    frame = np.minimum(np.rint(np.arange(n_rows) * fps / rate_hz).astype(int), len(values) - 1)
    return np.ascontiguousarray(values[frame])


def write_lfan_tree(store: FeatureStore, root: Path) -> Path:
    """npy_data/<trial>/<modality>.npy (+ label.npy with -5) and dataset_info.pkl."""
    partitions: dict[str, dict[str, int]] = {
        "Train_Set": {},
        "Validation_Set": {},
        "Target_Set": {},
    }
    for trial in store.trial_names:
        info = store.trial_info(trial)
        folder = root / "npy_data" / trial
        folder.mkdir(parents=True, exist_ok=True)
        for modality in store.modalities:
            np.save(folder / f"{modality}.npy", store.features(trial, modality))
        key = "Target_Set" if info.partition == "Test_Set" else info.partition
        partitions[key][trial] = info.n_frames
        if info.partition != "Test_Set":
            labels = store.labels(trial)
            np.save(folder / "label.npy", np.where(np.isnan(labels), -5.0, labels))
    (root / "dataset_info.pkl").write_bytes(pickle.dumps({"partition": partitions}))
    return root
