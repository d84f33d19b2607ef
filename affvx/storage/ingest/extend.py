"""Adding audio-feature modalities to an existing store (`affvx data audio`).

A store is never modified in place: the extended store is written complete under a new name
and then swapped in (old -> `.STORE.previous-<pid>`, new -> STORE, old removed). A crash
between the two renames leaves the complete old store under the hidden name, which the error
for a missing store points to.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from affvx.storage import format as fmt
from affvx.storage.atomic import fsync_path
from affvx.storage.errors import InputDataError, StoreExistsError
from affvx.storage.ingest.align import ALIGNMENT_KEY, RATE, align_to_frames, stream_record
from affvx.storage.ingest.audio import (
    AUDIO_RATE_HZ,
    AudioExtractor,
    AudioFeature,
    check_audio_features,
    find_wav,
)
from affvx.storage.reader import FeatureStore
from affvx.storage.writer import ModalitySpec, StoreWriter

CARRIED_MANIFEST_KEYS = ("oracle_ccc", "oracle_ccc_by_modalities")


def add_audio_features(
    store_path: Path | str,
    wav_dir: Path | str,
    features: list[str],
    *,
    out: Path | str | None = None,
    max_pad_s: float = 1.0,
    on_trial: Callable[[int, int], None] | None = None,
) -> Path:
    """Compute openSMILE features from `wav_dir` for every trial of a store.

    Writes the extended store to `out`, or replaces `store_path` when `out` is None.
    """
    store_path, wav_dir = Path(store_path), Path(wav_dir)
    if not wav_dir.is_dir():
        raise InputDataError(f"{wav_dir}: not a directory of wav files")
    audio = check_audio_features(features)
    if out is not None and Path(out).exists():
        raise StoreExistsError(f"{out}: already exists; choose a new path for --out")
    store = FeatureStore(store_path)
    taken = [f.name for f in audio if f.name in store.modalities]
    if taken:
        raise InputDataError(
            f"{store_path}: already has modality {taken[0]}; write the audio features into a "
            "store without it"
        )
    target = (
        Path(out)
        if out is not None
        else store_path.with_name(f".{store_path.name}.replacement-{os.getpid()}")
    )
    _write_extended(store, target, wav_dir, audio, max_pad_s, on_trial)
    del store
    if out is None:
        _swap(target, store_path)
        return store_path
    return target


def _write_extended(
    store: FeatureStore,
    target: Path,
    wav_dir: Path,
    audio: list[AudioFeature],
    max_pad_s: float,
    on_trial: Callable[[int, int], None] | None,
) -> None:
    old_specs = [
        ModalitySpec(
            name, int(spec["dim"]), spec["dtype"], spec.get("source", ""), spec.get("rate_hz")
        )
        for name, spec in store.manifest["modalities"].items()
    ]
    new_specs = [
        ModalitySpec(f.name, f.dim, source=f.description, rate_hz=AUDIO_RATE_HZ) for f in audio
    ]
    provenance = dict(store.manifest.get("provenance", {}))
    provenance["audio_features"] = {
        "wav_dir": str(wav_dir.resolve()),
        "features": [f.name for f in audio],
    }
    extractor = AudioExtractor(audio)
    names = store.trial_names
    alignment = copy.deepcopy(store.manifest.get(ALIGNMENT_KEY, {}))
    with StoreWriter(target, old_specs + new_specs, provenance=provenance) as writer:
        writer.extra_manifest = {
            k: store.manifest[k] for k in CARRIED_MANIFEST_KEYS if k in store.manifest
        }
        writer.extra_manifest[ALIGNMENT_KEY] = alignment
        for done, trial in enumerate(names, start=1):
            info = store.trial_info(trial)
            features = {spec.name: store.features(trial, spec.name) for spec in old_specs}
            padded = {
                spec.name: int(store.trials_table[f"padded__{spec.name}"][info.index])
                for spec in old_specs
            }
            computed = extractor.extract(find_wav(wav_dir, fmt.video_of_trial(trial)))
            for spec in new_specs:
                features[spec.name], padded[spec.name] = align_to_frames(
                    computed[spec.name],
                    n_frames=info.n_frames,
                    fps=info.fps,
                    rate_hz=AUDIO_RATE_HZ,
                    max_pad_s=max_pad_s,
                    source=f"{wav_dir}: audio of {trial} ({spec.name})",
                )
                record = alignment.setdefault(
                    trial,
                    {"frames": info.n_frames, "labelled_frames": info.n_labelled, "streams": {}},
                )
                record["streams"][spec.name] = stream_record(
                    len(computed[spec.name]), RATE, padded[spec.name], 0
                )
            writer.add_trial(
                trial=trial,
                partition=info.partition,
                video=info.video,
                fps=info.fps,
                labels=store.labels(trial),
                features=features,
                padded_rows=padded,
            )
            if on_trial:
                on_trial(done, len(names))


def _swap(new: Path, current: Path) -> None:
    previous = current.with_name(f".{current.name}.previous-{os.getpid()}")
    os.rename(current, previous)
    os.rename(new, current)
    fsync_path(current.parent)
    shutil.rmtree(previous)
