"""Ingesting an Aff-Wild2 tree into a feature store.

What ROOT may hold (any mix; every modality must cover every trial):

    annotations/VA_Set/{Train_Set,Validation_Set}/<trial>.txt   labels and partitions
    npy_data/<trial>/<modality>.npy (+ label.npy)               seed 002 (LFAN) arrays, one
                                                                 row per video frame or per
                                                                 labelled frame (rows.py)
    features/<modality>/<trial>.npy | .csv                       any feature, at the video
                                                                 rate or a declared rate
    cropped_aligned/<trial>/                                     marks test trials
    dataset_info.pkl                                             LFAN partitions
    wav/[<partition>/]<video>.wav                                audio, with --audio-features

Trials without an annotation file are test trials. A trial's length is its annotation's line
count (after the header); failing that the LFAN label array, the trial list's frame count, the
last face crop, or the longest video-rate feature. Frame rates come from --trial-list, else
the built-in Aff-Wild2 list, else the nominal rate in names like `3-25-1920x1080`. Arrays with one row per labelled frame
(LFAN's preprocessing) are put back on their frames, and how every stream of every trial became
its frames is recorded in the manifest (`alignment`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affvx.storage import format as fmt
from affvx.storage.errors import InputDataError
from affvx.storage.ingest.align import (
    ALIGNMENT_KEY,
    FRAMES,
    LABELLED,
    RATE,
    align_to_frames,
    expand_labelled_rows,
    stream_record,
)
from affvx.storage.ingest.audio import (
    AUDIO_FEATURES,
    AUDIO_RATE_HZ,
    AudioExtractor,
    check_audio_features,
    find_wav,
)
from affvx.storage.ingest.rows import ROW_CHOICES, StreamRows, TrialFrames, decide_row_layouts
from affvx.storage.ingest.sources import (
    read_annotation,
    read_feature_file,
    read_label_array,
    read_partition_pickle,
)
from affvx.storage.triallist import TrialRow, builtin_trial_list, read_trial_list
from affvx.storage.writer import ModalitySpec, StoreWriter

ANNOTATION_DIRS = (
    "annotations/VA_Set",
    "Annotations/VA_Set",
    "VA_Set",
    "annotations/VA_Estimation_Challenge",
)
LABEL_FILES = ("label.npy", "continuous_label.npy")
_NOMINAL_FPS = re.compile(r"^\d+-(\d+(?:\.\d+)?)-\d+x\d+")


@dataclass(frozen=True)
class IngestOptions:
    """Choices of `affvx data ingest-affwild2` beyond ROOT and STORE.

    `rows` says what a row of a video-rate array stands for: "auto", "frames" or "labelled"
    (see rows.py).
    """

    modalities: tuple[str, ...] | None = None
    rates_hz: dict[str, float] = field(default_factory=dict)
    trial_list: Path | None = None
    wav_dir: Path | None = None
    audio_features: tuple[str, ...] = ()
    max_pad_s: float = 1.0
    rows: str = "auto"


@dataclass
class _SourceTrial:
    trial: str
    partition: str | None = None
    partition_source: str = ""
    annotation: Path | None = None
    label_file: Path | None = None
    features: dict[str, Path] = field(default_factory=dict)
    crop_dir: Path | None = None


@dataclass
class _Modality:
    name: str
    source: str
    rate_hz: float | None
    audio: bool = False


def ingest_affwild2(
    root: Path | str,
    store: Path | str,
    options: IngestOptions = IngestOptions(),
    *,
    on_trial: Callable[[int, int], None] | None = None,
) -> Path:
    """Read an Aff-Wild2 tree under `root` and write a new store at `store`."""
    root = Path(root)
    if options.rows not in ROW_CHOICES:
        raise InputDataError(
            f"--rows {options.rows}: choose {', '.join(ROW_CHOICES)} (what a row of a video-rate "
            "array stands for)"
        )
    if not root.is_dir():
        raise InputDataError(f"{root}: not a directory")
    trial_list = (
        {r.trial: r for r in read_trial_list(options.trial_list)} if options.trial_list else {}
    )
    trials = _discover(root, trial_list)
    modalities = _choose_modalities(root, trials, options)
    ordered = sorted(
        trials.values(),
        key=lambda t: (fmt.PARTITIONS.index(t.partition or "Test_Set"), t.trial + ".txt"),
    )
    audio_features = check_audio_features([m.name for m in modalities if m.audio])
    extractor = AudioExtractor(audio_features) if audio_features else None
    specs = [
        ModalitySpec(m.name, _feature_dim(ordered[0], m), source=m.source, rate_hz=m.rate_hz)
        for m in modalities
    ]
    provenance = {
        "ingest": "affwild2",
        "root": str(root.resolve()),
        "trial_list": str(options.trial_list) if options.trial_list else None,
        "wav_dir": str(options.wav_dir) if options.wav_dir else None,
        "max_pad_s": options.max_pad_s,
        "rows": options.rows,
    }
    alignment: dict[str, Any] = {}
    with StoreWriter(store, specs, provenance=provenance) as writer:
        writer.extra_manifest = {ALIGNMENT_KEY: alignment}
        for done, source in enumerate(ordered, start=1):
            alignment[source.trial] = _write_trial(
                writer, source, modalities, specs, trial_list, extractor, options
            )
            if on_trial:
                on_trial(done, len(ordered))
    return Path(store)


# -- discovery ---------------------------------------------------------------------------------


def _discover(root: Path, trial_list: dict[str, TrialRow]) -> dict[str, _SourceTrial]:
    trials: dict[str, _SourceTrial] = {}

    def get(name: str, where: Path) -> _SourceTrial:
        fmt.check_trial_name(name, str(where))
        return trials.setdefault(name, _SourceTrial(name))

    annotation_root = next((root / d for d in ANNOTATION_DIRS if (root / d).is_dir()), None)
    if annotation_root is not None:
        for partition in fmt.LABELLED_PARTITIONS:
            for path in sorted((annotation_root / partition).glob("*.txt")):
                trial = get(path.stem, path)
                if trial.annotation is not None:
                    raise InputDataError(
                        f"{path}: trial {path.stem} is in both {trial.partition} "
                        f"({trial.annotation}) and {partition}; a trial belongs to one partition"
                    )
                trial.annotation = path
                _set_partition(trial, partition, str(path))
    npy_root = root / "npy_data"
    if npy_root.is_dir():
        for trial_dir in sorted(p for p in npy_root.iterdir() if p.is_dir()):
            trial = get(trial_dir.name, trial_dir)
            for path in sorted(trial_dir.glob("*.npy")):
                if path.name in LABEL_FILES:
                    trial.label_file = path
                else:
                    _add_feature(trial, fmt.check_modality_name(path.stem, str(path)), path)
    features_root = root / "features"
    if features_root.is_dir():
        for modality_dir in sorted(p for p in features_root.iterdir() if p.is_dir()):
            modality = fmt.check_modality_name(modality_dir.name, str(modality_dir))
            for path in sorted(modality_dir.iterdir()):
                if path.suffix in (".npy", ".csv"):
                    _add_feature(get(path.stem, path), modality, path)
    crops_root = root / "cropped_aligned"
    if crops_root.is_dir():
        for crop_dir in sorted(p for p in crops_root.iterdir() if p.is_dir()):
            get(crop_dir.name, crop_dir).crop_dir = crop_dir
    pickle_path = root / "dataset_info.pkl"
    if pickle_path.is_file():
        for name, partition in read_partition_pickle(pickle_path).items():
            if name in trials:
                _set_partition(trials[name], partition, str(pickle_path))
    for name, trial in trials.items():
        if name in trial_list:
            _set_partition(trial, trial_list[name].partition, "the trial list")
        if trial.partition is None:
            trial.partition = "Test_Set"
        if trial.partition != "Test_Set" and trial.annotation is None and trial.label_file is None:
            raise InputDataError(
                f"{root}: trial {name} is in {trial.partition} ({trial.partition_source}) "
                "but has no annotation file or label array"
            )
    if not trials:
        raise InputDataError(
            f"{root}: no trials found; expected annotations/VA_Set/<partition>/<trial>.txt, "
            "npy_data/<trial>/ or features/<modality>/<trial>.npy"
        )
    return trials


def _set_partition(trial: _SourceTrial, partition: str, source: str) -> None:
    if trial.partition is not None and trial.partition != partition:
        raise InputDataError(
            f"{source}: trial {trial.trial} is in {partition}, but {trial.partition_source} "
            f"puts it in {trial.partition}; a trial belongs to one partition"
        )
    if trial.partition is None:
        trial.partition, trial.partition_source = partition, source


def _add_feature(trial: _SourceTrial, modality: str, path: Path) -> None:
    if modality in trial.features:
        raise InputDataError(
            f"{path}: duplicate trial {trial.trial} for modality {modality} "
            f"(also {trial.features[modality]}); keep one file per trial and modality"
        )
    trial.features[modality] = path


def _choose_modalities(
    root: Path, trials: dict[str, _SourceTrial], options: IngestOptions
) -> list[_Modality]:
    found: dict[str, _Modality] = {}
    for trial in trials.values():
        for modality, path in trial.features.items():
            if modality not in found:
                layout = (
                    "npy_data" if path.parent.parent.name == "npy_data" else f"features/{modality}"
                )
                found[modality] = _Modality(modality, layout, options.rates_hz.get(modality))
    if options.audio_features:
        if options.wav_dir is None:
            raise InputDataError(
                "--audio-features needs --wav-dir (the folder of <video>.wav files)"
            )
        for feature in check_audio_features(options.audio_features):
            if feature.name in found:
                raise InputDataError(
                    f"{root}: modality {feature.name} exists in the tree and would also be "
                    "computed from audio; drop one of them"
                )
            found[feature.name] = _Modality(
                feature.name, feature.description, AUDIO_RATE_HZ, audio=True
            )
    for name in options.rates_hz:
        if name not in found:
            raise InputDataError(f"--rate {name}=...: no modality {name} under {root}")
    if options.modalities is not None:
        for name in options.modalities:
            if name not in found:
                raise InputDataError(
                    f"unknown modality {name!r}: {root} has {', '.join(found) or 'no features'}"
                )
        chosen = [found[name] for name in options.modalities]
    else:
        chosen = list(found.values())
    if not chosen:
        raise InputDataError(
            f"{root}: no features found; expected features/<modality>/<trial>.npy, "
            "npy_data/<trial>/<modality>.npy, or --wav-dir with --audio-features"
        )
    for modality in chosen:
        if modality.audio:
            continue
        for trial in trials.values():
            if modality.name not in trial.features:
                raise InputDataError(
                    f"{root / modality.source}: no {modality.name} file for trial {trial.trial}; "
                    f"add it, or leave {modality.name} out with --modalities"
                )
    return chosen


# -- writing -----------------------------------------------------------------------------------


def _feature_dim(trial: _SourceTrial, modality: _Modality) -> int:
    if modality.audio:
        return AUDIO_FEATURES[modality.name].dim
    return read_feature_file(trial.features[modality.name]).shape[1]


def _write_trial(
    writer: StoreWriter,
    source: _SourceTrial,
    modalities: list[_Modality],
    specs: list[ModalitySpec],
    trial_list: dict[str, TrialRow],
    extractor: AudioExtractor | None,
    options: IngestOptions,
) -> dict[str, Any]:
    """Align every modality of one trial to its frames, add it; return its alignment record."""
    labels = _labels(source, trial_list, options)
    n_frames = (
        labels.shape[0]
        if labels is not None
        else _unlabelled_length(source, modalities, trial_list)
    )
    labelled_frames = int(np.isfinite(labels).all(axis=1).sum()) if labels is not None else None
    if labels is None:
        labels = np.full((n_frames, 2), np.nan, dtype=np.float32)
    fps = _frame_rate(source.trial, trial_list)
    raw = _read_streams(source, modalities, specs, extractor, options)
    layouts = _row_layouts(source, labels, modalities, raw, options)
    features: dict[str, np.ndarray] = {}
    streams: dict[str, dict[str, Any]] = {}
    for modality in modalities:
        values, where = raw[modality.name]
        layout = layouts.get(modality.name, RATE if modality.rate_hz else FRAMES)
        padded = filled = 0
        if layout == LABELLED:
            features[modality.name], filled = expand_labelled_rows(
                values, np.isfinite(labels).all(axis=1)
            )
        else:
            features[modality.name], padded = align_to_frames(
                values,
                n_frames=n_frames,
                fps=fps,
                rate_hz=modality.rate_hz,
                max_pad_s=options.max_pad_s,
                source=where,
            )
        streams[modality.name] = stream_record(values.shape[0], layout, padded, filled)
    writer.add_trial(
        trial=source.trial,
        partition=source.partition or "Test_Set",
        fps=fps if fps else float("nan"),
        labels=labels,
        features=features,
        padded_rows={name: record["padded"] for name, record in streams.items()},
    )
    return {"frames": n_frames, "labelled_frames": labelled_frames, "streams": streams}


def _read_streams(
    source: _SourceTrial,
    modalities: list[_Modality],
    specs: list[ModalitySpec],
    extractor: AudioExtractor | None,
    options: IngestOptions,
) -> dict[str, tuple[np.ndarray, str]]:
    """{modality: (rows as read, where they came from)} for one trial."""
    audio = None
    if extractor is not None:
        assert options.wav_dir is not None
        audio = extractor.extract(find_wav(options.wav_dir, fmt.video_of_trial(source.trial)))
    raw: dict[str, tuple[np.ndarray, str]] = {}
    for modality, spec in zip(modalities, specs):
        if modality.audio:
            assert audio is not None
            where = f"{options.wav_dir}: audio of {source.trial} ({modality.name})"
            raw[modality.name] = (audio[modality.name], where)
            continue
        path = source.features[modality.name]
        values = read_feature_file(path)
        if values.shape[1] != spec.dim:
            raise InputDataError(
                f"{path}: {values.shape[1]} values per row, but {modality.name} has "
                f"{spec.dim} (from the first trial); every trial of a modality needs the same "
                "dimension"
            )
        raw[modality.name] = (values, str(path))
    return raw


def _row_layouts(
    source: _SourceTrial,
    labels: np.ndarray,
    modalities: list[_Modality],
    raw: dict[str, tuple[np.ndarray, str]],
    options: IngestOptions,
) -> dict[str, str]:
    """FRAMES or LABELLED for each video-rate stream of an annotated trial (see rows.py)."""
    if source.annotation is None:
        return {}
    streams = [
        StreamRows(
            m.name,
            source.features[m.name],
            raw[m.name][0].shape[0],
            lfan=m.source == "npy_data",
        )
        for m in modalities
        if not m.audio and m.rate_hz is None
    ]
    label_array = None
    if source.label_file is not None:
        label_array = (source.label_file, read_label_array(source.label_file))
    return decide_row_layouts(
        options.rows, TrialFrames(source.trial, labels), streams, label_array
    )


def _labels(
    source: _SourceTrial, trial_list: dict[str, TrialRow], options: IngestOptions
) -> np.ndarray | None:
    if source.annotation is not None:
        return read_annotation(source.annotation)
    if source.label_file is None:
        return None
    labels = read_label_array(source.label_file)
    listed = trial_list.get(source.trial)
    lost_frames = (
        listed is not None and listed.frames != len(labels) and bool(np.isfinite(labels).all())
    )
    if lost_frames and options.rows != FRAMES:
        assert listed is not None
        raise InputDataError(
            f"{source.label_file}: {len(labels)} rows without -5, but the trial list gives "
            f"trial {source.trial} {listed.frames} frames: these are LFAN's labelled rows, "
            "which cannot be put back on their frames without the annotation; add its "
            "annotation file, or pass --rows frames to store them as consecutive frames"
        )
    return labels


def _unlabelled_length(
    source: _SourceTrial, modalities: list[_Modality], trial_list: dict[str, TrialRow]
) -> int:
    if source.trial in trial_list:
        return trial_list[source.trial].frames
    if source.crop_dir is not None:
        indices = [int(p.stem) for p in source.crop_dir.glob("*.jpg") if p.stem.isdigit()]
        if indices:
            return max(indices)
    video_rate = [m for m in modalities if not m.audio and m.rate_hz is None]
    if video_rate:
        return max(read_feature_file(source.features[m.name]).shape[0] for m in video_rate)
    raise InputDataError(
        f"trial {source.trial}: cannot tell how many frames it has; pass --trial-list with a "
        "frames column"
    )


def _frame_rate(trial: str, trial_list: dict[str, TrialRow]) -> float | None:
    """The trial's frame rate: the given trial list's, else the built-in Aff-Wild2 list's, else
    the rate its name suggests (`<id>-<fps>-<w>x<h>`).

    The built-in list comes before the name because the names mislead: 68 of the 158 named
    that way differ from the measured rate (10-60-1280x720 is a 30 fps video), and audio rows
    are put on frames by this rate.
    """
    if trial in trial_list:
        return trial_list[trial].fps
    if trial in _builtin_rates():
        return _builtin_rates()[trial]
    match = _NOMINAL_FPS.match(trial)
    return float(match.group(1)) if match else None


@functools.cache
def _builtin_rates() -> dict[str, float]:
    return {row.trial: row.fps for row in read_trial_list(builtin_trial_list())}
