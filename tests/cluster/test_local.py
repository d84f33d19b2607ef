"""The local backend: the shared conformance suite, plus slots, pinning and time limits."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus, Resources
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


# a job that says which GPU it was given and its memory share, then holds it until released
ON_GPU_UNTIL_RELEASED = """
import os, pathlib, time
print(os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("AFFVX_GPU_MEMORY_FRACTION"), flush=True)
deadline = time.monotonic() + 60
while not pathlib.Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def gpu_lines(tmp_path: Path, keys: list[str], ids: list[str]) -> list[str]:
    return [
        (tmp_path / "logs" / key / f"{job_id}.out").read_text().strip()
        for key, job_id in zip(keys, ids)
    ]


@pytest.mark.parametrize(
    ("fake_gpus", "expected"), [(["0"], ["0 0.5000"] * 2), (["0", "1"], ["0 0.5000", "1 0.5000"])]
)
def test_jobs_per_gpu_puts_n_jobs_on_a_gpu_spreading_them_first(
    tmp_path: Path, fake_gpus: list[str], expected: list[str]
) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    keys = ["a", "b"]
    with LocalBackend(cpus=cpus, gpus=fake_gpus, slot_dir=str(tmp_path / "s")) as backend:
        jobs = [
            python_job(tmp_path, key, ON_GPU_UNTIL_RELEASED, gpus=1, jobs_per_gpu=2)
            for key in keys
        ]
        ids = backend.submit(jobs)
        wait_for_jobs(
            backend,
            ids,
            lambda s: (
                all(x.status is JobStatus.RUNNING for x in s.values())
                and all(
                    (tmp_path / "logs" / k / f"{i}.out").read_text() for k, i in zip(keys, ids)
                )
            ),
        )
        assert sorted(gpu_lines(tmp_path, keys, ids)) == expected
        (tmp_path / "release").touch()
        wait_for_jobs(
            backend, ids, lambda s: all(x.status is JobStatus.EXITED for x in s.values())
        )


def test_a_gpu_goes_to_n_jobs_and_never_to_n_plus_one(tmp_path: Path) -> None:
    """The machine-wide claims: N places on a GPU, then none; a whole claim (another launch
    without sharing) waits while shares are held, and shares wait while it is held whole."""
    from affvx.cluster.slots import MachineSlots

    slots, other_launch = MachineSlots(tmp_path), MachineSlots(tmp_path)
    held = [slots.claim_share("gpu", ["0"], 3) for _ in range(3)]
    assert all(h is not None and h[0] == "0" for h in held)
    assert slots.claim_share("gpu", ["0"], 3) is None
    assert other_launch.claim("gpu", ["0"], 1) is None
    for _, fds in held:  # type: ignore[misc]
        slots.release(fds)
    whole = other_launch.claim("gpu", ["0"], 1)
    assert whole is not None and slots.claim_share("gpu", ["0"], 3) is None
    other_launch.release(whole.values())
    assert slots.claim_share("gpu", ["0"], 3) is not None


def test_without_sharing_a_gpu_goes_to_one_job(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    with LocalBackend(cpus=cpus, gpus=["0"], slot_dir=str(tmp_path / "s")) as backend:
        ids = backend.submit(
            [python_job(tmp_path, k, ON_GPU_UNTIL_RELEASED, gpus=1) for k in "ab"]
        )
        wait_for_jobs(backend, ids, lambda s: s[ids[0]].status is JobStatus.RUNNING)
        assert (
            backend.poll(ids)[ids[1]].status is JobStatus.PENDING
        )  # a CPU is free; the GPU is not
        (tmp_path / "release").touch()
        wait_for_jobs(
            backend, ids, lambda s: all(x.status is JobStatus.EXITED for x in s.values())
        )
    assert gpu_lines(tmp_path, ["a", "b"], ids) == ["0 None", "0 None"]


def test_jobs_per_gpu_refuses_a_job_of_several_gpus() -> None:
    with pytest.raises(ValueError, match="jobs_per_gpu = 2 shares one GPU"):
        Resources(gpus=2, jobs_per_gpu=2)


def test_mps_without_a_gpu_or_without_mps_is_one_note_and_no_mps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert LocalBackend(mps=True, gpus=[]).notes() == [
        "--mps: no GPU on this machine; the jobs run without MPS"
    ]
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control there
    backend = LocalBackend(mps=True, gpus=["0"])
    assert backend.notes() == [
        "--mps: nvidia-cuda-mps-control is not on the PATH; the jobs run without MPS"
    ]
    assert not backend.mps and LocalBackend(gpus=["0"]).notes() == []


# NVIDIA's control program as far as affvx uses it: `-d` starts the daemon, `quit` on stdin
# stops it; this one writes down each call and the pipe directory it was given
FAKE_MPS_CONTROL = """#!/bin/sh
echo "${1:-$(cat)} $CUDA_MPS_PIPE_DIRECTORY" >> "$MPS_CALLS"
"""


def test_mps_starts_a_private_daemon_for_the_gpu_jobs_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_MPS_CONTROL)
    control.chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MPS_CALLS", str(calls))
    job = "import os; print(os.environ.get('CUDA_MPS_PIPE_DIRECTORY'))"
    cpus = sorted(os.sched_getaffinity(0))[:1]
    slots = str(tmp_path / "s")
    with LocalBackend(cpus=cpus, gpus=["0"], mps=True, slot_dir=slots) as backend:
        assert backend.notes() == []
        ids = backend.submit([python_job(tmp_path, k, job, gpus=1) for k in "ab"])
        wait_for_jobs(
            backend, ids, lambda s: all(x.status is JobStatus.EXITED for x in s.values())
        )
    started, stopped = calls.read_text().splitlines()
    pipe = started.split()[1]
    assert started == f"-d {pipe}" and stopped == f"quit {pipe}"
    assert pipe.startswith(tempfile.gettempdir()) and "affvx-mps-" in pipe
    assert set(gpu_lines(tmp_path, ["a", "b"], ids)) == {pipe}  # one daemon for both jobs
    assert not Path(pipe).exists()  # its directories go with it
