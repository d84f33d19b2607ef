"""`affvx train`: one job in the foreground with a progress bar per epoch."""

from __future__ import annotations

from pathlib import Path

import typer

from affvx.cli._console import note, stdout
from affvx.protocol import EXIT_REQUEUE


def train_command(
    store: Path = typer.Argument(..., help="A feature store directory."),
    fold: int = typer.Option(
        ..., "--fold", help="Fold index (0 = the official split under abaw2)."
    ),
    emotion: str = typer.Option(..., "--emotion", help="valence, arousal or both (multi-task)."),
    modalities: str = typer.Option(..., "--modalities", help="Comma-separated, e.g. visual,mfcc."),
    out: Path = typer.Option(
        ..., "--out", help="Job directory (checkpoint, metrics, predictions)."
    ),
    model: str = typer.Option("lfan", "--model", help="lfan, tcn or gru (as `affvx launch`)."),
    epochs: int = typer.Option(30, "--epochs", help="Maximum number of epochs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    cuda_graphs: str = typer.Option(
        "auto",
        "--cuda-graphs",
        help="Capture the training step as one CUDA graph: auto (on CUDA, falling back to "
        "eager steps if capture fails), on, or off. Changes speed, not the job's hash.",
    ),
    protocol: str = typer.Option("abaw2", "--protocol", help="abaw2 or kfold."),
    n_folds: int = typer.Option(6, "--folds", help="Number of folds of the protocol."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (AdamW) [default: 3e-4]."),
    time_limit: str = typer.Option(
        None,
        "--time-limit",
        help="How long this run may take, e.g. 90s, 45m, 2h (a plain number is minutes, as for "
        "`affvx launch`); it checkpoints and stops before.",
    ),
) -> None:
    """Train one job (fold x emotion x modality set) in the foreground.

    Stopped (Ctrl-C, SIGTERM, --time-limit), it checkpoints and exits with status 75; the same
    command resumes it. Example (after `affvx data synth demo-store`): `affvx train demo-store
    --fold 0 --emotion valence --modalities visual,mfcc --out runs/one --epochs 2`
    """
    from rich.table import Table

    from affvx.cli._train_view import EpochProgress
    from affvx.orchestrator.config import parse_duration_min
    from affvx.orchestrator.train import single_job_spec, train_one

    time_limit_s = None if time_limit is None else parse_duration_min(time_limit) * 60

    settings = {"lr": lr} if lr is not None else {}
    spec = single_job_spec(
        store,
        fold=fold,
        emotion=emotion,
        modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
        model=model,
        protocol=protocol,
        n_folds=n_folds,
        max_epochs=epochs,
        device=device,
        cuda_graphs=cuda_graphs,
        seed=seed,
        time_limit_s=time_limit_s,
        **settings,
    )
    with EpochProgress() as observer:
        outcome = train_one(spec, out, observer=observer)
    if outcome.result is None:
        note(f"stopped after a checkpoint in {out}; run the same command to resume")
        raise typer.Exit(EXIT_REQUEUE)
    result = outcome.result
    table = Table(
        title=f"{out}: fold {result['fold']}, {result['model']} on {'+'.join(result['modalities'])}",
        title_justify="left",
    )
    for column in ("emotion", "val CCC", "best epoch", "epochs run"):
        table.add_column(column)
    for emotion_name, value in result["val_ccc"].items():
        table.add_row(
            emotion_name, f"{value:.4f}", str(result["best_epoch"] + 1), str(result["epochs_run"])
        )
    stdout.print(table)
