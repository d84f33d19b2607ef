"""What `affvx data info` reports about a store, as plain data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from affvx.storage import format as fmt
from affvx.storage.ingest.align import ALIGNMENT_KEY, LABELLED, RATE
from affvx.storage.reader import FeatureStore

MAX_WARNING_LINES = 10


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
                **_alignment_totals(manifest.get(ALIGNMENT_KEY), name),
            }
            for name, spec in manifest["modalities"].items()
        },
        "alignment": manifest.get(ALIGNMENT_KEY),
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


def _alignment_totals(alignment: dict[str, Any] | None, modality: str) -> dict[str, Any]:
    """Per modality: trials re-expanded from labelled rows, frames filled, rows padded."""
    records = [
        t["streams"][modality] for t in (alignment or {}).values() if modality in t["streams"]
    ]
    if not records:
        return {"re_expanded_trials": None, "filled_frames": None, "padded_frames": None}
    return {
        "re_expanded_trials": sum(r["layout"] == LABELLED for r in records),
        "filled_frames": sum(r["filled"] for r in records),
        "padded_frames": sum(r["padded"] for r in records),
    }


def ingest_warnings(store: Path | str, modalities: list[str] | None = None) -> list[str]:
    """Lines that say loudly which feature streams of a new store were padded at their end.

    Padding repeats a stream's last row over frames it has no row for: right for a stream that
    merely ends early, wrong for one that lost rows in its middle, so no padding goes unsaid.
    At most MAX_WARNING_LINES trial lines follow the first; `affvx data info --alignment`
    lists all. `modalities` limits the lines to the streams written just now.
    """
    manifest = json.loads((Path(store) / fmt.MANIFEST_FILE).read_text())
    alignment = manifest.get(ALIGNMENT_KEY) or {}
    padded = [
        (trial, modality, rows)
        for modality, trials in manifest.get("padded_rows", {}).items()
        if modalities is None or modality in modalities
        for trial, rows in trials.items()
    ]
    if not padded:
        return []
    lines = [
        (
            f"warning: {len(padded)} feature stream(s) were shorter than their trial and were "
            "padded at the end by repeating their last row; check that they only end early "
            f"(affvx data info {store} --alignment lists every trial):"
        )
    ]
    for trial, modality, rows in padded[:MAX_WARNING_LINES]:
        record = alignment.get(trial, {})
        source = record.get("streams", {}).get(modality)
        detail = f"{record.get('frames', '?')} frames"
        if source:
            at_rate = " at its own rate" if source["layout"] == RATE else ""
            detail = f"{source['rows']} rows{at_rate} read for {detail}"
        lines.append(f"  {trial} {modality}: {rows} frame(s) padded ({detail})")
    if len(padded) > MAX_WARNING_LINES:
        lines.append(f"  ... and {len(padded) - MAX_WARNING_LINES} more")
    return lines


def re_expansion_note(store: Path | str) -> str | None:
    """One line saying how many trials were put back on their frames from labelled rows."""
    manifest = json.loads((Path(store) / fmt.MANIFEST_FILE).read_text())
    alignment = manifest.get(ALIGNMENT_KEY) or {}
    trials = [
        t
        for t in alignment.values()
        if any(s["layout"] == LABELLED for s in t["streams"].values())
    ]
    if not trials:
        return None
    filled = sum(max(s["filled"] for s in t["streams"].values()) for t in trials)
    return (
        f"{len(trials)} trial(s) had one row per labelled frame (LFAN's layout) and were put back "
        f"on their frames; their {filled} unlabelled frames repeat the row before them and have "
        "no label"
    )
