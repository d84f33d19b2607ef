"""The pbs backend and the submitit plugin on a real one-node OpenPBS: the conformance
suite, arrays, qstat's answers, and submitit.AutoExecutor(cluster="pbs")."""

from __future__ import annotations

from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus
from affvx.cluster.pbs import PbsBackend
from tests.support.backend_suite import BackendConformance, python_job
from tests.support.packing import SIDE_BY_SIDE, shared_job
from tests.support.runs import process_state, wait_until

pytestmark = pytest.mark.pbs


class TestPbsConformance(BackendConformance):
    backend_name = "pbs"
    timeout_s = 120.0

    @pytest.fixture
    def backend(self, pbs):  # type: ignore[no-untyped-def]
        return PbsBackend(poll_interval_s=1.0)


def test_arrays_are_split_at_the_servers_max_array_size(pbs, tmp_path: Path) -> None:
    backend = PbsBackend()
    backend._max_array_size = 3  # as if the server said max_array_size = 3
    ids = backend.submit([python_job(tmp_path, f"t{i}", "pass") for i in range(7)])
    assert len(ids) == 7
    assert len({job_id.split("[")[0] for job_id in ids}) == 3  # arrays of 3, 3 and 1
    assert sum("[" in job_id for job_id in ids) == 6  # the last one is a plain job
    BackendConformance().wait_for(
        backend, ids, lambda s: all(not x.status.is_active() for x in s.values())
    )
    assert {(s.status, s.exit_code) for s in backend.poll(ids).values()} == {(JobStatus.EXITED, 0)}


def test_max_array_size_and_flavour_are_read_from_the_server(pbs) -> None:
    backend = PbsBackend()
    assert backend.max_array_size() == 10000
    assert backend.flavour == "pbspro"
    pbs.qmgr("set server max_array_size = 500")
    try:
        assert PbsBackend().max_array_size() == 500
    finally:
        pbs.qmgr("unset server max_array_size")


def test_a_job_past_its_walltime_is_timeout_and_leaves_nothing_running(
    pbs, tmp_path: Path
) -> None:
    """PBS kills it (SIGTERM, then SIGKILL) and records -29: TIMEOUT, not a plain failure.
    The job ignores its own clock and holds its stop signals (a hung job); PBS ends the job
    when its top shell dies, so the task must end the rest itself."""
    backend = PbsBackend()
    pid_file = tmp_path / "job.pid"
    hung = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.1)"
    request = python_job(tmp_path, "overrun", hung, time_limit_min=5 / 60)
    [job_id] = backend.submit([request])
    state = BackendConformance().wait_for(
        backend, [job_id], lambda s: not s[job_id].status.is_active()
    )[job_id]
    assert state.status is JobStatus.TIMEOUT, state
    assert "walltime" in state.reason
    job_pid = int(pid_file.read_text())
    wait_until(lambda: process_state(job_pid) in ("", "Z"), timeout_s=60, what="the job to end")


def test_a_server_that_does_not_answer_is_no_news(pbs, tmp_path: Path, monkeypatch) -> None:
    """A failed qstat keeps the last state seen: never "ended", never "lost"."""
    backend = PbsBackend()
    [job_id] = backend.submit([python_job(tmp_path, "slow", "import time; time.sleep(60)")])
    first = backend.poll([job_id])[job_id]
    assert first.status.is_active()
    monkeypatch.setenv("PBS_CONF_FILE", str(tmp_path / "nowhere.conf"))
    assert backend.poll([job_id])[job_id] == first
    monkeypatch.undo()
    backend.cancel([job_id])


def test_submitit_users_get_pbs_from_the_plugin(pbs, tmp_path: Path) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="pbs")
    executor.update_parameters(timeout_min=2, cpus_per_task=1, pbs_queue="workq")
    job = executor.submit(sum, [1, 2, 3])
    assert job.result() == 6
    assert job.job_id.split(".")[0].isdigit()  # PBS's own id: qstat and qdel take it
    squares = executor.map_array(pow, [1, 2, 3], [2, 2, 2])
    assert [j.result() for j in squares] == [1, 4, 9]
    assert len({j.job_id.split("[")[0] for j in squares}) == 1  # one job array
    assert squares[0].get_info(mode="force")["State"] == "COMPLETED"


def test_jobs_that_share_a_gpu_run_side_by_side_in_one_subjob(pbs, tmp_path: Path) -> None:
    backend = PbsBackend(poll_interval_s=1.0)
    jobs = [
        shared_job(tmp_path, "a0", SIDE_BY_SIDE, "a1"),
        shared_job(tmp_path, "a1", SIDE_BY_SIDE, "a0"),
    ]
    ids = backend.submit(jobs)
    assert [job_id.rpartition("#")[2] for job_id in ids] == ["0/2", "1/2"]
    assert len({job_id.rpartition("#")[0] for job_id in ids}) == 1  # one PBS job holds both
    BackendConformance().wait_for(
        backend, ids, lambda s: all(not x.status.is_active() for x in s.values())
    )
    assert {(s.status, s.exit_code) for s in backend.poll(ids).values()} == {(JobStatus.EXITED, 0)}
    assert [(tmp_path / f"{job.key}.id").read_text() for job in jobs] == ids
