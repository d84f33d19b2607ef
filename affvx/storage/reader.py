"""Reading a feature store: memory-mapped, zero-copy, checked against its manifest.

    store = FeatureStore("demo-store")
    visual, mfcc = store.window("1-30-1280x720", start=600, length=300,
                                modalities=["visual", "mfcc"])   # numpy views, no copy
    mean, std = store.normalisation(train_trials, "visual")      # from per-trial sums

Every process that opens the same store maps the same files, so the features live once in the
page cache however many workers read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affvx.storage import format as fmt
from affvx.storage.errors import DamagedStoreError, StorageError
from affvx.storage.oracle import N_MOMENTS, ORACLE_FILE, ccc_from_moments, column_name
from affvx.storage.writer import file_sha256


@dataclass(frozen=True)
class TrialInfo(fmt.TrialPlace):
    """One row of trials.parquet: where a trial lives in the store, its row number and how
    many of its frames have both labels."""

    index: int = 0
    n_labelled: int = 0


class FeatureStore:
    """A read-only feature store opened from its directory.

    Opening checks the format version, that every file exists and is a complete Arrow file,
    and that every file holds one batch per trial with the trial's frame count; any
    disagreement raises DamagedStoreError naming the file. `verify()` also compares checksums.
    Arrays returned by `features`, `window` and `label_column` are read-only views into the
    memory map; they stay valid while the store object is alive.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise StorageError(f"{self.path}: no feature store here; {_how_to_get_one(self.path)}")
        self.manifest = self._read_manifest()
        self.modalities: dict[str, int] = {
            name: int(spec["dim"]) for name, spec in self.manifest["modalities"].items()
        }
        self.trials_table = self._read_trials()
        self._index = {name: i for i, name in enumerate(self.trials_table["trial"])}
        self._batches: dict[str, list[pa.RecordBatch]] = {}
        for name in [fmt.LABELS_FILE, *(fmt.modality_file(m) for m in self.modalities)]:
            self._batches[name] = self._open_arrow(name)

    # -- opening and checking ---------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / fmt.MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise StorageError(
                f"{path}: missing; {self.path} is not a feature store (or its build was "
                "interrupted): make one with `affvx data synth` or `affvx data ingest-affwild2`"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DamagedStoreError(f"{path}: damaged ({error}); rebuild the store") from None
        if manifest.get("format") != fmt.FORMAT_NAME:
            raise DamagedStoreError(f"{path}: not an affvx feature store manifest")
        version = manifest.get("format_version")
        if version != fmt.FORMAT_VERSION:
            raise DamagedStoreError(
                f"{path}: store format version {version}, this affvx reads version "
                f"{fmt.FORMAT_VERSION}: use a matching affvx or rebuild the store"
            )
        return manifest

    def _read_trials(self) -> dict[str, np.ndarray]:
        path = self.path / fmt.TRIALS_FILE
        try:
            table = _read_parquet(path)
        except (OSError, pa.ArrowException) as error:
            raise DamagedStoreError(
                f"{path}: damaged or missing ({error}); rebuild the store"
            ) from None
        columns = {name: table.column(name).to_numpy() for name in _SCALAR_COLUMNS}
        if len(columns["trial"]) != self.manifest["n_trials"]:
            raise DamagedStoreError(
                f"{path}: {len(columns['trial'])} trials, the manifest says "
                f"{self.manifest['n_trials']}; rebuild the store"
            )
        for name in self.modalities:
            columns["padded__" + name] = table.column("padded__" + name).to_numpy()
            for prefix in ("sum__", "sumsq__"):
                values = table.column(prefix + name).combine_chunks().flatten().to_numpy()
                columns[prefix + name] = values.reshape(len(table), self.modalities[name])
        return columns

    def _open_arrow(self, name: str) -> list[pa.RecordBatch]:
        path = self.path / name
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except FileNotFoundError:
            raise DamagedStoreError(f"{path}: missing; rebuild the store") from None
        except (OSError, pa.ArrowException) as error:
            raise DamagedStoreError(
                f"{path}: damaged, not a complete Arrow file ({error}); rebuild the store"
            ) from None
        n_frames = self.trials_table["n_frames"]
        if len(batches) != len(n_frames):
            raise DamagedStoreError(
                f"{path}: {len(batches)} trials, trials.parquet lists {len(n_frames)}; "
                "rebuild the store"
            )
        for i, batch in enumerate(batches):
            if batch.num_rows != n_frames[i]:
                raise DamagedStoreError(
                    f"{path}: trial {self.trials_table['trial'][i]} has {batch.num_rows} rows, "
                    f"trials.parquet says {n_frames[i]}; rebuild the store"
                )
        return batches

    @property
    def fingerprint(self) -> str:
        """A short hash of the content of every file (fmt.manifest_fingerprint)."""
        return fmt.manifest_fingerprint(self.manifest)

    def verify(self) -> None:
        """Compare every file's size and SHA-256 with the manifest; raise on a mismatch."""
        for name, expected in self.manifest["files"].items():
            path = self.path / name
            size = path.stat().st_size
            if size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
                raise DamagedStoreError(
                    f"{path}: damaged, its content differs from the checksum in the manifest; "
                    "rebuild the store or restore the file from a copy"
                )

    # -- trials -----------------------------------------------------------------------------

    @property
    def trial_names(self) -> list[str]:
        return list(self.trials_table["trial"])

    def trial_index(self, trial: str) -> int:
        try:
            return self._index[trial]
        except KeyError:
            raise StorageError(f"{self.path}: no trial named {trial!r}") from None

    def trial_info(self, trial: str) -> TrialInfo:
        i = self.trial_index(trial)
        t = self.trials_table
        return TrialInfo(
            index=i,
            trial=str(t["trial"][i]),
            partition=str(t["partition"][i]),
            video=str(t["video"][i]),
            fps=float(t["fps"][i]),
            n_frames=int(t["n_frames"][i]),
            row_offset=int(t["row_offset"][i]),
            n_labelled=int(t["n_labelled"][i]),
        )

    def trials_in(self, partition: str) -> list[str]:
        mask = self.trials_table["partition"] == partition
        return list(self.trials_table["trial"][mask])

    def n_frames(self, trial: str) -> int:
        return int(self.trials_table["n_frames"][self.trial_index(trial)])

    # -- data -------------------------------------------------------------------------------

    def features(self, trial: str, modality: str) -> np.ndarray:
        """All rows of one trial and modality: a read-only (n_frames, dim) view."""
        return self._feature_views(modality)[self.trial_index(trial)]

    def window(
        self, trial: str, start: int, length: int, modalities: list[str]
    ) -> list[np.ndarray]:
        """Rows [start, start + length) of a trial, clipped to its end, one view per modality."""
        i = self.trial_index(trial)
        return [self._feature_views(m)[i][start : start + length] for m in modalities]

    def label_column(self, trial: str, emotion: str) -> np.ndarray:
        """One emotion's labels for a trial (float32, NaN where invalid): a read-only view."""
        if emotion not in fmt.EMOTIONS:
            raise StorageError(
                f"unknown emotion {emotion!r}: choose from {', '.join(fmt.EMOTIONS)}"
            )
        return self._label_views[emotion][self.trial_index(trial)]

    def labels(
        self, trial: str, emotions: list[str] | tuple[str, ...] = fmt.EMOTIONS
    ) -> np.ndarray:
        """Labels of a trial as an (n_frames, len(emotions)) float32 array (a copy)."""
        return np.stack([self.label_column(trial, e) for e in emotions], axis=1)

    def normalisation(self, trials: list[str], modality: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and standard deviation of `modality` over all frames of `trials`.

        Computed from the per-trial sums in trials.parquet, so no frame is read. A dimension
        that is constant over these frames gets std 1 (it is then only centred).
        """
        rows = np.array([self.trial_index(t) for t in trials], dtype=np.int64)
        count = float(self.trials_table["n_frames"][rows].sum())
        total = self.trials_table[f"sum__{modality}"][rows].sum(axis=0)
        total_sq = self.trials_table[f"sumsq__{modality}"][rows].sum(axis=0)
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        std = np.sqrt(var)
        std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def oracle_ccc(self, trials: list[str], modalities: list[str], emotion: str) -> float | None:
        """The best achievable CCC on `trials` from `modalities` (synthetic stores only)."""
        table = self._oracle_moments
        if table is None:
            return None
        order = list(self.modalities)
        ordered = sorted(modalities, key=lambda m: order.index(m) if m in order else len(order))
        column = table.get(column_name(emotion, ordered))
        if column is None:
            return None
        rows = [self._oracle_index[t] for t in trials if t in self._oracle_index]
        return ccc_from_moments(column[rows].sum(axis=0))

    @cached_property
    def _oracle_moments(self) -> dict[str, np.ndarray] | None:
        if ORACLE_FILE not in self.manifest["files"]:
            return None
        table = _read_parquet(self.path / ORACLE_FILE)
        self._oracle_index = {t: i for i, t in enumerate(table.column("trial").to_pylist())}
        return {
            name: table.column(name)
            .combine_chunks()
            .flatten()
            .to_numpy()
            .reshape(len(table), N_MOMENTS)
            for name in table.column_names
            if name != "trial"
        }

    def _feature_views(self, modality: str) -> list[np.ndarray]:
        if modality not in self.modalities:
            raise StorageError(
                f"{self.path}: no modality {modality!r}; this store has "
                f"{', '.join(self.modalities)}"
            )
        return self._all_feature_views[modality]

    @cached_property
    def _all_feature_views(self) -> dict[str, list[np.ndarray]]:
        views: dict[str, list[np.ndarray]] = {}
        for modality, dim in self.modalities.items():
            views[modality] = [
                _fixed_size_view(batch.column(0), dim)
                for batch in self._batches[fmt.modality_file(modality)]
            ]
        return views

    @cached_property
    def _label_views(self) -> dict[str, list[np.ndarray]]:
        batches = self._batches[fmt.LABELS_FILE]
        return {
            emotion: [batch.column(i).to_numpy(zero_copy_only=True) for batch in batches]
            for i, emotion in enumerate(fmt.EMOTIONS)
        }


def _how_to_get_one(path: Path) -> str:
    interrupted = sorted(path.parent.glob(f".{path.name}.previous-*"))
    if interrupted:
        return f"an interrupted `affvx data audio` left the complete store at {interrupted[0]}: rename it back"
    return "make one with `affvx data synth` or `affvx data ingest-affwild2`"


_SCALAR_COLUMNS = (
    "trial",
    "partition",
    "video",
    "fps",
    "n_frames",
    "row_offset",
    "n_labelled",
    "n_valid_valence",
    "n_valid_arousal",
)


def _read_parquet(path: Path) -> pa.Table:
    # pq.read_table goes through pyarrow.dataset, an import that costs more than reading
    # one plain file
    return pq.ParquetFile(path).read()


def _fixed_size_view(column: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    values = column.flatten().to_numpy(zero_copy_only=True)
    return values.reshape(len(column), dim)
