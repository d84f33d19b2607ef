"""Rendering a run: the live view of `affvx launch`, the tables of `status`, the summary."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

GRID_LIMIT = 96  # above this many jobs the live view shows counts only

GLYPHS = {
    "PENDING": "[dim]·[/dim]",
    "SUBMITTED": "[dim]queued[/dim]",
    "RUNNING": "[cyan]▶[/cyan]",
    "PREEMPTED": "[yellow]⟳[/yellow]",
    "COMPLETE": "[green]✓[/green]",
    "FAILED": "[red]✗ failed[/red]",
    "CANCELLED": "[magenta]cancelled[/magenta]",
    "LOST": "[red]? lost[/red]",
}


def cell(view: Any) -> str:
    """One job in a few characters: state, epoch or CCC."""
    state = view.state.value
    text = GLYPHS[state]
    if state == "COMPLETE" and view.val_ccc:
        text += " " + "/".join(f"{v:.3f}" for v in view.val_ccc.values())
    elif state == "RUNNING" and view.epoch is not None:
        text += f" e{view.epoch + 1}" + (f"/{view.max_epochs}" if view.max_epochs else "")
    return text


def grid_table(jobs: list[Any], views: dict[str, Any]) -> Table:
    """Rows emotion x modality set (x seed), columns folds."""
    folds = sorted({job.fold for job in jobs})
    seeds = sorted({job.seed for job in jobs})
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("emotion")
    table.add_column("modalities")
    if len(seeds) > 1:
        table.add_column("seed")
    for fold in folds:
        table.add_column(f"fold {fold}")
    rows: dict[tuple[str, str, int], dict[int, str]] = {}
    for job in jobs:
        rows.setdefault((job.emotion, job.modality_set, job.seed), {})[job.fold] = cell(
            views[job.job_id]
        )
    for (emotion, modalities, seed), cells in rows.items():
        table.add_row(
            emotion,
            modalities,
            *([str(seed)] if len(seeds) > 1 else []),
            *(cells.get(f, "") for f in folds),
        )
    return table


def counts_line(views: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for view in views.values():
        counts[view.state.value] = counts.get(view.state.value, 0) + 1
    return "  ".join(f"{state} {n}" for state, n in sorted(counts.items()))


class LiveLaunchView:
    """What `affvx launch` shows while it follows the jobs.

    On a terminal: a progress bar over all jobs and the grid, redrawn in place. Otherwise
    (a log file, CI): one line per job event.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self.jobs: list[Any] = []
        self.views: dict[str, Any] = {}
        self.progress = Progress(
            TextColumn("[bold]jobs complete"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("jobs", total=None)
        self.live: Live | None = None
        self.complete: set[str] = set()

    def __enter__(self) -> LiveLaunchView:
        if self.interactive:
            self.live = Live(
                self._render(), console=self.console, refresh_per_second=2, transient=False
            )
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def on_plan(self, run: Any, jobs: list[Any], resumed: bool) -> None:
        self.jobs = jobs
        self.progress.update(self.task, total=len(jobs))
        verb = "resuming" if resumed else "launching"
        self.console.print(f"{verb} {len(jobs)} jobs in {run.path}", soft_wrap=True)

    def on_views(self, views: dict[str, Any]) -> None:
        self.views = views
        self.complete |= {job_id for job_id, v in views.items() if v.state.value == "COMPLETE"}
        self.progress.update(self.task, completed=len(self.complete))
        if self.live is not None:
            self.live.update(self._render())

    def on_event(self, job_id: str, message: str) -> None:
        if message == "complete":
            self.complete.add(job_id)
        if not self.interactive:
            done = len(self.complete)
            self.console.print(
                f"[{done}/{len(self.jobs)}] {job_id}: {message}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )

    def _render(self) -> Any:
        parts: list[Any] = [self.progress]
        if self.views:
            parts.append(counts_line(self.views))
            if len(self.jobs) <= GRID_LIMIT:
                parts.append(grid_table(self.jobs, self.views))
        return Group(*parts)


def summary_table(summary: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    with_oracle = any(not math.isnan(row["oracle_mean"]) for row in summary)
    columns = ["emotion", "modalities", "folds", "CCC mean ± sd", "official (fold 0)"]
    for column in columns + (["oracle", "ratio"] if with_oracle else []):
        table.add_column(column)
    for row in summary:
        sd = "" if math.isnan(row["ccc_sd"]) else f" ± {row['ccc_sd']:.3f}"
        official = "" if math.isnan(row["ccc_official"]) else f"{row['ccc_official']:.3f}"
        label = row["emotion"] + (" (multi-task)" if row["target"] == "both" else "")
        cells = [
            label,
            row["modalities"],
            str(row["n_folds"]),
            f"{row['ccc_mean']:.3f}{sd}",
            official,
        ]
        if with_oracle:
            cells += [f"{row['oracle_mean']:.3f}", f"{row['ratio_to_oracle']:.2f}"]
        table.add_row(*cells)
    return table


def status_table(status: Any) -> Table:
    """One row per job, grouped by emotion x modality set x fold."""
    table = Table(show_lines=False)
    for column in (
        "job",
        "state",
        "epoch",
        "best val CCC",
        "attempts",
        "elapsed",
        "scheduler id",
        "note",
    ):
        table.add_column(column)
    for job in status.jobs:
        view = status.views[job.job_id]
        epoch = (
            ""
            if view.epoch is None
            else f"{view.epoch}" + (f"/{view.max_epochs}" if view.max_epochs else "")
        )
        if view.batches and view.state.value == "RUNNING":
            epoch += f" ({view.batches[0]}/{view.batches[1]})"
        ccc = "/".join(f"{v:.3f}" for v in view.val_ccc.values()) if view.val_ccc else ""
        elapsed = "" if view.elapsed_s is None else _duration(view.elapsed_s)
        table.add_row(
            job.job_id,
            GLYPHS[view.state.value] + " " + view.state.value,
            epoch,
            ccc,
            str(view.attempts),
            elapsed,
            view.scheduler_id,
            view.reason[:60],
        )
    return table


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
