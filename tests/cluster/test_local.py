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


def wait_for_jobs(backend: LocalBackend, ids: list[str], done, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll the backend until `done(states)` holds, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done(states := backend.poll(ids)):
        assert time.monotonic() < deadline, f"timed out waiting; last states {states}"
        backend.wait(0.1)
    return states


# a job that says where it may run, then holds its slot until the test lets it go
PINNED_UNTIL_RELEASED = """
import os, pathlib, time
print(sorted(os.sched_getaffinity(0)), flush=True)
deadline = time.monotonic() + 60
while not pathlib.Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def test_jobs_wait_for_free_slots_and_run_pinned_to_their_own_cpus(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    code = PINNED_UNTIL_RELEASED
    with LocalBackend(max_parallel=len(cpus)) as backend:
        ids = backend.submit([python_job(tmp_path, f"j{i}", code) for i in range(len(cpus) + 1)])
        states = backend.poll(ids)
        assert sum(s.status is JobStatus.RUNNING for s in states.values()) == len(cpus)
        assert states[ids[-1]].status is JobStatus.PENDING
        (tmp_path / "release").touch()
        wait_for_jobs(
            backend, ids, lambda s: all(x.status is JobStatus.EXITED for x in s.values())
        )
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
    # it never ends by itself: only a SIGKILL can end it (exit code -9)
    stubborn = (
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\nwhile True: signal.pause()"
    )
    with LocalBackend(max_parallel=1, kill_delay_s=0.5, signal_grace_s=0.1) as backend:
        [job_id] = backend.submit(
            [python_job(tmp_path, "stubborn", stubborn, time_limit_min=1 / 60)]
        )
        states = wait_for_jobs(backend, [job_id], lambda s: not s[job_id].status.is_active())
    assert states[job_id].status is JobStatus.TIMEOUT and states[job_id].exit_code == -9


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


def test_two_launches_on_one_machine_share_its_cpus(tmp_path: Path) -> None:
    """Each backend may use the same CPU; the second waits until the first one's job ends."""
    cpu = sorted(os.sched_getaffinity(0))[:1]
    slots = str(tmp_path / "slots")
    first = LocalBackend(cpus=cpu, slot_dir=slots)
    second = LocalBackend(cpus=cpu, slot_dir=slots)
    try:
        [holder] = first.submit([python_job(tmp_path, "holder", PINNED_UNTIL_RELEASED)])
        [waiter] = second.submit([python_job(tmp_path, "waiter", "print('ran')")])
        assert first.poll([holder])[holder].status is JobStatus.RUNNING
        assert second.poll([waiter])[waiter].status is JobStatus.PENDING
        (tmp_path / "release").touch()
        wait_for_jobs(first, [holder], lambda s: s[holder].status is JobStatus.EXITED)
        states = wait_for_jobs(second, [waiter], lambda s: s[waiter].status is JobStatus.EXITED)
        assert states[waiter].exit_code == 0
    finally:
        first.close()
        second.close()
