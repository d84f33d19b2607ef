"""Fixtures for tests against real schedulers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.slurm_cluster import SlurmCluster, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster for the whole session; SLURM_CONF points at it meanwhile."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    try:
        yield cluster
    finally:
        patch.undo()
        stop_cluster(cluster)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The cluster, idle (the previous test's jobs are gone)."""
    slurm_cluster.run("scancel", "--user", "root", check=False)
    slurm_cluster.wait_idle()
    return slurm_cluster
