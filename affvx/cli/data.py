"""`affvx data ...`: make, ingest and describe feature stores."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from affvx.cli._console import note, print_json, progress_bar, stderr, stdout

app = typer.Typer(
    help="Make, ingest and describe feature stores.",
    no_args_is_help=True,
)


@app.command("synth")
def synth_command(
    store: Path = typer.Argument(..., help="Path of the new store (must not exist)."),
    trials: int = typer.Option(
        None, "--trials", help="Number of trials [default: all of --from-list, else 60]."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the generator."),
    from_list: Path = typer.Option(
        None, "--from-list", help="Trial list CSV (trial,partition,frames,fps,...)."
    ),
    scale: float = typer.Option(
        None,
        "--scale",
        help="Shrink frame counts by this factor [default: 1.0 with --from-list, else 0.1].",
    ),
    visual_dim: int = typer.Option(128, "--visual-dim", help="Width of the visual features."),
) -> None:
    """Make a synthetic Aff-Wild2-shaped corpus with a known best CCC (the oracle).

    Example: `affvx data synth my-store --trials 30 --seed 1`
    """
    from affvx.storage.synth import SynthConfig, make_synthetic_store

    config = SynthConfig(
        trial_list=from_list, n_trials=trials, scale=scale, seed=seed, visual_dim=visual_dim
    )
    with progress_bar("synthesising trials") as update:
        path = make_synthetic_store(store, config, on_trial=update)
    note(f"wrote {path}")


@app.command("info")
def info_command(
    store: Path = typer.Argument(..., help="A feature store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    verify: bool = typer.Option(False, "--verify", help="Also check every file's checksum."),
    alignment: bool = typer.Option(
        False,
        "--alignment",
        help="Also list every trial: rows read, frames, rows padded, frames re-expanded.",
    ),
) -> None:
    """Describe a store: trials and frames per partition, modalities, labels, oracle CCCs.

    Example (after `affvx data synth demo-store`): `affvx data info demo-store --json`
    """
    from affvx.cli._render_store import render_store_info
    from affvx.storage.reader import FeatureStore
    from affvx.storage.summary import describe_store

    opened = FeatureStore(store)
    if verify:
        opened.verify()
    info = describe_store(opened)
    if as_json:
        print_json(info)
    else:
        render_store_info(stdout, info, per_trial=alignment)


def _split_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_rates(values: list[str]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for value in values:
        name, _, hz = value.partition("=")
        try:
            rate = float(hz)
        except ValueError:
            rate = -1.0
        if not name or rate <= 0:
            raise typer.BadParameter(
                f"{value!r}: use MODALITY=HZ, e.g. mfcc=100", param_hint="--rate"
            )
        rates[name.strip()] = rate
    return rates


@app.command("ingest-affwild2")
def ingest_command(
    root: Path = typer.Argument(
        ..., help="Aff-Wild2 tree (annotations/, npy_data/, features/ ...)."
    ),
    store: Path = typer.Argument(..., help="Path of the new store (must not exist)."),
    modalities: str = typer.Option(None, "--modalities", help="Comma-separated subset to ingest."),
    rate: list[str] = typer.Option(
        [],
        "--rate",
        help="Native rate of a features/ modality, MODALITY=HZ (default: video rate).",
    ),
    trial_list: Path = typer.Option(
        None,
        "--trial-list",
        help="CSV with trial,partition,frames,fps (frame rates, test lengths).",
    ),
    wav_dir: Path = typer.Option(
        None, "--wav-dir", help="Folder of <video>.wav for --audio-features."
    ),
    audio_features: str = typer.Option(
        None, "--audio-features", help="Compute from audio with openSMILE: egemaps,mfcc."
    ),
    max_pad_s: float = typer.Option(
        1.0, "--max-pad-s", help="Most seconds a short feature stream may be padded at its end."
    ),
    rows: str = typer.Option(
        "auto",
        "--rows",
        help="What a row of a video-rate array is: auto (detect per trial), frames (one per "
        "video frame), labelled (one per labelled frame, as LFAN's npy_data; put back on "
        "their frames).",
    ),
) -> None:
    """Ingest Aff-Wild2 annotations and features (LFAN npy, feature folders, audio) into a store.

    Arrays with one row per labelled frame (LFAN's preprocessing drops the -5 frames) are put
    back on their frames; padding is warned about.

    Example, with your Aff-Wild2 tree in ~/aff-wild2:
    `affvx data ingest-affwild2 ~/aff-wild2 aw2-store`, then
    `affvx data info aw2-store --alignment` shows how every trial was aligned.
    """
    from affvx.storage.ingest.affwild2 import IngestOptions, ingest_affwild2

    options = IngestOptions(
        modalities=_split_names(modalities),
        rates_hz=_parse_rates(rate),
        trial_list=trial_list,
        wav_dir=wav_dir,
        audio_features=_split_names(audio_features) or (),
        max_pad_s=max_pad_s,
        rows=rows,
    )
    with progress_bar("ingesting trials") as update:
        path = ingest_affwild2(root, store, options, on_trial=update)
    note(f"wrote {path}")
    _report_alignment(path)


def _report_alignment(path: Path, modalities: list[str] | None = None) -> None:
    """Say on stderr how the new store's rows were put on their frames; padding loudly."""
    from affvx.storage.summary import ingest_warnings, re_expansion_note

    if modalities is None and (line := re_expansion_note(path)):
        note(line)
    for line in ingest_warnings(path, modalities):
        stderr.print(Text(line, style="bold yellow"), soft_wrap=True)


@app.command("audio")
def audio_command(
    wav_dir: Path = typer.Argument(
        ..., help="Folder of <video>.wav (or <partition>/<video>.wav)."
    ),
    store: Path = typer.Argument(..., help="An existing store to add the audio features to."),
    features: str = typer.Option("egemaps,mfcc", "--features", help="egemaps and/or mfcc."),
    out: Path = typer.Option(
        None, "--out", help="Write a new store here instead of replacing STORE."
    ),
    max_pad_s: float = typer.Option(
        1.0, "--max-pad-s", help="Most seconds of audio features that may be padded at the end."
    ),
) -> None:
    """Compute eGeMAPS / MFCC features from audio with openSMILE and add them to a store.

    Example (after `affvx data ingest-affwild2 ~/aff-wild2 aw2-store`):
    `affvx data audio ~/aff-wild2/wav aw2-store --features egemaps`
    """
    from affvx.storage.ingest.extend import add_audio_features

    with progress_bar("extracting audio features") as update:
        path = add_audio_features(
            store,
            wav_dir,
            list(_split_names(features) or ()),
            out=out,
            max_pad_s=max_pad_s,
            on_trial=update,
        )
    note(f"wrote {path}")
    _report_alignment(path, list(_split_names(features) or ()))
