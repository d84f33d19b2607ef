"""Jobs that share a GPU N ways, packed N to an array task on SLURM and PBS: the scripts the
backends submit (no scheduler needed), the task that runs its jobs side by side (real
processes), and what a packed job's scheduler id means to poll and cancel."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from affvx.cluster.arrays import SubmititArrayBackend
from affvx.cluster.base import JobRequest, JobStatus, Resources, SchedulerState
from affvx.cluster.pbs import PbsBackend
from affvx.cluster.slurm import SlurmBackend
from affvx.cluster.task import TaskCommand, TaskPack, pack_exit_status, packed_id, unpacked
from affvx.protocol import EXIT_CANCELLED, EXIT_INPUT, EXIT_REQUEUE, JobEnvironment
from tests.support.backend_suite import SIGNAL_RECORDER
from tests.support.runs import wait_until

SHARED = Resources(cpus=2, gpus=1, mem_gb=8, time_limit_min=60, jobs_per_gpu=4)


def requests(n: int, resources: Resources = SHARED) -> list[JobRequest]:
    run = Path("/runs/grid")
    return [
        JobRequest(
            key=f"job{i}",
            command=("/usr/bin/python3", "-m", "affvx.orchestrator.worker", str(run), f"job{i}"),
            workdir=run,
            log_dir=run / "jobs" / f"job{i}" / "log",
            resources=resources,
        )
        for i in range(n)
    ]


def script_lines(backend: SubmititArrayBackend, n: int) -> list[str]:
    [script] = backend.render(requests(n))
    return script.splitlines()


def test_slurm_packs_n_jobs_into_an_array_task_that_holds_one_gpu() -> None:
    lines = script_lines(SlurmBackend(python="/usr/bin/python3"), 24)
    for expected in (
        "#SBATCH --array=0-5%6",  # 24 jobs, 4 a task
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",  # 4 jobs x 2 CPUs
        "#SBATCH --mem=32768MB",  # 4 jobs x 8 GB
        (
            "# affvx: 24 jobs in 6 array tasks, up to 4 side by side in each on its one GPU "
            "(--jobs-per-gpu)"
        ),
    ):
        assert expected in lines, expected


def test_pbs_packs_n_jobs_into_an_array_task_that_holds_one_gpu() -> None:
    lines = script_lines(PbsBackend(flavour="pbspro", python="/usr/bin/python3"), 10)
    for expected in (
        "#PBS -J 0-2",  # 10 jobs, at most 4 a task: 3 tasks (4, 3 and 3 jobs)
        "#PBS -l select=1:ncpus=8:ngpus=1:mem=32768mb",
        (
            "# affvx: 10 jobs in 3 array tasks, up to 4 side by side in each on its one GPU "
            "(--jobs-per-gpu)"
        ),
    ):
        assert expected in lines, expected


def test_jobs_that_do_not_share_a_gpu_get_a_task_each() -> None:
    whole = dataclasses.replace(SHARED, jobs_per_gpu=1)
    [script] = SlurmBackend(python="/usr/bin/python3").render(requests(6, whole))
    assert "#SBATCH --array=0-5%6" in script.splitlines()
    assert "#SBATCH --cpus-per-task=2" in script.splitlines()
    assert "side by side" not in script


def test_packs_are_as_few_as_hold_the_jobs_and_even() -> None:
    [chunk] = SubmititArrayBackend._chunks(requests(10), size=1000)
    assert [len(task) for task in chunk] == [4, 3, 3]
    assert sorted(r.key for task in chunk for r in task) == sorted(f"job{i}" for i in range(10))


def test_a_packed_id_names_its_task_and_place() -> None:
    assert packed_id("123_4", 1, 3) == "123_4#1/3"
    assert unpacked("123_4#1/3") == ("123_4", 1, 3)
    assert unpacked("12[3].server#0/2") == ("12[3].server", 0, 2)
    assert unpacked("123_4") is None


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([0, 0, 0], 0),
        ([0, EXIT_REQUEUE, 0], EXIT_REQUEUE),  # the task runs again; complete jobs end at once
        ([EXIT_CANCELLED, 0], EXIT_CANCELLED),  # stopped for good: never a requeue
        ([EXIT_REQUEUE, EXIT_CANCELLED], EXIT_REQUEUE),
        ([EXIT_REQUEUE, 1, 0], 1),  # a failure wins: the pool reads who checkpointed
        ([EXIT_INPUT, -9], -9),  # a retry may help the killed one
        ([EXIT_INPUT, 0], EXIT_INPUT),
    ],
)
def test_a_packs_exit_status(codes: list[int], expected: int) -> None:
    assert pack_exit_status(codes) == expected


class RecordingArrays(SubmititArrayBackend):
    """A stand-in scheduler that says every task runs and records what it is asked."""

    name = "recording"
    warning_s = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.polled: list[list[str]] = []
        self.cancelled: list[str] = []

    def poll_tasks(self, task_ids: list[str]) -> dict[str, SchedulerState]:
        self.polled.append(task_ids)
        return {t: SchedulerState(JobStatus.RUNNING, node=f"node-{t}") for t in task_ids}

    def cancel_tasks(self, task_ids: list[str]) -> None:
        self.cancelled.extend(task_ids)

    def parameters(self, resources, name):  # type: ignore[no-untyped-def]
        return {}

    def max_array_size(self) -> int:
        return 1000

    def _executor(self, folder):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _task_callable(self, task):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def render(self, requests):  # type: ignore[no-untyped-def]
        return []


def test_packed_jobs_are_polled_as_their_task_once() -> None:
    backend = RecordingArrays()
    states = backend.poll(["7_0#0/2", "7_0#1/2", "7_1"])
    assert backend.polled == [["7_0", "7_1"]]
    assert {i: s.node for i, s in states.items()} == {
        "7_0#0/2": "node-7_0",
        "7_0#1/2": "node-7_0",
        "7_1": "node-7_1",
    }


def test_a_pack_is_cancelled_only_when_all_its_jobs_are() -> None:
    backend = RecordingArrays()
    backend.cancel(["7_0#0/2", "7_1#0/3", "7_1#2/3", "8"])
    assert backend.cancelled == ["8"]  # 7_0 and 7_1 run on for their other jobs
    backend.cancel(["7_0#1/2", "7_0#0/2"])
    assert backend.cancelled == ["8", "7_0"]


# a member that writes what it was told and exits with the status its name asks for
MEMBER = """
import json, os, sys
names = ("AFFVX_SCHEDULER_JOB_ID", "AFFVX_CPUS", "AFFVX_GPU_MEMORY_FRACTION", "AFFVX_TEST_KEY")
json.dump({n: os.environ.get(n) for n in names}, open(sys.argv[1], "w"))
sys.exit(int(sys.argv[2]))
"""


def member(tmp_path: Path, key: str, *arguments: str, code: str = MEMBER) -> TaskCommand:
    request = JobRequest(
        key=key,
        command=(sys.executable, "-c", code, *arguments),
        workdir=tmp_path,
        log_dir=tmp_path / key,
        resources=SHARED,
        env=(("AFFVX_TEST_KEY", key),),
    )
    return TaskCommand.for_request(request, time_limit_s=None)


def test_a_pack_runs_its_jobs_side_by_side_each_as_itself(tmp_path: Path) -> None:
    import json

    codes = ["0", str(EXIT_REQUEUE), "0"]
    pack = TaskPack(
        tuple(member(tmp_path, f"m{k}", str(tmp_path / f"m{k}.json"), codes[k]) for k in range(3))
    )
    status = pack.run(JobEnvironment(scheduler_job_id="55_2", cpus=6), "55_2")
    assert status == EXIT_REQUEUE
    told = [json.loads((tmp_path / f"m{k}.json").read_text()) for k in range(3)]
    assert [t["AFFVX_SCHEDULER_JOB_ID"] for t in told] == ["55_2#0/3", "55_2#1/3", "55_2#2/3"]
    assert [t["AFFVX_TEST_KEY"] for t in told] == ["m0", "m1", "m2"]
    assert {t["AFFVX_CPUS"] for t in told} == {"2"}  # the task's 6 CPUs, shared
    assert {t["AFFVX_GPU_MEMORY_FRACTION"] for t in told} == {"0.2500"}  # 1/N, N = 4
    assert all((tmp_path / f"m{k}" / "55_2.out").exists() for k in range(3))


PACK_PROCESS = """
import sys
from affvx.cluster.task import TaskCommand, TaskPack
from affvx.protocol import JobEnvironment
code, out_dir = sys.argv[1:]
members = tuple(
    TaskCommand(command=(sys.executable, "-c", code), workdir=out_dir,
                env=(("AFFVX_TEST_KEY", f"{out_dir}/m{k}"),), log_dir=f"{out_dir}/log{k}")
    for k in range(2)
)
sys.exit(TaskPack(members).run(JobEnvironment(scheduler_job_id="9"), "9"))
"""


def test_a_stop_signal_reaches_every_job_of_the_pack(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    task = subprocess.Popen(
        [sys.executable, "-c", PACK_PROCESS, SIGNAL_RECORDER, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    ready = [tmp_path / f"m{k}.started" for k in range(2)]
    wait_until(lambda: all(p.exists() for p in ready), timeout_s=60, what="both jobs to start")
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=60) == EXIT_REQUEUE  # both checkpointed and exited 75
    assert [(tmp_path / f"m{k}.signals").read_text().split() for k in range(2)] == [
        ["SIGTERM"],
        ["SIGTERM"],
    ]


def test_a_pack_forks_its_worker_jobs_from_one_warm_server(tmp_path: Path) -> None:
    """Jobs run as `python -m MODULE` (the worker) start as forks of one server that has
    imported their code once, not as fresh interpreters."""
    import json

    members = []
    for k, code in enumerate(("0", str(EXIT_REQUEUE))):
        request = JobRequest(
            key=f"m{k}",
            command=(
                sys.executable,
                "-m",
                "tests.support.pack_member",
                str(tmp_path / f"m{k}"),
                code,
            ),
            workdir=tmp_path,
            log_dir=tmp_path / f"log{k}",
            resources=SHARED,
        )
        members.append(TaskCommand.for_request(request, time_limit_s=None))
    status = TaskPack(tuple(members)).run(JobEnvironment(scheduler_job_id="3", cpus=2), "3")
    assert status == EXIT_REQUEUE
    told = [json.loads((tmp_path / f"m{k}").read_text()) for k in range(2)]
    parents = {t["parent"] for t in told}
    assert len(parents) == 1 and parents != {os.getpid()}  # both forked by one server
    assert [t["AFFVX_SCHEDULER_JOB_ID"] for t in told] == ["3#0/2", "3#1/2"]


def test_a_job_alone_in_its_task_keeps_the_tasks_id() -> None:
    backend = RecordingArrays()
    [lone] = requests(1)
    assert isinstance(
        backend._runnable([lone]), TaskCommand
    )  # the id the pool knows is the task's
    [chunk] = SubmititArrayBackend._chunks(requests(5), size=1000)
    assert [len(task) for task in chunk] == [3, 2]
