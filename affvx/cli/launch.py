"""`affvx launch`: plan and run a whole cross-validation grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from affvx.cli import _grid_flags as _grid
from affvx.cli._backend_flags import with_backend_flags
from affvx.cli._console import note, stderr, stdout


class _RememberRun:
    """Passes the driver's reports on to the view and keeps the run, for the Ctrl-C note."""

    def __init__(self) -> None:
        self.view: Any = None
        self.run_path: Path | None = None

    def on_plan(self, run: Any, jobs: list[Any], resumed: bool) -> None:
        self.run_path = run.path
        self.view.on_plan(run, jobs, resumed)

    def on_views(self, views: dict[str, Any]) -> None:
        self.view.on_views(views)

    def on_event(self, job_id: str, message: str) -> None:
        self.view.on_event(job_id, message)


@with_backend_flags
def launch_command(
    folds: int = _grid.FOLDS,
    emotions: str = typer.Option(
        None, "--emotions", help="valence,arousal (each a job); both = one multi-task job."
    ),
    modalities: list[str] = _grid.MODALITIES,
    model: str = _grid.MODEL,
    protocol: str = _grid.PROTOCOL,
    store: Path = _grid.STORE,
    run: Path = _grid.RUN,
    backend: str = _grid.BACKEND,
    seeds: str = typer.Option(
        None, "--seeds", help="Seeds to repeat every cell with, e.g. 0-2 [default: 0]."
    ),
    epochs: int = _grid.EPOCHS,
    lr: float = typer.Option(None, "--lr", help="Learning rate [default: 3e-4]."),
    cpus: int = _grid.CPUS,
    gpus: float = _grid.GPUS,
    jobs_per_gpu: int = _grid.JOBS_PER_GPU,
    cuda_graphs: str = _grid.CUDA_GRAPHS,
    time_limit: str = typer.Option(
        None,
        "--time-limit",
        help="Time per job attempt, e.g. 90s, 45m, 2h, 1h30m (a plain number is minutes); "
        "jobs checkpoint before it and are requeued.",
    ),
    max_retries: int = typer.Option(
        None, "--max-retries", help="Retries of a failed job per launch [default: 2]."
    ),
    backend_option: list[str] = typer.Option(
        None,
        "--backend-option",
        help="A backend option NAME=VALUE (see docs/architecture.md); repeat for several.",
    ),
    config: Path = typer.Option(
        None, "--config", help="experiment.toml with any of these settings (flags win)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and what would be submitted; submit nothing."
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Return after submitting; follow with `affvx status`."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a run (the newest under ./runs without --run)."
    ),
    backend_flags: dict[str, Any] | None = None,
) -> None:
    """Plan the grid (folds x emotions x modality sets x seeds) and run a trainer for every cell.

    Follows the jobs with live progress and prints the summary. Re-running on the same --run
    (or --resume) skips complete jobs and resumes the others from their checkpoints.
    Examples: `affvx launch --folds 6 --emotions valence,arousal --dry-run` (the plan only);
    `affvx launch --resume` (continue the newest run under ./runs)
    """
    from affvx.cli._run_view import LiveLaunchView
    from affvx.orchestrator.launch import launch

    flags = _grid.grid_flags(
        store=store,
        protocol=protocol,
        folds=folds,
        emotions=emotions,
        modalities=modalities,
        seeds=seeds,
        model=model,
        epochs=epochs,
        cpus=cpus,
        gpus=gpus,
        jobs_per_gpu=jobs_per_gpu,
        cuda_graphs=cuda_graphs,
        time_limit=time_limit,
        backend=backend,
        max_retries=max_retries,
    )
    flags["training"]["lr"] = lr
    observer = _RememberRun()
    try:
        with LiveLaunchView(stderr) as view:
            observer.view = view
            outcome = launch(
                flags=flags,
                config_file=config,
                run_path=run,
                resume=resume,
                dry_run=dry_run,
                detach=detach,
                backend_flags=backend_flags,
                backend_option_texts=list(backend_option or ()),
                observer=observer,
                note=note,
            )
    except KeyboardInterrupt:
        note(_how_to_continue(observer.run_path or _grid.existing_run(run)))
        raise typer.Exit(_grid.EXIT_INTERRUPTED) from None
    if outcome.dry_run_scripts:
        _print_plan(outcome)
        return
    if outcome.detached:
        note(f"submitted; follow with `affvx status {outcome.run.path} --watch`")
        return
    _print_summary(outcome)
    raise typer.Exit(outcome.exit_code)


def _how_to_continue(run_path: Path | None) -> str:
    if run_path is None:
        return "interrupted before the run was written: nothing to continue"
    return (
        f"interrupted: {run_path} keeps every checkpoint; continue with "
        f"`affvx launch --resume --run {run_path}`"
    )


def _print_plan(outcome: Any) -> None:
    from rich.table import Table

    cells: dict[tuple[str, str], list[Any]] = {}
    for job in outcome.jobs:
        cells.setdefault((job.emotion, job.modality_set), []).append(job)
    table = Table(
        title=f"plan: {len(outcome.jobs)} jobs in {outcome.run.path} (dry run: nothing submitted)",
        title_justify="left",
    )
    for column in ("emotion", "modalities", "folds", "seeds", "jobs"):
        table.add_column(column)
    for (emotion, modalities), jobs in cells.items():
        table.add_row(
            emotion,
            modalities,
            str(len({j.fold for j in jobs})),
            str(len({j.seed for j in jobs})),
            str(len(jobs)),
        )
    stdout.print(table)
    for script in outcome.dry_run_scripts:
        stdout.print(script, markup=False, highlight=False, soft_wrap=True)
    if outcome.jobs:
        command = outcome.dry_run_command.replace(outcome.jobs[0].job_id, "<job_id>")
        stdout.print(f"# every job runs: {command}", markup=False, highlight=False, soft_wrap=True)


def _print_summary(outcome: Any) -> None:
    from affvx.cli._run_view import summary_table
    from affvx.orchestrator.collect import fold_rows, oracle_lookup, summarise
    from affvx.orchestrator.ledger import JobFiles

    run = outcome.run
    results = {job.job_id: JobFiles(run.job_dir(job.job_id)).result() for job in outcome.jobs}
    summary = summarise(fold_rows(outcome.jobs, results, oracle_lookup(run)), run.config.protocol)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in outcome.counts.items())
    if summary:
        stdout.print(summary_table(summary, f"{run.path}: {counts}"))
    failed = [
        v for v in outcome.views.values() if v.state.value in ("FAILED", "LOST", "CANCELLED")
    ]
    for view in failed[:10]:
        note(f"{view.job_id}: {view.state.value} {view.reason}")
    note(
        f"details: `affvx status {run.path}`; tables, plots and submission: `affvx collect {run.path}`"
    )
