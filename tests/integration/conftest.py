"""Fixtures for tests against real schedulers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import pbs_cluster
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


@pytest.fixture(scope="session")
def pbs_server() -> Iterator[pbs_cluster.PbsCluster]:
    """A one-node OpenPBS for the whole session; PBS_CONF_FILE points at it meanwhile.

    Skipped where it cannot run (no ../shared/vendor/openpbs, not root), except in CI,
    where the PBS tests must run."""
    missing = pbs_cluster.why_not_here()
    if missing and os.environ.get("CI"):
        pytest.fail(f"the PBS tests cannot run in CI: {missing}")
    if missing:
        pytest.skip(missing)
    with pbs_cluster.cluster_in_use() as cluster:
        yield cluster


@pytest.fixture
def pbs(pbs_server: pbs_cluster.PbsCluster) -> pbs_cluster.PbsCluster:
    """The server, idle (the previous test's jobs are gone)."""
    jobs = pbs_server.jobs()
    if jobs:
        pbs_server.run("qdel", "-W", "force", *jobs, check=False)
    pbs_server.wait_idle()
    return pbs_server
