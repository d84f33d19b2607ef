"""The ray backend on a real Ray instance (embedded, started by the backend): the
conformance suite, resources, and the shim's manners inside a long-lived Ray worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus
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
    """Ray reuses a worker for the next task: the shim must give back the handlers it took."""
    import ray

    backend = RayBackend()
    [job_id] = backend.submit([python_job(tmp_path, "first", "pass")])
    BackendConformance().wait_for(
        backend, [job_id], lambda s: s[job_id].status is JobStatus.EXITED
    )

    @ray.remote(num_cpus=1)
    def sigterm_handler() -> str:
        import signal

        return repr(signal.getsignal(signal.SIGTERM))

    before = ray.get(sigterm_handler.remote())
    assert "forward" not in before


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
