"""What a tuning run's trials are, for `affvx status` and `affvx collect`.

    RUN/report/
      trials.csv                          one row per trial of every study: state, value,
                                          folds done, running mean CCC, parameters
      <emotion>-<modalities>/
        best_params.toml                  the cell's experiment with its best trial's
                                          parameters: `affvx launch --config` runs it
        optimization_history.png, param_importances.png, parallel_coordinate.png, slice.png

The rest of the report (folds.csv, summary, plots, submission) is `affvx collect`'s usual
report over the best trial's fold jobs of each cell.

A trial's state is the storage's; its folds and running mean are the job files' (the ground
truth of what was trained). Optuna is imported here only, and only for tuning runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affvx.orchestrator.config import ExperimentConfig, to_toml
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.ledger import JobFiles
from affvx.orchestrator.plan import PlannedJob, with_params
from affvx.orchestrator.rundir import CandidateRecord, RunDir
from affvx.orchestrator.tune import FAIL_REASON, open_storage, quiet_optuna, study_name
from affvx.storage.atomic import atomic_write_text

TRIAL_COLUMNS = (
    "study",
    "emotion",
    "modalities",
    "trial",
    "state",
    "value",
    "folds_done",
    "folds",
    "mean_ccc",
    "reason",
)


@dataclass
class TrialRow:
    """One trial as status and trials.csv show it."""

    study: str
    emotion: str
    modalities: str
    trial: int
    state: str
    value: float | None
    folds_done: int
    folds: int
    mean_ccc: float | None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    jobs: list[PlannedJob] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("jobs")
        return data


def is_tuning_run(run: RunDir) -> bool:
    return run.saved_config.tune is not None


def trial_rows(run: RunDir, config: ExperimentConfig | None = None) -> list[TrialRow]:
    """Every trial of every study of a tuning run, by study and number."""
    config = config or run.saved_config
    assert config.tune is not None
    optuna = quiet_optuna()
    storage = open_storage(run, config.tune)
    n_folds = len(run.folds.folds)
    rows = []
    for emotion in config.emotions:
        for modalities in config.modalities:
            name = study_name(config.tune, emotion, modalities)
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                continue  # not started yet
            for trial in study.get_trials(deepcopy=False):
                record = run.candidate(emotion, modalities, trial.number)
                scores = fold_scores(run, record) if record else {}
                rows.append(_row(trial, record, scores, name, (emotion, modalities), n_folds))
    return rows


def _row(
    trial: Any,
    record: CandidateRecord | None,
    scores: dict[int, float],
    name: str,
    cell: tuple[str, tuple[str, ...]],
    n_folds: int,
) -> TrialRow:
    emotion, modalities = cell
    return TrialRow(
        study=name,
        emotion=emotion,
        modalities="+".join(modalities),
        trial=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state.name == "COMPLETE" else None,
        folds_done=len(scores),
        folds=n_folds,
        mean_ccc=sum(scores.values()) / len(scores) if scores else None,
        params=dict(trial.params),
        reason=str(trial.user_attrs.get(FAIL_REASON, "")),
        jobs=record.jobs if record else [],
    )


def fold_scores(run: RunDir, record: CandidateRecord) -> dict[int, float]:
    """Each fold's CCC (the mean over seeds) of the folds whose jobs all have results."""
    by_fold: dict[int, list[float | None]] = {}
    for job in record.jobs:
        result = JobFiles(run.job_dir(job.job_id)).result()
        by_fold.setdefault(job.fold, []).append(result["val_ccc_mean"] if result else None)
    return {
        fold: sum(values) / len(values)  # type: ignore[arg-type]
        for fold, values in by_fold.items()
        if all(v is not None for v in values)
    }


# -- collect -----------------------------------------------------------------------------------


def best_rows(rows: list[TrialRow]) -> dict[str, TrialRow]:
    """Each study's best COMPLETE trial (highest value), by study name."""
    best: dict[str, TrialRow] = {}
    for row in rows:
        if row.state != "COMPLETE" or row.value is None:
            continue
        if row.study not in best or row.value > (best[row.study].value or float("-inf")):
            best[row.study] = row
    return best


def write_trials_csv(path: Path, rows: list[TrialRow]) -> None:
    names = sorted({name for row in rows for name in row.params})
    lines = [",".join([*TRIAL_COLUMNS, *(f"param_{n}" for n in names)])]
    for row in rows:
        data = row.to_json()
        cells = [_csv(data[c]) for c in TRIAL_COLUMNS] + [_csv(row.params.get(n)) for n in names]
        lines.append(",".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text.replace(chr(34), chr(39))}"' if "," in text or '"' in text else text


def best_params_toml(config: ExperimentConfig, best: TrialRow) -> str:
    """The cell's experiment with the best trial's parameters, as `launch --config` reads
    it (no [tune]: a launch)."""
    cell = dataclasses.replace(
        with_params(config, best.params),
        tune=None,
        emotions=(best.emotion,),
        modalities=(tuple(best.modalities.split("+")),),
    )
    header = (
        f"# {best.study}: trial {best.trial}, mean CCC {best.value:.6f} over "
        f"{best.folds} folds\n# affvx launch --config best_params.toml\n"
    )
    return header + to_toml(cell)


def write_study_plots(folder: Path, storage: Any, name: str) -> list[str]:
    """Optuna's plots of one study as PNG; a note for each that could not be drawn (too few
    trials for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna = quiet_optuna()
    from optuna.visualization import matplotlib as plots

    study = optuna.load_study(study_name=name, storage=storage)
    drawings = {
        "optimization_history.png": lambda: plots.plot_optimization_history(study),
        "param_importances.png": lambda: plots.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        ),
        "parallel_coordinate.png": lambda: plots.plot_parallel_coordinate(study),
        "slice.png": lambda: plots.plot_slice(study),
    }
    notes = []
    for file_name, draw in drawings.items():
        try:
            axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            notes.append(f"{name}: no {file_name} ({' '.join(str(error).split())[:120]})")
            continue
        figure = _figure_of(axes)
        figure.set_size_inches(9, 5.5)
        figure.savefig(folder / file_name, dpi=90, bbox_inches="tight")
        plt.close(figure)
    return notes


def _figure_of(axes: Any) -> Any:
    if hasattr(axes, "figure"):
        return axes.figure
    first = axes.flat[0] if hasattr(axes, "flat") else axes[0]
    return first.figure


def collect_tuning(run: RunDir) -> tuple[list[PlannedJob], list[str]]:
    """Write trials.csv and, per cell, best_params.toml and the plots; return the best
    trials' fold jobs (the rest of the report is made from them) and notes."""
    config = run.config
    assert config.tune is not None
    rows = trial_rows(run, config)
    bests = best_rows(rows)
    if not bests:
        raise ConfigError(
            f"{run.path}: no trial of this tuning run is complete yet, so there is nothing to "
            f"collect; see where they are with `affvx status {run.path}`"
        )
    run.report_dir.mkdir(exist_ok=True)
    write_trials_csv(run.report_dir / "trials.csv", rows)
    storage = open_storage(run, config.tune)
    notes: list[str] = []
    jobs: list[PlannedJob] = []
    for name, best in bests.items():
        folder = run.report_dir / f"{best.emotion}-{best.modalities}"
        folder.mkdir(exist_ok=True)
        atomic_write_text(folder / "best_params.toml", best_params_toml(config, best))
        notes += write_study_plots(folder, storage, name)
        jobs += best.jobs
    studies = {row.study for row in rows}
    notes += [f"{name}: no complete trial yet" for name in sorted(studies - set(bests))]
    return jobs, notes
