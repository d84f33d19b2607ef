"""Two attempts of one job never write at once: the attempt that starts makes an older one
that still runs stand down (it checkpoints and exits), then resumes from its checkpoint.

This is what happens when Ray runs a task again after its worker died while the job it had
started was still checkpointing, or when a resumed run meets the jobs of a killed driver.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affvx.orchestrator.launch import prepare
from affvx.orchestrator.ledger import JobFiles
from affvx.protocol import EXIT_REQUEUE, block_stop_signals
from tests.support.runs import running_with_checkpoint, wait_until

pytestmark = pytest.mark.slow

JOB = "valence-visual-fold0-seed0"


def worker(run: Path) -> subprocess.Popen[bytes]:
    """The job's worker as a backend starts it: stop signals held until it can checkpoint."""
    return subprocess.Popen(
        [sys.executable, "-m", "affvx.orchestrator.worker", str(run), JOB],
        env={**os.environ, "AFFVX_BACKEND": "local", "AFFVX_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=block_stop_signals,
    )


def test_a_starting_attempt_makes_the_running_one_stand_down_first(
    small_store: Path, tmp_path: Path
) -> None:
    flags = {
        "store": str(small_store),
        "folds": 2,
        "emotions": ("valence",),
        "modalities": (("visual",),),
        "model": {"name": "tcn"},
        "training": {"max_epochs": 500, "patience": 500},
    }
    plan = prepare(
        flags=flags, config_file=None, run_path=tmp_path / "run", resume=False, note=lambda _: None
    )
    plan.run.create(plan.config, plan.folds, plan.jobs)
    run = plan.run.path
    files = JobFiles(run / "jobs" / JOB)
    older = worker(run)
    wait_until(lambda: running_with_checkpoint(run), what="the first attempt's checkpoint")
    newer = worker(run)
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
