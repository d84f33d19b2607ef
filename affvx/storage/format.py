"""The on-disk format of a feature store: names, version, and the rules names must follow.

    STORE/
      manifest.json        format version, modalities, label columns, provenance, checksums
      trials.parquet       one row per trial, with per-modality sums for normalisation
      labels.arrow         valence, arousal (float32, NaN = invalid or unlabelled)
      <modality>.arrow     one FixedSizeList<dim> column

Every .arrow file holds one record batch per trial, in the row order of trials.parquet, so a
trial's rows are one contiguous buffer that numpy can view without copying.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.storage.errors import InputDataError

FORMAT_NAME = "affvx-feature-store"
FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
TRIALS_FILE = "trials.parquet"
LABELS_FILE = "labels.arrow"


@dataclass(frozen=True)
class TrialPlace:
    """Where one trial lives in a store: the identifying columns of its trials.parquet row."""

    trial: str
    partition: str
    video: str
    fps: float
    n_frames: int
    row_offset: int


PARTITIONS = ("Train_Set", "Validation_Set", "Test_Set")
LABELLED_PARTITIONS = ("Train_Set", "Validation_Set")
EMOTIONS = ("valence", "arousal")

# Aff-Wild2 marks an unannotated or invalid frame with -5; the store keeps NaN instead.
INVALID_LABEL = -5.0

_TRIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RESERVED_MODALITIES = {"labels", "trials", "manifest"}


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    """A store's identity: a short hash of the content of every file (from the manifest's
    checksums). Two stores with the same fingerprint hold the same features and labels."""
    files = json.dumps(manifest["files"], sort_keys=True).encode()
    return hashlib.sha256(files).hexdigest()[:16]


def read_fingerprint(store: Path | str) -> str | None:
    """The fingerprint of the store at `store`, from its manifest alone (no data file is
    opened); None where there is no readable store manifest."""
    try:
        manifest = json.loads((Path(store) / MANIFEST_FILE).read_text())
        return manifest_fingerprint(manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def modality_file(modality: str) -> str:
    """The file name of a modality's features inside a store."""
    return f"{modality}.arrow"


def check_trial_name(trial: str, source: str) -> str:
    """Return `trial` if it is safe to use as a file name, else raise InputDataError.

    Trial names become file names (submissions, per-trial outputs), so a name that could leave
    its directory (`../x`, `a/b`) or hide itself (`.x`) is refused.
    """
    if not _TRIAL_NAME.fullmatch(trial) or ".." in trial:
        raise InputDataError(
            f"{source}: trial name {trial!r} is not allowed: use letters, digits and . _ + - "
            "(no path separators, no '..', not starting with '.')"
        )
    return trial


def check_modality_name(modality: str, source: str) -> str:
    """Return `modality` if it is a valid modality name, else raise InputDataError."""
    if not _MODALITY_NAME.fullmatch(modality) or modality in _RESERVED_MODALITIES:
        raise InputDataError(
            f"{source}: modality name {modality!r} is not allowed: use lower-case letters, digits "
            "and '_', starting with a letter (not 'labels', 'trials' or 'manifest')"
        )
    return modality


def video_of_trial(trial: str) -> str:
    """The video a trial belongs to: `_left` / `_right` trials share their video (and audio)."""
    for suffix in ("_left", "_right"):
        if trial.endswith(suffix):
            return trial[: -len(suffix)]
    return trial
