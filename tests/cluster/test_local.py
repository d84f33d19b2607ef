"""The local backend: the shared conformance suite, plus slots, pinning and time limits."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus
from affvx.cluster.errors import ClusterError
from affvx.cluster.local import LocalBackend
from tests.support.backend_suite import SIGNAL_RECORDER, python_job


def test_jobs_wait_for_free_slots_and_run_pinned_to_their_own_cpus(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    code = "import os, time; print(sorted(os.sched_getaffinity(0))); time.sleep(0.5)"
    with LocalBackend(max_parallel=len(cpus)) as backend:
        ids = backend.submit([python_job(tmp_path, f"j{i}", code) for i in range(len(cpus) + 1)])
        states = backend.poll(ids)
        assert sum(s.status is JobStatus.RUNNING for s in states.values()) == len(cpus)
        assert states[ids[-1]].status is JobStatus.PENDING
        while not all(s.status is JobStatus.EXITED for s in backend.poll(ids).values()):
            backend.wait(0.2)
    seen = [
        (tmp_path / "logs" / f"j{i}" / f"{ids[i]}.out").read_text().strip()
        for i in range(len(cpus))
    ]
    assert sorted(seen) == sorted(f"[{c}]" for c in cpus)  # one CPU each, all different


def test_time_limit_warns_with_sigusr2_then_terminates(tmp_path: Path) -> None:
    with LocalBackend(max_parallel=1, kill_delay_s=5.0, signal_grace_s=1.5) as backend:
        [job_id] = backend.submit(
            [python_job(tmp_path, "slow", SIGNAL_RECORDER, time_limit_min=3 / 60)]
        )
        while backend.poll([job_id])[job_id].status.is_active():
            backend.wait(0.1)
        state = backend.poll([job_id])[job_id]
    assert (tmp_path / "slow.signals").read_text().split() == ["SIGUSR2", "SIGTERM"]
    assert state.status is JobStatus.EXITED and state.exit_code == 75  # it checkpointed in time


def test_a_job_ignoring_sigterm_is_killed_after_the_kill_delay(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGUSR2, signal.SIG_IGN); time.sleep(60)"
    )
    with LocalBackend(max_parallel=1, kill_delay_s=0.5, signal_grace_s=0.1) as backend:
        [job_id] = backend.submit(
            [python_job(tmp_path, "stubborn", stubborn, time_limit_min=1 / 60)]
        )
        started = time.monotonic()
        while backend.poll([job_id])[job_id].status.is_active():
            backend.wait(0.1)
        state = backend.poll([job_id])[job_id]
    assert state.status is JobStatus.TIMEOUT and state.exit_code == -9
    assert time.monotonic() - started < 30


def test_a_job_asking_for_more_cpus_than_exist_is_refused(tmp_path: Path) -> None:
    with LocalBackend() as backend:
        with pytest.raises(ClusterError, match="asks for 999 CPUs"):
            backend.submit([python_job(tmp_path, "big", "pass", cpus=999)])


def test_close_stops_running_jobs(tmp_path: Path) -> None:
    backend = LocalBackend(max_parallel=1, kill_delay_s=2.0)
    [job_id] = backend.submit([python_job(tmp_path, "victim", SIGNAL_RECORDER)])
    while not (tmp_path / "victim.started").exists():
        backend.wait(0.05)
        backend.poll([job_id])
    pid = int((tmp_path / "victim.started").read_text())
    backend.close()
    assert "SIGTERM" in (tmp_path / "victim.signals").read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
