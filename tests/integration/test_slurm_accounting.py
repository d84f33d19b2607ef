"""The slurm backend on a cluster with accounting (slurmdbd + MariaDB): states from sacct."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.cluster.slurm import SlurmBackend
from affvx.orchestrator.ledger import JobFiles
from tests.support.backend_suite import BackendConformance
from tests.support.runs import affvx, attempts, grid, running_with_checkpoint, wait_until
from tests.support.slurm_cluster import SlurmCluster, cluster_in_use

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def accounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with cluster_in_use(tmp_path_factory.mktemp("slurm-accounting"), accounting=True) as cluster:
        yield cluster


class TestSlurmConformanceWithAccounting(BackendConformance):
    backend_name = "slurm"
    timeout_s = 120.0

    @pytest.fixture
    def backend(self, accounted: SlurmCluster) -> SlurmBackend:
        accounted.run("scancel", "--user", "root", check=False)
        accounted.wait_idle()
        backend = SlurmBackend(signal_grace_s=30)
        assert backend._use_sacct()
        return backend


def test_sacct_reports_the_requeue_and_the_launch_completes(
    accounted: SlurmCluster, small_store: Path, tmp_path: Path, cli
) -> None:
    accounted.wait_idle()
    config = tmp_path / "slurm.toml"
    config.write_text('[backend.slurm]\npoll_interval_s = 0.5\naccounting = "sacct"\n')
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run, "--backend", "slurm", "--config", config))
    victim, _ = wait_until(lambda: running_with_checkpoint(run), what="a running job")[0]
    scheduler_id = JobFiles(victim).state()["scheduler_id"]
    accounted.run("scontrol", "requeue", scheduler_id)
    wait_until(
        lambda: (
            "REQUEUED"
            in accounted.run(
                "sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", scheduler_id, check=False
            ).stdout
        ),
        what="sacct's REQUEUED",
    )
    out, err = launcher.communicate()
    assert launcher.returncode == 0, err
    assert [a["exit_reason"] for a in attempts(victim)] == ["preempted", "completed"]
    status = json.loads(cli("status", run, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 12}
    states = accounted.run(
        "sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", scheduler_id.split("_")[0]
    ).stdout
    assert f"{scheduler_id}|COMPLETED" in states.splitlines()
