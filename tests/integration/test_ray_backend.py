"""The ray backend on a real Ray instance (embedded, started by the backend): the
conformance suite, resources, and the shim's manners inside a long-lived Ray worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.cluster.ray import RayBackend
from tests.support.backend_suite import BackendConformance, python_job

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[RayBackend]:
    """One embedded Ray instance for the module (Ray allows one per process)."""
    owner = RayBackend(num_cpus=2)
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
    def handlers_around_a_job(task: TaskCommand) -> tuple[list[str], int, list[str]]:
        import signal

        def handlers() -> list[str]:
            return [repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)]

        before = handlers()
        code = run_ray_task(task, 1)
        return before, code, handlers()

    job = python_job(tmp_path, "first", "pass")
    before, code, after = ray.get(handlers_around_a_job.remote(TaskCommand.for_request(job, None)))
    assert code == 0 and after == before


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
