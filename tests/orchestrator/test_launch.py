"""`affvx launch / status / collect / cancel` end to end on the local backend, with real
processes: a reference run, then runs that are crashed in the ways a real run crashes.

The grid: 3 folds x 2 emotions x 2 modality sets = 12 tcn jobs of 4 epochs on a small store.
Every job gets one CPU, so every run of it computes the same numbers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from affvx.orchestrator.ledger import JobFiles
from affvx.orchestrator.rundir import RunDir
from affvx.storage.reader import FeatureStore
from tests.support.runs import (
    affvx,
    attempts,
    frozen_mid_training,
    grid,
    job_dirs,
    metrics_without_seconds,
    report_files,
    running_with_checkpoint,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def reference(reference_run: Path) -> Path:
    return reference_run


def test_the_grid_runs_to_completion_with_every_output(reference: Path) -> None:
    run = RunDir.open(reference)
    assert len(run.jobs) == 12 and len({j.job_id for j in run.jobs}) == 12
    assert {j.job_id for j in run.jobs} >= {
        "valence-visual-fold0-seed0",
        "arousal-visual+mfcc-fold2-seed0",
    }
    assert run.config.model.name == "tcn" and run.config.training.max_epochs == 4
    assert len(run.folds.folds) == 3
    for job_dir in job_dirs(reference):
        lines = attempts(job_dir)
        assert [a["exit_reason"] for a in lines] == ["completed"]
        assert (job_dir / "result.json").exists() and (job_dir / "predictions.parquet").exists()


def test_status_without_arguments_shows_the_newest_run(
    reference: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(reference.parent.parent)
    result = cli("status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["run"] == "runs/reference" and data["counts"] == {"COMPLETE": 12}
    job = next(j for j in data["jobs"] if j["job_id"] == "valence-visual-fold1-seed0")
    assert job["state"] == "COMPLETE" and job["attempts"] == 1 and job["fold"] == 1
    assert (
        job["emotion"] == "valence"
        and job["modalities"] == "visual"
        and 0 < job["val_ccc"]["valence"] <= 1
    )
    table = cli("status")
    assert (
        table.exit_code == 0
        and "valence-visual+mfcc-fold2-seed0" in table.stdout
        and "COMPLETE 12" in table.stdout
    )


def test_collect_writes_tables_plots_and_a_valid_submission(reference: Path) -> None:
    report = reference / "report"
    with open(report / "folds.csv") as handle:
        folds = list(csv.DictReader(handle))
    assert len(folds) == 12
    with open(report / "summary.csv") as handle:
        summary = {(r["emotion"], r["modalities"]): r for r in csv.DictReader(handle)}
    assert len(summary) == 4
    for (emotion, modalities), row in summary.items():
        values = [
            json.loads(
                (
                    reference / "jobs" / f"{emotion}-{modalities}-fold{f}-seed0" / "result.json"
                ).read_text()
            )["val_ccc"][emotion]
            for f in range(3)
        ]
        assert float(row["ccc_mean"]) == pytest.approx(np.mean(values), abs=1e-6)
        assert float(row["ccc_sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
        assert float(row["ccc_official"]) == pytest.approx(values[0], abs=1e-6)
        assert int(row["n_folds"]) == 3
        # a synthetic store knows the best achievable CCC of every fold's validation trials
        store, folds = (
            FeatureStore(RunDir.open(reference).config.store),
            RunDir.open(reference).folds,
        )
        oracles = [
            store.oracle_ccc(list(folds.fold(f).validation), modalities.split("+"), emotion)
            for f in range(3)
        ]
        assert float(row["oracle_mean"]) == pytest.approx(np.mean(oracles), abs=1e-6)
        assert float(row["ratio_to_oracle"]) == pytest.approx(
            np.mean(values) / np.mean(oracles), abs=1e-5
        )
    for name in ("ccc_by_fold.png", "predictions.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CCC mean ± sd" in (report / "summary.md").read_text()
    assert_valid_submission(
        report / "submission" / "VA_Set", FeatureStore(RunDir.open(reference).config.store)
    )


def assert_valid_submission(folder: Path, store: FeatureStore) -> None:
    """ABAW VA format: every test trial, header exactly `valence,arousal`, one `%.3f,%.3f`
    line per video frame, values in [-1, 1]."""
    test_trials = store.trials_in("Test_Set")
    assert sorted(p.stem for p in folder.glob("*.txt")) == sorted(test_trials)
    for trial in test_trials:
        lines = (folder / f"{trial}.txt").read_text().split("\n")
        assert lines[0] == "valence,arousal" and lines[-1] == ""
        rows = lines[1:-1]
        assert len(rows) == store.n_frames(trial)
        for row in rows:
            valence, arousal = row.split(",")
            assert len(valence.split(".")[-1]) == 3 and len(arousal.split(".")[-1]) == 3
            assert -1.0 <= float(valence) <= 1.0 and -1.0 <= float(arousal) <= 1.0


def test_launching_a_complete_run_again_runs_nothing(
    reference: Path, small_store: Path, cli
) -> None:
    before = {p.name: (p / "attempts.jsonl").read_text() for p in job_dirs(reference)}
    result = cli(*grid(small_store, reference))
    assert result.exit_code == 0, result.stderr
    assert {p.name: (p / "attempts.jsonl").read_text() for p in job_dirs(reference)} == before


def test_sigkill_of_the_launcher_then_resume_finishes_without_rerunning(
    reference: Path, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run))
    wait_until(
        lambda: (
            sum((d / "result.json").exists() for d in job_dirs(run)) >= 2
            and running_with_checkpoint(run)
        ),
        what="two complete jobs and one running",
    )
    launcher.send_signal(signal.SIGKILL)
    launcher.communicate()
    complete_before = {d.name for d in job_dirs(run) if (d / "result.json").exists()}
    # the jobs die with their supervisor (they checkpoint on SIGTERM): none is left running
    wait_until(
        lambda: (
            not any((JobFiles(d).state() or {}).get("state") == "RUNNING" for d in job_dirs(run))
        ),
        timeout_s=60,
        what="orphaned jobs to stop",
    )
    result = cli("launch", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr
    for job_dir in job_dirs(run):
        reasons = [a["exit_reason"] for a in attempts(job_dir)]
        assert reasons.count("completed") == 1, (job_dir.name, reasons)
        if job_dir.name in complete_before:
            assert reasons == ["completed"]
    assert cli("collect", run).exit_code == 0
    assert report_files(run) == report_files(reference)


def test_a_killed_job_is_retried_and_resumes_from_its_checkpoint(
    reference: Path, small_store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run))
    victim, pid = wait_until(
        lambda: frozen_mid_training(run), what="a job with a checkpoint and an epoch to go"
    )
    os.kill(pid, signal.SIGKILL)  # frozen before it could finish: the kill lands mid-job
    _, err = launcher.communicate()
    assert launcher.returncode == 0, err
    lines = attempts(victim)
    assert [a["exit_reason"] for a in lines] == ["failed", "completed"]
    assert lines[0]["exit_code"] == -signal.SIGKILL
    assert json.loads((victim / "progress.json").read_text())["resumed"] is True
    assert metrics_without_seconds(victim) == metrics_without_seconds(
        reference / "jobs" / victim.name
    )


def test_a_job_that_always_fails_ends_failed_and_the_rest_finish(
    small_store: Path, tmp_path: Path, cli
) -> None:
    from affvx.orchestrator.launch import prepare

    run_path = tmp_path / "run"
    plan = prepare(
        flags=_flags_of(small_store),
        config_file=None,
        run_path=run_path,
        resume=False,
        note=lambda m: None,
    )
    plan.run.create(plan.config, plan.folds, plan.jobs)
    doomed = plan.run.job_dir("arousal-visual-fold1-seed0")
    (doomed / "metrics.csv").mkdir(parents=True)  # every attempt fails writing its metrics
    result = cli("launch", "--resume", "--run", run_path, "--max-parallel", "2")
    assert result.exit_code == 1
    status = json.loads(cli("status", run_path, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 11, "FAILED": 1}
    failed = next(j for j in status["jobs"] if j["state"] == "FAILED")
    assert failed["job_id"] == doomed.name and "Is a directory" in failed["reason"]
    assert failed["attempts"] == 3  # the first attempt and max_retries = 2 more
    assert [a["exit_reason"] for a in attempts(doomed)] == ["failed"] * 3


def _flags_of(store: Path) -> dict:
    return {
        "store": str(store),
        "folds": 3,
        "emotions": ("valence", "arousal"),
        "modalities": (("visual",), ("visual", "mfcc")),
        "model": {"name": "tcn"},
        "training": {"max_epochs": 4},
    }


def test_detach_then_cancel_then_resume(small_store: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    result = cli(*grid(small_store, run, "--detach"))
    assert result.exit_code == 0 and "affvx status" in result.stderr
    wait_until(lambda: running_with_checkpoint(run), what="a running job")
    result = cli("cancel", run)
    assert result.exit_code == 0 and "cancelled" in result.stderr
    wait_until(
        lambda: RunDir(run).driver() is None, timeout_s=60, what="the detached driver to stop"
    )
    status = json.loads(cli("status", run, "--json").stdout)
    assert status["counts"].get("CANCELLED", 0) >= 1
    assert set(status["counts"]) <= {"COMPLETE", "CANCELLED"}
    cancelled = {j["job_id"] for j in status["jobs"] if j["state"] == "CANCELLED"}
    result = cli("launch", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr
    status = json.loads(cli("status", run, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 12}
    for job_id in cancelled:
        assert [a["exit_reason"] for a in attempts(run / "jobs" / job_id)][-1] == "completed"


def test_status_and_collect_do_not_import_torch_or_ray(reference: Path) -> None:
    from tests.test_architecture import heavy_modules_after

    assert heavy_modules_after("status", str(reference), "--json") == set()
    assert heavy_modules_after("status", str(reference)) == set()
    assert heavy_modules_after("collect", str(reference)) == set()
    assert heavy_modules_after("launch", "--run", str(reference), "--dry-run") == set()
