"""Rich rendering of `affvx data info`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_store_info(console: Console, info: dict[str, Any], *, per_trial: bool = False) -> None:
    """Tables of partitions, modalities, (for synthetic stores) oracle CCCs and, with
    `per_trial`, how every trial's streams were aligned to its frames."""
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
    columns = ("modality", "dim", "dtype", "source", "padded trials", "padded frames")
    for column in (*columns, "re-expanded trials", "filled frames"):
        modalities.add_column(column)
    for name, spec in info["modalities"].items():
        modalities.add_row(
            name,
            str(spec["dim"]),
            spec["dtype"],
            spec["source"],
            str(spec["padded_trials"]),
            _count(spec["padded_frames"]),
            _count(spec["re_expanded_trials"]),
            _count(spec["filled_frames"]),
        )
    console.print(modalities)
    if info["alignment"] is None:
        console.print(
            "alignment per trial: not recorded (a synthetic store, or one ingested before it was)"
        )
    elif per_trial:
        console.print(_alignment_table(info["alignment"]))
    else:
        console.print(f"alignment per trial: affvx data info {info['store']} --alignment")
    if "oracle_ccc" in info:
        oracle = Table(title="oracle CCC (all modalities)", title_justify="left")
        for column in ("partition", "valence", "arousal"):
            oracle.add_column(column)
        for partition, values in info["oracle_ccc"].items():
            oracle.add_row(partition, f"{values['valence']:.3f}", f"{values['arousal']:.3f}")
        console.print(oracle)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _alignment_table(alignment: dict[str, Any]) -> Table:
    """One row per trial and stream: rows read, how they were laid out, padded, filled."""
    table = Table(title="alignment per trial", title_justify="left")
    for column in ("trial", "frames", "labelled", "modality", "rows read", "rows were"):
        table.add_column(column, justify="left" if column in ("trial", "modality") else "right")
    table.add_column("padded", justify="right")
    table.add_column("re-expanded (filled)", justify="right")
    for trial, record in alignment.items():
        labelled = record.get("labelled_frames")
        for modality, stream in record["streams"].items():
            table.add_row(
                trial,
                f"{record['frames']:,}",
                "-" if labelled is None else f"{labelled:,}",
                modality,
                f"{stream['rows']:,}",
                _LAYOUT_WORDS.get(stream["layout"], stream["layout"]),
                f"{stream['padded']:,}",
                f"yes ({stream['filled']:,})" if stream["layout"] == "labelled" else "no",
            )
    return table


_LAYOUT_WORDS = {
    "frames": "video frames",
    "labelled": "labelled frames",
    "rate": "own rate",
}
