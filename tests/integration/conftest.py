"""Fixtures for tests against real schedulers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.slurm_cluster import SlurmCluster, cluster_in_use


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster for the whole session; SLURM_CONF points at it meanwhile."""
    with cluster_in_use(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The cluster, idle (the previous test's jobs are gone)."""
    slurm_cluster.run("scancel", "--user", "root", check=False)
    slurm_cluster.wait_idle()
    return slurm_cluster
