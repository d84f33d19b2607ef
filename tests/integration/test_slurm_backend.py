"""The slurm backend on a real one-node SLURM cluster: the conformance suite and arrays."""

from __future__ import annotations

from pathlib import Path

import pytest

from affvx.cluster.base import JobStatus
from affvx.cluster.slurm import SlurmBackend
from tests.support.backend_suite import BackendConformance, python_job

pytestmark = pytest.mark.slurm


class TestSlurmConformance(BackendConformance):
    backend_name = "slurm"
    timeout_s = 120.0

    @pytest.fixture
    def backend(self, slurm):  # type: ignore[no-untyped-def]
        return SlurmBackend(signal_grace_s=30)


def test_arrays_are_split_at_the_clusters_max_array_size(slurm, tmp_path: Path) -> None:
    backend = SlurmBackend()
    backend._max_array_size = 3  # as if the cluster said MaxArraySize=3
    ids = backend.submit([python_job(tmp_path, f"t{i}", "pass") for i in range(7)])
    assert len(ids) == 7
    assert len({job_id.split("_")[0] for job_id in ids}) == 3  # arrays of 3, 3 and 1
    assert max(int(job_id.split("_")[1]) for job_id in ids if "_" in job_id) <= 2
    BackendConformance().wait_for(
        backend, ids, lambda s: all(not x.status.is_active() for x in s.values())
    )
    assert {s.status for s in backend.poll(ids).values()} == {JobStatus.EXITED}


def test_max_array_size_is_read_from_the_cluster(slurm) -> None:
    assert SlurmBackend().max_array_size() == 1001
