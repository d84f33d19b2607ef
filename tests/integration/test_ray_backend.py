"""The ray backend on a real Ray instance (embedded, started by the backend): the
conformance suite, resources, the shim's manners inside a long-lived Ray worker, and Ray's
state API read from another process."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.cluster.base import JobRequest, JobStatus, SchedulerState
from affvx.cluster.ray import RayBackend
from affvx.cluster.task import TaskCommand
from tests.support.backend_suite import BackendConformance, python_job
from tests.support.runs import wait_until

pytestmark = pytest.mark.ray
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[RayBackend]:
    """One embedded Ray instance for the module (Ray allows one per process)."""
    owner = RayBackend(num_cpus=2, dashboard=True)  # the dashboard serves Ray's state API
    owner._connect()
    yield owner
    owner.close()


class TestRayConformance(BackendConformance):
    backend_name = "ray"

    @pytest.fixture
    def backend(self, ray_instance: RayBackend) -> RayBackend:
        return RayBackend()  # joins the module's instance; closing it leaves Ray running


def test_a_worker_keeps_its_signal_handlers_after_a_task(
    ray_instance: RayBackend, tmp_path: Path
) -> None:
    """Ray reuses a worker for the next task: the shim must give back the handlers it took.
    The job and the check run in one task, so in one worker."""
    import ray

    from affvx.cluster.ray import run_ray_task
    from affvx.cluster.task import TaskCommand

    @ray.remote(num_cpus=1)
    def handlers_around_a_job(pickled_task: bytes) -> tuple[list[str], int, list[str]]:
        import signal

        def handlers() -> list[str]:
            return [repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)]

        before = handlers()
        code = run_ray_task(pickled_task, 1)
        return before, code, handlers()

    job = python_job(tmp_path, "first", "pass")
    pickled_task = pickle.dumps(TaskCommand.for_request(job, None))
    before, code, after = ray.get(handlers_around_a_job.remote(pickled_task))
    assert code == 0 and after == before


def module_job(tmp_path: Path, key: str) -> JobRequest:
    """A `python -m` job (what the warm server can fork) that records who started it; it runs
    in the repository, where `tests` is importable."""
    command = (sys.executable, "-m", "tests.support.pack_member", str(tmp_path / key), "0")
    return JobRequest(key=key, command=command, workdir=REPOSITORY, log_dir=tmp_path / "logs")


def started_by(tmp_path: Path, key: str) -> dict:
    return json.loads((tmp_path / key).read_text())


@pytest.mark.parametrize("warm_start", [True, False])
def test_the_jobs_of_a_ray_worker_are_forks_of_its_one_warm_server(
    ray_instance: RayBackend, tmp_path: Path, warm_start: bool
) -> None:
    """Three jobs in turn in one Ray worker (one task runs them, so one worker): with warm
    starts all three are forked by one warm server that the worker started for the first;
    without, each is the worker's own child."""
    import ray

    from affvx.cluster.ray import run_ray_task

    @ray.remote(num_cpus=1)
    def three_jobs_in_one_worker(pickled_tasks: list[bytes]) -> tuple[list[int], int]:
        codes = [run_ray_task(task, 1, warm_start) for task in pickled_tasks]
        return codes, os.getpid()

    keys = ["first", "second", "third"]
    tasks = [pickle.dumps(TaskCommand.for_request(module_job(tmp_path, k), None)) for k in keys]
    codes, worker = ray.get(three_jobs_in_one_worker.remote(tasks))
    assert codes == [0, 0, 0]
    parents = [started_by(tmp_path, k) for k in keys]
    if warm_start:
        assert len({p["parent"] for p in parents}) == 1 and parents[0]["parent"] != worker
        assert "affvx.cluster.warm" in parents[0]["parent_command"]
    else:
        assert {p["parent"] for p in parents} == {worker}


def test_the_backend_starts_its_jobs_warm_unless_told_not_to(
    ray_instance: RayBackend, tmp_path: Path
) -> None:
    for warm_start in (True, False):
        key = f"warm-{warm_start}"
        backend = RayBackend(warm_start=warm_start)
        [task_id] = backend.submit([module_job(tmp_path, key)])
        [state] = wait_until(lambda b=backend, i=task_id: ended(b, i), what=f"the job {key}")
        assert state.exit_code == 0
        forked = "affvx.cluster.warm" in started_by(tmp_path, key)["parent_command"]
        assert forked is warm_start, started_by(tmp_path, key)


def ended(backend: RayBackend, task_id: str) -> list[SchedulerState]:
    """[its state] once the task has ended, else []."""
    state = backend.poll([task_id])[task_id]
    return [state] if state.status is JobStatus.EXITED else []


def test_a_fraction_of_a_gpu_and_extra_resources_reach_ray(tmp_path: Path) -> None:
    backend = RayBackend(
        num_gpus=0.25, resources=["big_mem=1"], runtime_env={"env_vars": {"A": "1"}}
    )
    options = backend.task_options(python_job(tmp_path, "frac", "pass", cpus=2, mem_gb=1.5))
    assert options["num_gpus"] == 0.25 and options["num_cpus"] == 2
    assert options["resources"] == {"big_mem": 1.0}
    assert options["memory"] == int(1.5 * 2**30)
    assert options["runtime_env"] == {"env_vars": {"A": "1"}}
    [shown] = backend.render([python_job(tmp_path, "frac", "pass")])
    assert "num_gpus=0.25" in shown and "127.0.0.1" in shown


def test_a_job_that_shares_its_gpu_asks_ray_for_its_share(tmp_path: Path) -> None:
    shared = python_job(tmp_path, "quarter", "pass", gpus=1, jobs_per_gpu=4)
    assert RayBackend().task_options(shared)["num_gpus"] == 0.25
    assert (
        RayBackend().task_options(python_job(tmp_path, "whole", "pass", gpus=1))["num_gpus"] == 1.0
    )
    task = TaskCommand.for_request(shared, None)
    assert ("AFFVX_GPU_MEMORY_FRACTION", "0.2500") in task.env  # each takes 1/4 of the memory


OBSERVER = """
import json, sys
from affvx.cluster.base import JobRequest, JobStatus, SchedulerState
from affvx.cluster.ray import RayBackend
states = RayBackend().observe(sys.argv[1].split(","), json.loads(sys.argv[2]))
print(json.dumps({"ray imported": "ray" in sys.modules,
                  "states": {i: [s.status.value, s.reason] for i, s in states.items()}}))
"""


def test_another_process_reads_the_tasks_states_from_rays_state_api(
    ray_instance: RayBackend, tmp_path: Path
) -> None:
    """What `affvx status` does: ask the dashboard, from a process without ray, about a
    driver's finished, running and waiting tasks."""
    backend = RayBackend()
    [done] = backend.submit([python_job(tmp_path, "done", "pass")])
    wait_until(lambda: backend.poll([done])[done].status.value == "EXITED", what="a quick task")
    release = tmp_path / "release"
    hold = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)"
    running, waiting = backend.submit(
        [python_job(tmp_path, "whole", hold, cpus=2), python_job(tmp_path, "wait", "pass")]
    )
    reach = backend.reach()
    assert reach["dashboard_url"] and reach["ray_job_id"]

    def observed() -> dict[str, list[str]] | None:
        ids = ",".join([done, running, waiting])
        answer = subprocess.run(
            [sys.executable, "-c", OBSERVER, ids, json.dumps(reach)],
            capture_output=True,
            text=True,
            check=True,
        )
        seen = json.loads(answer.stdout)
        assert not seen["ray imported"]
        states = seen["states"]
        wanted = {done: "EXITED", running: "RUNNING", waiting: "PENDING"}
        return states if all(states.get(i, [""])[0] == s for i, s in wanted.items()) else None

    states = wait_until(observed, what="Ray's state API to show all three tasks")
    assert states[waiting][1].startswith("ray: PENDING")
    release.touch()
    wait_until(
        lambda: not any(s.status.is_active() for s in backend.poll([running, waiting]).values())
    )


def test_without_a_dashboard_the_state_api_is_out_of_reach_in_one_line() -> None:
    from affvx.cluster.errors import ClusterError

    with pytest.raises(ClusterError, match="no dashboard"):
        RayBackend().observe(["abc"], {"ray_job_id": "01000000", "dashboard_url": ""})
    with pytest.raises(ClusterError, match="did not answer"):
        RayBackend().observe(["abc"], {"ray_job_id": "01000000", "dashboard_url": "127.0.0.1:9"})
