"""Two attempts of one job never write at once: the attempt that starts makes an older one
that still runs stand down (it checkpoints and exits), then resumes from its checkpoint.

This is what happens when Ray runs a task again after its worker died while the job it had
started was still checkpointing, or when a resumed run meets the jobs of a killed driver.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from affvx.orchestrator.ledger import JobFiles
from affvx.protocol import EXIT_REQUEUE
from tests.support.runs import one_cell_run, running_with_checkpoint, start_worker, wait_until

pytestmark = pytest.mark.slow

JOB = "valence-visual-fold0-seed0"


def test_a_starting_attempt_makes_the_running_one_stand_down_first(
    small_store: Path, tmp_path: Path
) -> None:
    run = one_cell_run(small_store, tmp_path / "run", max_epochs=500, patience=500)
    files = JobFiles(run / "jobs" / JOB)
    older = start_worker(run, JOB)
    wait_until(lambda: running_with_checkpoint(run), what="the first attempt's checkpoint")
    newer = start_worker(run, JOB)
    try:
        assert older.wait(timeout=120) == EXIT_REQUEUE  # it checkpointed and stood down
        wait_until(lambda: (files.state() or {}).get("attempt") == 2, what="the second attempt")
        [first] = files.attempts()
        assert (first["attempt"], first["exit_reason"]) == (1, "preempted")
        second = files.state() or {}
        assert second["pid"] == newer.pid and second["state"] == "RUNNING"
        ended, began = (
            dt.datetime.fromisoformat(t) for t in (first["end_utc"], second["started_utc"])
        )
        assert ended <= began  # never both at once
        wait_until(lambda: (files.progress() or {}).get("resumed"), what="a resumed attempt")
        assert not (files.path / "stand-down").exists()
    finally:
        newer.terminate()
        newer.wait(timeout=120)
        older.kill()
