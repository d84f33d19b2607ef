"""`affvx tune`: an Optuna study per (emotion, modality set), each trial k fold jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from affvx.cli import _grid_flags as _grid
from affvx.cli._backend_flags import with_backend_flags
from affvx.cli._console import note, stdout


class _TrialLines:
    """One line on stderr per trial that starts or ends (and per job event with --verbose)."""

    def __init__(self) -> None:
        self.run_path: Path | None = None

    def on_start(self, run: Any, studies: list[str], resumed: bool) -> None:
        self.run_path = run.path
        verb = "resuming" if resumed else "tuning"
        note(f"{verb} {len(studies)} studies in {run.path}: {', '.join(studies)}")

    def on_trial(self, study: str, number: int, state: str, detail: str) -> None:
        note(f"{study} trial {number}: {state} {detail}".rstrip())

    def on_event(self, job_id: str, message: str) -> None: ...


@with_backend_flags
def tune_command(
    trials: int = typer.Option(
        None,
        "--trials",
        help="Finished trials per study (complete, pruned or failed) [default: 20].",
    ),
    parallel: int = typer.Option(
        None, "--parallel", help="Trials in flight per study [default: 2]."
    ),
    pruner: str = typer.Option(
        None, "--pruner", help="wilcoxon (per-fold CCC), median or none [default: wilcoxon]."
    ),
    sampler: str = typer.Option(None, "--sampler", help="tpe or random [default: tpe]."),
    sampler_seed: int = typer.Option(
        None, "--sampler-seed", help="The sampler's seed [default: 0]."
    ),
    storage: str = typer.Option(
        None,
        "--storage",
        help="Optuna storage: a database URL (sqlite:///tune.db) or a journal file path "
        "[default: RUN/tuning/journal.log].",
    ),
    study_name: str = typer.Option(
        None,
        "--study-name",
        help="Prefix of each cell's study name, <name>-<emotion>-<modalities> [default: affvx].",
    ),
    folds: int = _grid.FOLDS,
    emotions: str = typer.Option(
        None, "--emotions", help="valence,arousal (a study each); both = multi-task."
    ),
    modalities: list[str] = _grid.MODALITIES,
    model: str = _grid.MODEL,
    protocol: str = _grid.PROTOCOL,
    store: Path = _grid.STORE,
    run: Path = _grid.RUN,
    backend: str = _grid.BACKEND,
    seeds: str = typer.Option(None, "--seeds", help="Seeds per fold, e.g. 0-2 [default: 0]."),
    epochs: int = _grid.EPOCHS,
    cpus: int = _grid.CPUS,
    gpus: float = _grid.GPUS,
    jobs_per_gpu: int = _grid.JOBS_PER_GPU,
    cuda_graphs: str = _grid.CUDA_GRAPHS,
    time_limit: str = typer.Option(
        None, "--time-limit", help="Time per job attempt, e.g. 45m or 2h (as for launch)."
    ),
    max_retries: int = typer.Option(
        None, "--max-retries", help="Retries of a failed fold job [default: 2]."
    ),
    backend_option: list[str] = typer.Option(
        None, "--backend-option", help="A backend option NAME=VALUE; repeat for several."
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="experiment.toml with any of these settings and [tune.space] (flags win).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the studies, the space and a trial's jobs; run nothing."
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Run the driver in the background; follow with `affvx status`."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a tuning run (the newest under ./runs without --run)."
    ),
    backend_flags: dict[str, Any] | None = None,
) -> None:
    """Tune hyperparameters with Optuna: each (emotion, modality set) cell is a study, each
    trial k fold jobs on the backend; the pruner stops poor trials after a few folds and
    their other fold jobs are cancelled. The space is [tune.space] of --config, or the
    model's default (lr, weight_decay, dropout, window, hidden size).
    Examples: `affvx tune --trials 200 --folds 6 --dry-run` (the plan only);
    `affvx tune --trials 2 --folds 2 --emotions valence --modalities visual --model tcn --epochs 1`;
    `affvx tune --resume` (after a crash: continue the newest run's studies)
    """
    from affvx.orchestrator.tune import tune

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
    ) | {
        "tune": {
            "trials": trials,
            "parallel": parallel,
            "pruner": pruner,
            "sampler": sampler,
            "sampler_seed": sampler_seed,
            "storage": storage,
            "study_name": study_name,
        },
    }
    observer = _TrialLines()
    try:
        outcome = tune(
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
        path = observer.run_path or _grid.existing_run(run)
        if path is None:
            note("interrupted before the run was written: nothing to continue")
        else:
            note(f"interrupted: continue with `affvx tune --resume --run {path}`")
        raise typer.Exit(_grid.EXIT_INTERRUPTED) from None
    if outcome.dry_run is not None:
        _print_plan(outcome)
        return
    if outcome.detached:
        note(f"tuning in the background; follow with `affvx status {outcome.run.path}`")
        return
    _print_bests(outcome)
    raise typer.Exit(outcome.exit_code)


def _print_plan(outcome: Any) -> None:
    from rich.table import Table

    plan = outcome.dry_run
    table = Table(
        title=f"tuning plan in {outcome.run.path} (dry run: nothing run); {plan['folds']} folds, "
        f"pruner {plan['pruner']}, sampler {plan['sampler']}, {plan['parallel']} trials in "
        f"flight per study, storage {plan['storage']}",
        title_justify="left",
    )
    for column in ("study", "emotion", "modalities", "trials", "fold jobs (at most)"):
        table.add_column(column)
    for study in plan["studies"]:
        table.add_row(
            study["study"],
            study["emotion"],
            study["modalities"],
            str(study["trials"]),
            str(study["fold_jobs"]),
        )
    stdout.print(table)
    space = Table(title="search space", title_justify="left")
    space.add_column("parameter")
    space.add_column("range")
    for name, spec in plan["space"].items():
        text = (
            f"one of {spec['choices']}"
            if "choices" in spec
            else f"{spec['low']} .. {spec['high']}" + (" (log)" if spec.get("log") else "")
        )
        space.add_row(name, text)
    stdout.print(space)
    stdout.print(f"# the jobs of one trial (e.g. {plan['example_job']}):", markup=False)
    for script in plan["scripts"]:
        stdout.print(script, markup=False, highlight=False, soft_wrap=True)


def _print_bests(outcome: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{outcome.run.path}: best trial per study", title_justify="left")
    for column in ("study", "trials", "best", "mean CCC", "parameters"):
        table.add_column(column)
    for study in outcome.studies:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(study.counts.items()))
        if study.best_number is None:
            table.add_row(study.study, counts, "-", "-", "")
            continue
        params = _params_text(study.best_params)
        table.add_row(
            study.study, counts, str(study.best_number), f"{study.best_value:.4f}", params
        )
    stdout.print(table)
    note(
        f"details: `affvx status {outcome.run.path}`; trials.csv, best_params.toml and plots: "
        f"`affvx collect {outcome.run.path}`"
    )


def trials_table(rows: list[Any]) -> Any:
    """One row per trial of a tuning run (`affvx status`)."""
    from rich.table import Table

    table = Table(title="trials", title_justify="left")
    for column in ("study", "trial", "state", "folds", "mean CCC", "parameters", "note"):
        table.add_column(column)
    for row in rows:
        mean = "" if row.mean_ccc is None else f"{row.mean_ccc:.4f}"
        table.add_row(
            row.study,
            str(row.trial),
            row.state,
            f"{row.folds_done}/{row.folds}",
            mean,
            _params_text(row.params),
            row.reason[:50],
        )
    return table


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
