"""Writing a new feature store, one trial at a time, atomically.

    with StoreWriter(path, [ModalitySpec("mfcc", 39, source="opensmile")]) as writer:
        writer.add_trial(trial="1-30-1280x720", partition="Train_Set", fps=30.0,
                         labels=labels, features={"mfcc": mfcc})

Memory stays at one trial's worth of data: each trial becomes one record batch appended to
every file. Nothing appears at `path` until the block ends without an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import affvx
from affvx.storage import format as fmt
from affvx.storage.atomic import staged_directory
from affvx.storage.errors import InputDataError, StoreExistsError

SUPPORTED_DTYPES = ("float32", "float16", "uint8")


@dataclass(frozen=True)
class ModalitySpec:
    """One feature stream of a store: its name, width, value type and where it came from.

    `rate_hz` is the stream's native rate before it was aligned to the video frame rate
    (None when the source already had one row per video frame).
    """

    name: str
    dim: int
    dtype: str = "float32"
    source: str = ""
    rate_hz: float | None = None

    def __post_init__(self) -> None:
        fmt.check_modality_name(self.name, "modality")
        if self.dim < 1:
            raise InputDataError(f"modality {self.name}: dimension must be >= 1, got {self.dim}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputDataError(
                f"modality {self.name}: dtype {self.dtype} is not supported "
                f"(choose from {', '.join(SUPPORTED_DTYPES)})"
            )


PLACE_TYPES = {
    "trial": pa.string(),
    "partition": pa.string(),
    "video": pa.string(),
    "fps": pa.float64(),
    "n_frames": pa.int64(),
    "row_offset": pa.int64(),
}


@dataclass
class _TrialRecord:
    place: fmt.TrialPlace
    n_valid: dict[str, int]
    sums: dict[str, np.ndarray] = field(repr=False)
    sumsqs: dict[str, np.ndarray] = field(repr=False)
    padded: dict[str, int]


class StoreWriter:
    """Builds a store in a hidden staging directory and renames it into place on success.

    Contract: the target must not exist (StoreExistsError); trials are added in the order they
    will be stored; every trial supplies every modality with one row per video frame and
    labels of shape (n_frames, 2) with NaN where invalid. Leaving the `with` block by an
    exception removes everything written so far.
    """

    def __init__(
        self,
        path: Path | str,
        modalities: list[ModalitySpec],
        *,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() or self.path.is_symlink():
            raise StoreExistsError(
                f"{self.path}: already exists; a store is never overwritten, choose a new path"
            )
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise InputDataError(f"modalities given twice: {', '.join(names)}")
        self.modalities = {m.name: m for m in modalities}
        self.provenance = dict(provenance or {})
        self.extra_manifest: dict[str, Any] = {}
        self._extra_files: list[str] = []
        self._records: list[_TrialRecord] = []
        self._trials_seen: dict[str, str] = {}
        self._n_rows = 0
        self._stack = contextlib.ExitStack()
        self._staging: Path | None = None
        self._writers: dict[str, pa.ipc.RecordBatchFileWriter] = {}
        self._schemas: dict[str, pa.Schema] = {}

    def __enter__(self) -> StoreWriter:
        try:
            self._staging = self._stack.enter_context(staged_directory(self.path))
        except FileExistsError:
            raise StoreExistsError(
                f"{self.path}: already exists; a store is never overwritten, choose a new path"
            ) from None
        self._open_writers()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            self._close_writers()
            if exc_type is None:
                self._finish()
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def add_trial(
        self,
        *,
        trial: str,
        partition: str,
        fps: float,
        labels: np.ndarray,
        features: dict[str, np.ndarray],
        video: str | None = None,
        padded_rows: dict[str, int] | None = None,
    ) -> None:
        """Append one trial: labels (n, 2) float32 with NaN, features {modality: (n, dim)}."""
        fmt.check_trial_name(trial, "trial")
        if trial in self._trials_seen:
            raise InputDataError(
                f"trial {trial} added twice (first in {self._trials_seen[trial]})"
            )
        if partition not in fmt.PARTITIONS:
            raise InputDataError(f"trial {trial}: unknown partition {partition!r}")
        labels = np.asarray(labels, dtype=np.float32)
        n_frames = labels.shape[0]
        if labels.shape != (n_frames, len(fmt.EMOTIONS)) or n_frames == 0:
            raise InputDataError(f"trial {trial}: labels must have shape (frames > 0, 2)")
        if set(features) != set(self.modalities):
            raise InputDataError(
                f"trial {trial}: has modalities {sorted(features)}, the store has "
                f"{sorted(self.modalities)}"
            )
        place = fmt.TrialPlace(
            trial=trial,
            partition=partition,
            video=video or fmt.video_of_trial(trial),
            fps=float(fps),
            n_frames=n_frames,
            row_offset=self._n_rows,
        )
        record = _TrialRecord(
            place=place,
            n_valid={e: int(np.isfinite(labels[:, i]).sum()) for i, e in enumerate(fmt.EMOTIONS)},
            sums={},
            sumsqs={},
            padded=dict(padded_rows or {}),
        )
        record.n_valid["both"] = int(np.isfinite(labels).all(axis=1).sum())
        for name, spec in self.modalities.items():
            values = self._checked_features(trial, spec, features[name], n_frames)
            as_f64 = values.astype(np.float64)
            record.sums[name] = as_f64.sum(axis=0)
            record.sumsqs[name] = np.einsum("ij,ij->j", as_f64, as_f64)
            self._write_fixed_size(name, values)
        self._writers[fmt.LABELS_FILE].write_batch(
            pa.record_batch(
                [pa.array(labels[:, i]) for i in range(len(fmt.EMOTIONS))],
                schema=self._schemas[fmt.LABELS_FILE],
            )
        )
        self._records.append(record)
        self._trials_seen[trial] = partition
        self._n_rows += n_frames

    @staticmethod
    def _checked_features(
        trial: str, spec: ModalitySpec, values: np.ndarray, n_frames: int
    ) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.dtype(spec.dtype))
        if values.shape != (n_frames, spec.dim):
            raise InputDataError(
                f"trial {trial}, modality {spec.name}: shape {values.shape}, expected "
                f"({n_frames}, {spec.dim})"
            )
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InputDataError(f"trial {trial}, modality {spec.name}: NaN or inf in features")
        return values

    def add_table(self, name: str, table: pa.Table) -> None:
        """Store one more Parquet file (e.g. the oracle of a synthetic store), checksummed."""
        assert self._staging is not None, "add_table() inside the with block"
        pq.write_table(table, self._staging / name)
        self._extra_files.append(name)

    def _open_writers(self) -> None:
        assert self._staging is not None
        self._schemas[fmt.LABELS_FILE] = pa.schema(
            [pa.field(e, pa.float32()) for e in fmt.EMOTIONS]
        )
        for name, spec in self.modalities.items():
            value_type = pa.from_numpy_dtype(np.dtype(spec.dtype))
            self._schemas[name] = pa.schema(
                [pa.field(name, pa.list_(value_type, spec.dim), nullable=False)]
            )
        for name, schema in self._schemas.items():
            file_name = name if name == fmt.LABELS_FILE else fmt.modality_file(name)
            self._writers[name] = pa.ipc.new_file(str(self._staging / file_name), schema)

    def _write_fixed_size(self, name: str, values: np.ndarray) -> None:
        flat = pa.array(values.reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        self._writers[name].write_batch(pa.record_batch([column], schema=self._schemas[name]))

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _finish(self) -> None:
        assert self._staging is not None
        if not self._records:
            raise InputDataError("no trials to store: the source holds no usable trial")
        pq.write_table(self._trials_table(), self._staging / fmt.TRIALS_FILE)
        manifest = self._manifest()
        (self._staging / fmt.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    def _trials_table(self) -> pa.Table:
        records = self._records
        columns: dict[str, Any] = {
            **{
                name: pa.array([getattr(r.place, name) for r in records], kind)
                for name, kind in PLACE_TYPES.items()
            },
            "n_labelled": pa.array([r.n_valid["both"] for r in records], pa.int64()),
        }
        for emotion in fmt.EMOTIONS:
            columns[f"n_valid_{emotion}"] = pa.array(
                [r.n_valid[emotion] for r in records], pa.int64()
            )
        for name, spec in self.modalities.items():
            list_type = pa.list_(pa.float64(), spec.dim)
            columns[f"sum__{name}"] = pa.array([r.sums[name] for r in records], list_type)
            columns[f"sumsq__{name}"] = pa.array([r.sumsqs[name] for r in records], list_type)
            columns[f"padded__{name}"] = pa.array(
                [r.padded.get(name, 0) for r in records], pa.int32()
            )
        return pa.table(columns)

    def _manifest(self) -> dict[str, Any]:
        assert self._staging is not None
        files = [fmt.LABELS_FILE, fmt.TRIALS_FILE, *self._extra_files] + [
            fmt.modality_file(m) for m in self.modalities
        ]
        padded = {
            name: {r.place.trial: r.padded[name] for r in self._records if r.padded.get(name, 0)}
            for name in self.modalities
        }
        return {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "affvx_version": affvx.__version__,
            "n_trials": len(self._records),
            "n_frames": self._n_rows,
            "labels": list(fmt.EMOTIONS),
            "modalities": {
                name: {k: v for k, v in asdict(spec).items() if k != "name"}
                for name, spec in self.modalities.items()
            },
            "padded_rows": {name: rows for name, rows in padded.items() if rows},
            "provenance": self.provenance,
            **self.extra_manifest,
            "files": {
                name: {
                    "bytes": (self._staging / name).stat().st_size,
                    "sha256": file_sha256(self._staging / name),
                }
                for name in files
            },
        }


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in large chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()
