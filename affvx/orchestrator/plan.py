"""The grid: one job per emotion x modality set x fold x seed (x tuning candidate), with
stable ids and hashes.

A job id says where the job sits in the grid (`valence-visual+mfcc+vggish-fold3-seed0`, and
`...-seed0-cand7` for the fold job of Optuna's trial 7 -- called a *candidate* here, since a
trial is a video everywhere else), so it is the same in every launch of a run. Its configuration hash covers the experiment settings,
the fold table and the store's content: a launch whose hash differs for an existing job is
another experiment and is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from affvx.orchestrator.config import ExperimentConfig
from affvx.orchestrator.folds import FoldTable
from affvx.trainers.spec import TRAINING_FIELDS, TrainSpec

PLAN_COLUMNS = (
    "job_id",
    "fold",
    "emotion",
    "modalities",
    "seed",
    "candidate",
    "model",
    "config_hash",
)
LEGACY_COLUMNS = {"candidate": "trial"}  # plan.parquet of runs made before the rename


def plan_schema() -> Any:
    """plan.parquet's Arrow schema, column for column as PLAN_COLUMNS."""
    import pyarrow as pa

    types = {"fold": pa.int32(), "seed": pa.int64(), "candidate": pa.int64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in PLAN_COLUMNS])


@dataclass(frozen=True)
class PlannedJob:
    """One cell of the grid. `emotion` is valence, arousal or both (multi-task);
    `candidate` is the tuning trial's number (None outside tuning) and `params` that
    trial's hyperparameters, which override the experiment's [training] and [model] for
    this job alone (part of its configuration hash)."""

    job_id: str
    fold: int
    emotion: str
    modalities: tuple[str, ...]
    seed: int
    model: str
    config_hash: str
    candidate: int | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def modality_set(self) -> str:
        return "+".join(self.modalities)

    def row(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "fold": self.fold,
            "emotion": self.emotion,
            "modalities": self.modality_set,
            "seed": self.seed,
            "candidate": self.candidate,
            "model": self.model,
            "config_hash": self.config_hash,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PlannedJob:
        candidate = row.get("candidate")
        return cls(
            job_id=row["job_id"],
            fold=int(row["fold"]),
            emotion=row["emotion"],
            modalities=tuple(row["modalities"].split("+")),
            seed=int(row["seed"]),
            model=row["model"],
            config_hash=row["config_hash"],
            candidate=None if candidate is None or candidate != candidate else int(candidate),
        )


def job_id_of(
    emotion: str, modalities: tuple[str, ...], fold: int, seed: int, candidate: int | None = None
) -> str:
    cell = f"{emotion}-{'+'.join(modalities)}-fold{fold}-seed{seed}"
    return cell if candidate is None else f"{cell}-cand{candidate}"


def _experiment_digest(config: ExperimentConfig, folds: FoldTable, store_fingerprint: str) -> Any:
    return hashlib.sha256(
        json.dumps(
            {
                "experiment": config.experiment_part(),
                "folds": folds.to_json(),
                "store": store_fingerprint,
            },
            sort_keys=True,
        ).encode()
    )


def plan_jobs(
    config: ExperimentConfig, folds: FoldTable, store_fingerprint: str
) -> list[PlannedJob]:
    """Every job of the grid, ordered by emotion, modality set, fold, seed."""
    experiment = _experiment_digest(config, folds, store_fingerprint)
    return [
        job
        for emotion in config.emotions
        for modalities in config.modalities
        for job in _cell_jobs(config, folds, experiment, (emotion, modalities))
    ]


def plan_candidate_jobs(
    config: ExperimentConfig,
    folds: FoldTable,
    store_fingerprint: str,
    cell: tuple[str, tuple[str, ...]],
    candidate: int,
    params: dict[str, Any],
) -> list[PlannedJob]:
    """The fold jobs (x seeds) of one tuning candidate of the cell (emotion, modality set),
    with its parameters, ordered by fold and seed."""
    experiment = _experiment_digest(config, folds, store_fingerprint)
    experiment.update(json.dumps(params, sort_keys=True).encode())
    return _cell_jobs(config, folds, experiment, cell, candidate, params)


def _cell_jobs(
    config: ExperimentConfig,
    folds: FoldTable,
    experiment: Any,
    cell: tuple[str, tuple[str, ...]],
    candidate: int | None = None,
    params: dict[str, Any] | None = None,
) -> list[PlannedJob]:
    """One cell's jobs by fold and seed; each one's hash is `experiment` (a sha256 of what
    decides results) updated with its id."""
    emotion, modalities = cell
    jobs = []
    for fold in range(len(folds.folds)):
        for seed in config.seeds:
            job_id = job_id_of(emotion, modalities, fold, seed, candidate)
            digest = experiment.copy()
            digest.update(job_id.encode())
            jobs.append(
                PlannedJob(
                    job_id=job_id,
                    fold=fold,
                    emotion=emotion,
                    modalities=modalities,
                    seed=seed,
                    model=config.model.name,
                    config_hash=digest.hexdigest()[:16],
                    candidate=candidate,
                    params=tuple(sorted((params or {}).items())),
                )
            )
    return jobs


def with_params(config: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """`config` with a tuning candidate's parameters in [training] and [model]."""
    from affvx.orchestrator.space import sections_of

    sections = sections_of(params)
    return dataclasses.replace(
        config,
        training=dataclasses.replace(config.training, **sections.get("training", {})),
        model=dataclasses.replace(config.model, **sections.get("model", {})),
    )


def spec_for(
    config: ExperimentConfig,
    folds: FoldTable,
    job: PlannedJob,
    *,
    threads: int | None = None,
    time_limit_s: float | None = None,
    device: str = "auto",
    cuda_graphs: str = "auto",
) -> TrainSpec:
    """The trainer's spec for one job of the grid (with its candidate's parameters);
    `threads`, `time_limit_s`, `device` and `cuda_graphs` are the attempt's runtime settings."""
    if job.params:
        config = with_params(config, dict(job.params))
    fold = folds.fold(job.fold)
    emotions = ("valence", "arousal") if job.emotion == "both" else (job.emotion,)
    return TrainSpec(
        store=config.store,
        recorded_store=config.recorded_store,
        fold=job.fold,
        train_trials=fold.train,
        validation_trials=fold.validation,
        emotions=emotions,
        modalities=job.modalities,
        model=config.model,
        seed=job.seed,
        **{name: getattr(config.training, name) for name in TRAINING_FIELDS},
        protocol=config.protocol,
        device=device,
        cuda_graphs=cuda_graphs,
        threads=threads,
        time_limit_s=time_limit_s,
    )
