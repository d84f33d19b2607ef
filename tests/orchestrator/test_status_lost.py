"""LOST detection: a job the files call RUNNING is LOST only when every source agrees it is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from affvx.cluster.base import JobStatus, SchedulerState
from affvx.orchestrator.ledger import HEARTBEAT_STALE_S, JobFiles, JobState, view_job
from affvx.orchestrator.status import merge_scheduler_state


def _exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_job(
    tmp_path: Path, *, pid: int, node: str, heartbeat_age_s: float | None
) -> JobFiles:
    files = JobFiles(tmp_path / "job")
    files.write_submission(attempt=1, backend="slurm", scheduler_id="77_3")
    files.write_state(
        {"state": "RUNNING", "attempt": 1, "pid": pid, "node": node, "scheduler_id": "77_3"}
    )
    if heartbeat_age_s is not None:
        files.touch_heartbeat()
        past = time.time() - heartbeat_age_s
        os.utime(files.path / "heartbeat", (past, past))
    return files


def _merged(files: JobFiles, scheduled: SchedulerState | None):  # type: ignore[no-untyped-def]
    view = view_job("valence-visual-fold0-seed0", files)
    merge_scheduler_state(view, scheduled)
    return view


def test_a_dead_process_on_this_host_is_lost(tmp_path: Path) -> None:
    files = _running_job(tmp_path, pid=_exited_pid(), node=socket.gethostname(), heartbeat_age_s=1)
    view = _merged(files, None)
    assert view.state is JobState.LOST
    assert "is gone" in view.reason


def test_a_live_process_with_a_fresh_heartbeat_stays_running(tmp_path: Path) -> None:
    files = _running_job(tmp_path, pid=os.getpid(), node=socket.gethostname(), heartbeat_age_s=1)
    assert _merged(files, None).state is JobState.RUNNING


def test_a_finished_scheduler_job_with_a_stale_heartbeat_is_lost(tmp_path: Path) -> None:
    stale = HEARTBEAT_STALE_S + 30
    files = _running_job(tmp_path, pid=1, node="node-elsewhere", heartbeat_age_s=stale)
    view = _merged(files, SchedulerState(JobStatus.EXITED, exit_code=0))
    assert view.state is JobState.LOST
    assert "77_3" in view.reason


def test_a_stale_heartbeat_is_not_enough_while_the_scheduler_runs_the_job(tmp_path: Path) -> None:
    stale = HEARTBEAT_STALE_S + 30
    files = _running_job(tmp_path, pid=1, node="node-elsewhere", heartbeat_age_s=stale)
    assert _merged(files, SchedulerState(JobStatus.RUNNING)).state is JobState.RUNNING


def test_an_ended_job_with_a_fresh_heartbeat_is_not_yet_lost(tmp_path: Path) -> None:
    # the scheduler may report the end before the job's last files are written
    files = _running_job(tmp_path, pid=1, node="node-elsewhere", heartbeat_age_s=1)
    assert _merged(files, SchedulerState(JobStatus.EXITED)).state is JobState.RUNNING


def test_a_forgotten_job_without_heartbeat_is_lost(tmp_path: Path) -> None:
    files = _running_job(tmp_path, pid=1, node="node-elsewhere", heartbeat_age_s=None)
    view = _merged(files, None)
    assert view.state is JobState.LOST
    assert "never" in view.reason


def test_complete_without_result_is_lost_never_complete(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "job")
    files.write_submission(attempt=1, backend="slurm", scheduler_id="77_3")
    files.write_state({"state": "COMPLETE", "attempt": 1, "node": "n1"})
    view = _merged(files, SchedulerState(JobStatus.EXITED, exit_code=0))
    assert view.state is JobState.LOST
    assert "result.json is missing" in view.reason
