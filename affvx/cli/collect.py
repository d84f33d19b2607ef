"""`affvx collect`: CCC tables, plots and the ABAW submission of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from affvx.cli._console import note, stdout


def _smoothing(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    widths: dict[str, int] = {}
    try:
        if "=" not in text:
            width = int(text)
            return {"valence": width, "arousal": width}
        for part in text.split(","):
            emotion, _, width = part.partition("=")
            widths[emotion.strip()] = int(width)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use N or valence=N,arousal=M", param_hint="--smooth"
        ) from None
    return widths


def collect_command(
    run: Path = typer.Argument(None, help="Run directory [default: the newest under ./runs]."),
    ensemble: str = typer.Option(
        "mean",
        "--ensemble",
        help="How folds are combined for the test set: mean or ccc-centering.",
    ),
    smooth: str = typer.Option(
        None, "--smooth", help="Moving-average width in frames: N, or valence=N,arousal=M."
    ),
) -> None:
    """Write RUN/report/: folds.csv, summary.csv/md, plots, submission/VA_Set/<trial>.txt.

    Example: `affvx collect --ensemble ccc-centering --smooth valence=25,arousal=11`
    """
    from affvx.cli._run_view import summary_table
    from affvx.orchestrator.collect import collect
    from affvx.orchestrator.rundir import newest_run

    path = run or newest_run()
    report = collect(path, ensemble=ensemble, smooth=_smoothing(smooth))
    if report.summary:
        stdout.print(summary_table(report.summary, f"{path}: validation CCC"))
    if report.missing:
        note(
            f"{len(report.missing)} job(s) have no result yet and are left out: {', '.join(report.missing[:8])}"
            + (" ..." if len(report.missing) > 8 else "")
        )
    for line in report.notes:
        note(line)
    if report.submission_trials:
        sources = "; ".join(f"{e}: {s}" for e, s in report.submission_sources.items())
        note(f"submission: {report.submission_trials} test trials ({sources})")
    note(f"wrote {report.report_dir}")
