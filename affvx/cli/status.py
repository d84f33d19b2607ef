"""`affvx status`: where every job of a run is."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from affvx.cli._console import note, print_json, stdout


def status_command(
    run: Path = typer.Argument(None, help="Run directory [default: the newest under ./runs]."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    watch: bool = typer.Option(
        False, "--watch", help="Refresh every 2 s until every job is finished."
    ),
) -> None:
    """Show every job: state, epoch, best validation CCC, attempts, elapsed time, scheduler id;
    for a tuning run also every trial: state, parameters, folds done, running mean CCC.

    Example: `affvx status --json` (the newest run; or give its directory, runs/<timestamp>)
    """
    from affvx.orchestrator.rundir import newest_run
    from affvx.orchestrator.status import run_status

    path = run or newest_run()
    if as_json:
        data = run_status(path).to_json()
        trials = _trial_rows(path)
        if trials is not None:
            data["trials"] = [row.to_json() for row in trials]
        print_json(data)
        return
    if watch:
        _watch(path)
        return
    _render(run_status(path))
    trials = _trial_rows(path)
    if trials is not None:
        from affvx.cli.tune import trials_table

        stdout.print(trials_table(trials))


def _trial_rows(path: Path):  # type: ignore[no-untyped-def]
    """A tuning run's trials (None for a launch run)."""
    from affvx.orchestrator.rundir import RunDir
    from affvx.orchestrator.tune_report import is_tuning_run, trial_rows

    run = RunDir.open(path)
    return trial_rows(run) if is_tuning_run(run) else None


def _render(status) -> None:  # type: ignore[no-untyped-def]
    from affvx.cli._run_view import counts_line, status_table

    stdout.print(status_table(status))
    stdout.print(f"{status.run.path}: {counts_line(status.views)}", soft_wrap=True)
    if status.note:
        note(status.note)


def _watch(path: Path) -> None:
    from rich.live import Live

    from affvx.cli._run_view import counts_line, status_table
    from affvx.orchestrator.status import run_status

    with Live(console=stdout, refresh_per_second=1) as live:
        while True:
            status = run_status(path)
            from rich.console import Group

            live.update(
                Group(status_table(status), f"{status.run.path}: {counts_line(status.views)}")
            )
            if all(v.state.is_finished() for v in status.views.values()):
                break
            time.sleep(2.0)
