"""`affvx tune --backend slurm` on the real one-node SLURM cluster: every fold job of every
trial is a SLURM array task, and the journal's best trial is the report's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.integration.test_slurm_launch import slurm_config
from tests.orchestrator.test_tune import journal_study, tune_args
from tests.support.runs import attempts, job_dirs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_study_on_slurm_runs_its_fold_jobs_as_array_tasks(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    args = tune_args(small_store, run, "--trials", 3, "--folds", 2, "--pruner", "none")
    at = args.index("--max-parallel")  # a local backend flag
    del args[at : at + 2]
    result = cli(*args, "--backend", "slurm", "--config", slurm_config(tmp_path))
    assert result.exit_code == 0, result.stderr
    study = journal_study(run)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len(job_dirs(run)) == 6
    for job_dir in job_dirs(run):
        [attempt] = attempts(job_dir)
        assert attempt["backend"] == "slurm" and attempt["exit_reason"] == "completed"
        assert "_" in attempt["scheduler_id"]  # an array task: <array id>_<index>
    assert cli("collect", run).exit_code == 0
    best = study.best_trial
    toml = (run / "report" / "valence-visual" / "best_params.toml").read_text()
    assert f"trial {best.number}, mean CCC {best.value:.6f}" in toml
