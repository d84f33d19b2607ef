"""`affvx cancel`: stop a run's unfinished jobs."""

from __future__ import annotations

from pathlib import Path

import typer

from affvx.cli._console import note


def cancel_command(
    run: Path = typer.Argument(None, help="Run directory [default: the newest under ./runs]."),
) -> None:
    """Cancel every unfinished job of a run (complete jobs are kept; --resume runs the rest).

    Example: `affvx cancel` (the newest run; or give its directory, runs/<timestamp>)
    """
    from affvx.orchestrator.cancel import cancel_run
    from affvx.orchestrator.rundir import newest_run

    path = run or newest_run()
    cancelled = cancel_run(path)
    note(
        f"cancelled {len(cancelled)} job(s) of {path}"
        if cancelled
        else f"{path}: nothing to cancel"
    )
