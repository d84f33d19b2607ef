"""A worker reads its job's files before anything else, and while it runs: a complete job
is never run again (a requeued task of packed jobs reruns them all), and a cancelled job
stops wherever it runs, even where the scheduler cannot signal it alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from affvx.orchestrator.launch import prepare
from affvx.orchestrator.ledger import JobFiles
from affvx.protocol import EXIT_CANCELLED, EXIT_COMPLETE, block_stop_signals
from affvx.storage.atomic import atomic_write_json
from tests.support.runs import running_with_checkpoint, wait_until

JOB = "valence-visual-fold0-seed0"


def new_run(store: Path, path: Path) -> Path:
    flags = {
        "store": str(store),
        "folds": 2,
        "emotions": ("valence",),
        "modalities": (("visual",),),
        "model": {"name": "tcn"},
        "training": {"max_epochs": 500, "patience": 500},
    }
    plan = prepare(flags=flags, config_file=None, run_path=path, resume=False, note=lambda _: None)
    plan.run.create(plan.config, plan.folds, plan.jobs)
    return plan.run.path


def worker(run: Path) -> subprocess.Popen[bytes]:
    """The job's worker as a backend starts it: stop signals held until it can checkpoint."""
    return subprocess.Popen(
        [sys.executable, "-m", "affvx.orchestrator.worker", str(run), JOB],
        env={**os.environ, "AFFVX_BACKEND": "slurm", "AFFVX_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=block_stop_signals,
    )


def test_a_complete_job_is_not_run_again(small_store: Path, tmp_path: Path) -> None:
    run = new_run(small_store, tmp_path / "run")
    files = JobFiles(run / "jobs" / JOB)
    files.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(files.path / "result.json", {"job_id": JOB, "val_ccc": {"valence": 0.5}})
    assert worker(run).wait(timeout=60) == EXIT_COMPLETE
    assert files.state() is None and files.attempts() == []  # no attempt was made


def test_a_cancelled_job_does_not_start(small_store: Path, tmp_path: Path) -> None:
    run = new_run(small_store, tmp_path / "run")
    files = JobFiles(run / "jobs" / JOB)
    files.write_submission(attempt=1, backend="slurm", scheduler_id="7_0#1/2")
    files.mark_cancelled()
    assert worker(run).wait(timeout=60) == EXIT_CANCELLED
    assert files.state() is None


@pytest.mark.slow
def test_a_running_job_stops_when_it_is_marked_cancelled(
    small_store: Path, tmp_path: Path
) -> None:
    run = new_run(small_store, tmp_path / "run")
    files = JobFiles(run / "jobs" / JOB)
    files.write_submission(attempt=1, backend="slurm", scheduler_id="7_0#1/2")
    running = worker(run)
    try:
        wait_until(lambda: running_with_checkpoint(run), what="the attempt's first checkpoint")
        files.mark_cancelled()  # what `affvx cancel` does; nobody signals the job
        assert running.wait(timeout=120) == EXIT_CANCELLED  # its heartbeat read the mark
    finally:
        running.kill()
    assert [a["exit_reason"] for a in files.attempts()] == ["cancelled"]
    assert (files.path / "checkpoint.pt").exists()
