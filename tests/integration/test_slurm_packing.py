"""Jobs that share a GPU, packed N to an array task, on a real one-node SLURM cluster (its
two GPUs are files: they schedule, no process uses them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus, SchedulerState
from affvx.cluster.slurm import SlurmBackend
from tests.support.packing import SIDE_BY_SIDE, UNTIL_REQUEUED, shared_job

pytestmark = pytest.mark.slurm


def ended(states: dict[str, SchedulerState]) -> bool:
    return all(not s.status.is_active() for s in states.values())


def wait_for(
    backend: SlurmBackend,
    ids: list[str],
    done: Callable[[dict[str, SchedulerState]], bool],
    timeout_s: float,
) -> None:
    """Poll until `done(states)` holds (the scheduler's own pace; bounded)."""
    deadline = time.monotonic() + timeout_s
    while not done(states := backend.poll(ids)):
        assert time.monotonic() < deadline, f"timed out waiting; last states {states}"
        time.sleep(0.2)


def test_jobs_that_share_a_gpu_run_two_to_an_array_task_side_by_side(
    slurm, tmp_path: Path
) -> None:
    backend = SlurmBackend(signal_grace_s=30)
    # packs take every second job: a0 with a1, b0 with b1
    jobs = [
        shared_job(tmp_path, "a0", SIDE_BY_SIDE, "a1"),
        shared_job(tmp_path, "b0", SIDE_BY_SIDE, "b1"),
        shared_job(tmp_path, "a1", SIDE_BY_SIDE, "a0"),
        shared_job(tmp_path, "b1", SIDE_BY_SIDE, "b0"),
    ]
    ids = backend.submit(jobs)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0#0/2", f"{array}_1#0/2", f"{array}_0#1/2", f"{array}_1#1/2"]
    wait_for(backend, ids, ended, timeout_s=180)
    states = backend.poll(ids)
    assert {(s.status, s.exit_code) for s in states.values()} == {(JobStatus.EXITED, 0)}
    told = [(tmp_path / f"{job.key}.id").read_text() for job in jobs]
    assert told == ids  # each job knows itself by its own id


def test_a_requeued_task_runs_its_jobs_again(slurm, tmp_path: Path) -> None:
    backend = SlurmBackend(signal_grace_s=30)
    ids = backend.submit([shared_job(tmp_path, k, UNTIL_REQUEUED) for k in ("p", "q")])
    started = [tmp_path / "p.started", tmp_path / "q.started"]
    wait_for(backend, ids, lambda s: all(p.exists() for p in started), timeout_s=120)
    task = ids[0].split("#")[0]
    slurm.run("scontrol", "requeue", task)
    wait_for(
        backend,
        ids,
        lambda s: ended(s) and (tmp_path / "p.rerun").exists(),
        timeout_s=180,
    )
    for key in ("p", "q"):
        assert (tmp_path / f"{key}.stopped").exists()  # checkpointed on the requeue's SIGTERM
        assert (tmp_path / f"{key}.rerun").exists()  # and ran again with the task
    assert {(s.status, s.exit_code) for s in backend.poll(ids).values()} == {(JobStatus.EXITED, 0)}


def test_a_task_is_cancelled_when_all_its_jobs_are(slurm, tmp_path: Path) -> None:
    backend = SlurmBackend(signal_grace_s=30)
    ids = backend.submit([shared_job(tmp_path, k, UNTIL_REQUEUED) for k in ("x", "y")])
    started = [tmp_path / "x.started", tmp_path / "y.started"]
    wait_for(backend, ids, lambda s: all(p.exists() for p in started), timeout_s=120)
    backend.cancel(ids[:1])  # one job alone: its mark stops it; the task runs on
    assert {s.status for s in backend.poll(ids).values()} == {JobStatus.RUNNING}
    backend.cancel(ids)
    wait_for(backend, ids, ended, timeout_s=120)
    assert {s.status for s in backend.poll(ids).values()} == {JobStatus.CANCELLED}
