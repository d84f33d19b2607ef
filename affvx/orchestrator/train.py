"""`affvx train`: one job in the foreground, its fold taken from the store's fold table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affvx.orchestrator.folds import folds_of_store
from affvx.trainers.spec import ModelConfig, TrainSpec

EMOTION_CHOICES = ("valence", "arousal", "both")


def emotions_of(choice: str) -> tuple[str, ...]:
    """`both` trains valence and arousal together; otherwise one emotion."""
    return ("valence", "arousal") if choice == "both" else (choice,)


def single_job_spec(
    store: Path | str,
    *,
    fold: int,
    emotion: str,
    modalities: tuple[str, ...],
    model: str = "tcn",
    protocol: str = "abaw2",
    n_folds: int = 6,
    **settings: Any,
) -> TrainSpec:
    """The spec of one (fold, emotion, modality set) job on `store`."""
    table, _ = folds_of_store(store, protocol, n_folds)
    chosen = table.fold(fold)
    return TrainSpec(
        store=str(Path(store).resolve()),
        fold=fold,
        train_trials=chosen.train,
        validation_trials=chosen.validation,
        emotions=emotions_of(emotion),
        modalities=modalities,
        model=ModelConfig(name=model),
        protocol=protocol,
        **settings,
    )


def train_one(spec: TrainSpec, job_dir: Path | str, observer: Any = None) -> Any:
    """Run (or resume) the job in `job_dir`; returns trainers.job.JobResult."""
    from affvx.trainers.job import run_job  # torch is imported only when a job really runs

    return run_job(spec, job_dir, observer=observer)
