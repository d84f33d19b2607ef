"""A worker reads its job's files before anything else, and while it runs: a complete job
is never run again (a requeued task of packed jobs reruns them all), and a cancelled job
stops wherever it runs, even where the scheduler cannot signal it alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from affvx.orchestrator.ledger import JobFiles
from affvx.protocol import EXIT_CANCELLED, EXIT_COMPLETE
from affvx.storage.atomic import atomic_write_json
from tests.support.runs import one_cell_run, running_with_checkpoint, start_worker, wait_until

JOB = "valence-visual-fold0-seed0"


def test_a_complete_job_is_not_run_again(small_store: Path, tmp_path: Path) -> None:
    run = one_cell_run(small_store, tmp_path / "run", max_epochs=500, patience=500)
    files = JobFiles(run / "jobs" / JOB)
    files.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(files.path / "result.json", {"job_id": JOB, "val_ccc": {"valence": 0.5}})
    assert start_worker(run, JOB, "slurm").wait(timeout=60) == EXIT_COMPLETE
    assert files.state() is None and files.attempts() == []  # no attempt was made


def test_a_cancelled_job_does_not_start(small_store: Path, tmp_path: Path) -> None:
    run = one_cell_run(small_store, tmp_path / "run", max_epochs=500, patience=500)
    files = JobFiles(run / "jobs" / JOB)
    files.write_submission(attempt=1, backend="slurm", scheduler_id="7_0#1/2")
    files.mark_cancelled()
    assert start_worker(run, JOB, "slurm").wait(timeout=60) == EXIT_CANCELLED
    assert files.state() is None


@pytest.mark.slow
def test_a_running_job_stops_when_it_is_marked_cancelled(
    small_store: Path, tmp_path: Path
) -> None:
    run = one_cell_run(small_store, tmp_path / "run", max_epochs=500, patience=500)
    files = JobFiles(run / "jobs" / JOB)
    files.write_submission(attempt=1, backend="slurm", scheduler_id="7_0#1/2")
    running = start_worker(run, JOB, "slurm")
    try:
        wait_until(lambda: running_with_checkpoint(run), what="the attempt's first checkpoint")
        files.mark_cancelled()  # what `affvx cancel` does; nobody signals the job
        assert running.wait(timeout=120) == EXIT_CANCELLED  # its heartbeat read the mark
    finally:
        running.kill()
    assert [a["exit_reason"] for a in files.attempts()] == ["cancelled"]
    assert (files.path / "checkpoint.pt").exists()
