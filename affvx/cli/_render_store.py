"""Rich rendering of `affvx data info`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_store_info(console: Console, info: dict[str, Any]) -> None:
    """Tables of partitions, modalities and (for synthetic stores) oracle CCCs."""
    fps = info["fps"]
    fps_text = f"fps {fps['min']:g}-{fps['max']:g}" if fps["min"] is not None else "fps unknown"
    console.print(
        f"[bold]{info['store']}[/bold]: {info['trials']} trials, {info['frames']:,} frames, "
        f"{info['bytes'] / 2**20:,.1f} MiB, {fps_text}"
    )
    partitions = Table(title="partitions", title_justify="left")
    for column in ("partition", "trials", "frames", "labelled frames", "valence", "arousal"):
        partitions.add_column(column, justify="left" if column == "partition" else "right")
    for name, entry in info["partitions"].items():
        coverage = entry["label_coverage"]
        partitions.add_row(
            name,
            str(entry["trials"]),
            f"{entry['frames']:,}",
            f"{entry['labelled_frames']:,}",
            f"{coverage['valence']:.1%}",
            f"{coverage['arousal']:.1%}",
        )
    console.print(partitions)
    modalities = Table(title="modalities", title_justify="left")
    for column in ("modality", "dim", "dtype", "source", "padded trials"):
        modalities.add_column(column)
    for name, spec in info["modalities"].items():
        modalities.add_row(
            name, str(spec["dim"]), spec["dtype"], spec["source"], str(spec["padded_trials"])
        )
    console.print(modalities)
    if "oracle_ccc" in info:
        oracle = Table(title="oracle CCC (all modalities)", title_justify="left")
        for column in ("partition", "valence", "arousal"):
            oracle.add_column(column)
        for partition, values in info["oracle_ccc"].items():
            oracle.add_row(partition, f"{values['valence']:.3f}", f"{values['arousal']:.3f}")
        console.print(oracle)
