"""What `affvx data info` reports about a store, as plain data."""

from __future__ import annotations

from typing import Any

import numpy as np

from affvx.storage import format as fmt
from affvx.storage.reader import FeatureStore


def describe_store(store: FeatureStore) -> dict[str, Any]:
    """Trials and frames per partition, modalities, label coverage and the oracle (if any)."""
    table = store.trials_table
    partitions: dict[str, dict[str, Any]] = {}
    for partition in fmt.PARTITIONS:
        mask = table["partition"] == partition
        n_frames = int(table["n_frames"][mask].sum())
        entry: dict[str, Any] = {
            "trials": int(mask.sum()),
            "frames": n_frames,
            "labelled_frames": int(table["n_labelled"][mask].sum()),
        }
        entry["label_coverage"] = {
            emotion: _fraction(int(table[f"n_valid_{emotion}"][mask].sum()), n_frames)
            for emotion in fmt.EMOTIONS
        }
        partitions[partition] = entry
    manifest = store.manifest
    fps = table["fps"]
    info: dict[str, Any] = {
        "store": str(store.path),
        "format_version": manifest["format_version"],
        "created_utc": manifest.get("created_utc"),
        "trials": int(manifest["n_trials"]),
        "frames": int(manifest["n_frames"]),
        "fps": _range(fps),
        "partitions": partitions,
        "modalities": {
            name: {
                "dim": spec["dim"],
                "dtype": spec["dtype"],
                "source": spec.get("source", ""),
                "rate_hz": spec.get("rate_hz"),
                "padded_trials": len(manifest.get("padded_rows", {}).get(name, {})),
            }
            for name, spec in manifest["modalities"].items()
        },
        "bytes": sum(f["bytes"] for f in manifest["files"].values()),
        "provenance": manifest.get("provenance", {}),
    }
    if "oracle_ccc" in manifest:
        info["oracle_ccc"] = manifest["oracle_ccc"]
        info["oracle_ccc_by_modalities"] = manifest.get("oracle_ccc_by_modalities", {})
    return info


def _range(values: np.ndarray) -> dict[str, float | None]:
    known = values[np.isfinite(values)]
    if not len(known):
        return {"min": None, "max": None}
    return {"min": float(known.min()), "max": float(known.max())}


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
