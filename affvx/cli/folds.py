"""`affvx folds`: the fold table of a protocol on a store."""

from __future__ import annotations

from pathlib import Path

import typer

from affvx.cli._console import print_json, stdout


def folds_command(
    store: Path = typer.Argument(..., help="A feature store directory."),
    protocol: str = typer.Option("abaw2", "--protocol", help="abaw2 (seed 002's folds) or kfold."),
    n_folds: int = typer.Option(6, "--folds", help="Number of folds."),
    seed: int = typer.Option(0, "--seed", help="Seed of the kfold shuffle."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show which trials every fold trains and validates on.

    Example (after `affvx data synth demo-store`): `affvx folds demo-store --protocol abaw2 --json`
    """
    from affvx.orchestrator.folds import folds_of_store

    table, trials = folds_of_store(store, protocol, n_folds, seed)
    data = table.to_json(trials)
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    view = Table(title=f"{protocol} folds of {store}", title_justify="left")
    for column in ("fold", "train trials", "val trials", "val frames", "val labelled frames"):
        view.add_column(column, justify="right")
    for fold in data["folds"]:
        view.add_row(
            str(fold["fold"]),
            str(len(fold["train"])),
            str(fold["n_val_trials"]),
            f"{fold['n_val_frames']:,}",
            f"{fold['n_val_labelled_frames']:,}",
        )
    stdout.print(view)
