"""`affvx launch --backend ray` on real Ray: a two-node cluster on this machine that loses a
node mid-grid, a driver killed mid-grid, and a local run resumed on Ray.

The cluster is Ray's own `ray.cluster_utils.Cluster`: a head and a second node, each a raylet
with its own processes on this machine; removing the second node kills its raylet and its
workers, as a lost machine would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.orchestrator.ledger import JobFiles
from tests.support.runs import (
    affvx,
    attempts,
    grid,
    job_dirs,
    metrics_without_seconds,
    process_state,
    report_files,
    running_with_checkpoint,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def two_nodes() -> Iterator[tuple[object, object]]:
    """A Ray cluster of a head and one more node, one CPU each; (cluster, second node)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, second
    finally:
        cluster.shutdown()


def raylet_pid(node: object) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid  # type: ignore[attr-defined]


def ancestors(pid: int) -> list[int]:
    chain = []
    with contextlib.suppress(OSError, ValueError):
        while pid > 1:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2 :].split()[1])
            chain.append(pid)
    return chain


def frozen_on(run: Path, raylet: int) -> tuple[Path, int] | None:
    """A job training under `raylet` that has checkpointed, stopped (SIGSTOP) mid-training."""
    for job_dir, pid in running_with_checkpoint(run):
        if raylet not in ancestors(pid):
            continue
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda pid=pid: process_state(pid) in ("T", "Z", ""), timeout_s=30)
        if process_state(pid) == "T" and not (job_dir / "result.json").exists():
            return job_dir, pid
        os.kill(pid, signal.SIGCONT)
    return None


def test_losing_a_node_mid_grid_costs_a_retry_not_a_result(
    two_nodes, small_store: Path, reference_run: Path, tmp_path: Path
) -> None:
    cluster, second = two_nodes
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run, "--backend", "ray", "--ray-address", cluster.address))
    victim, pid = wait_until(lambda: frozen_on(run, raylet_pid(second)), what="a job on node 2")
    cluster.remove_node(second, allow_graceful=False)  # its raylet and workers die
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # if it survived its node, it must still stand down
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err
    for job_dir in job_dirs(run):
        assert JobFiles(job_dir).result() is not None
        assert metrics_without_seconds(job_dir) == metrics_without_seconds(
            reference_run / "jobs" / job_dir.name
        )
        assert sum(a["exit_reason"] == "completed" for a in attempts(job_dir)) == 1
    lines = attempts(victim)
    assert len(lines) >= 2 and lines[-1]["exit_reason"] == "completed"


def test_a_killed_driver_is_finished_by_resume_without_running_a_job_twice(
    small_store: Path, reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run, "--backend", "ray"))
    wait_until(
        lambda: any(JobFiles(d).result() for d in job_dirs(run)) and running_with_checkpoint(run),
        what="a complete job and a running one",
    )
    launcher.send_signal(signal.SIGKILL)
    launcher.communicate()
    complete_before = {
        d.name: (d / "result.json").stat().st_mtime_ns
        for d in job_dirs(run)
        if (d / "result.json").exists()
    }
    resumed = affvx("launch", "--resume", "--run", str(run), "--backend", "ray")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert len(job_dirs(run)) == 12
    for job_dir in job_dirs(run):
        lines = attempts(job_dir)
        assert sum(a["exit_reason"] == "completed" for a in lines) == 1, lines
        assert metrics_without_seconds(job_dir) == metrics_without_seconds(
            reference_run / "jobs" / job_dir.name
        )
    for name, mtime in complete_before.items():
        assert (run / "jobs" / name / "result.json").stat().st_mtime_ns == mtime


def test_a_local_run_resumed_on_ray_gives_the_local_report(
    small_store: Path, reference_run: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run, "--max-parallel", "2"))
    wait_until(lambda: any(JobFiles(d).result() for d in job_dirs(run)), what="a complete job")
    launcher.send_signal(signal.SIGTERM)  # the local jobs checkpoint and stop with it
    launcher.communicate()
    assert sum(JobFiles(d).result() is not None for d in job_dirs(run)) < 12
    result = cli("launch", "--resume", "--run", run, "--backend", "ray")
    assert result.exit_code == 0, result.stderr
    backends = {a["backend"] for d in job_dirs(run) for a in attempts(d)}
    assert backends == {"local", "ray"}
    assert cli("collect", run).exit_code == 0
    assert report_files(run) == report_files(reference_run)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A cluster started as an administrator would (`ray start --head`), private ports and
    temp dir; the addresses a driver can join it by."""
    import sys

    ray = str(Path(sys.executable).with_name("ray"))
    gcs, client = free_port(), free_port()
    temp = Path(f"/tmp/affvx-ray-{os.getpid()}")  # short: Ray's socket paths must fit
    start = [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs)]
    start += ["--ray-client-server-port", str(client), "--num-cpus", "2", "--temp-dir", str(temp)]
    start += ["--include-dashboard", "false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield {
            "auto": "auto",
            "gcs": f"127.0.0.1:{gcs}",
            "client": f"ray://127.0.0.1:{client}",
            "temp": str(temp),
        }
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, check=False)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("kind", ["auto", "gcs", "client"])
def test_a_running_cluster_is_joined_by_each_kind_of_address(
    ray_head: dict[str, str], kind: str, small_store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = affvx(
        *("launch", "--store", str(small_store), "--run", str(run), "--model", "tcn"),
        *("--folds", "2", "--emotions", "valence", "--modalities", "visual", "--epochs", "1"),
        *("--backend", "ray", "--ray-address", ray_head[kind]),
    )
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err + client_server_logs(Path(ray_head["temp"]))
    for job_dir in job_dirs(run):
        [attempt] = attempts(job_dir)
        assert (attempt["backend"], attempt["exit_reason"]) == ("ray", "completed")


def client_server_logs(temp: Path) -> str:
    """The ends of the Ray client servers' error logs (a client that could not connect is
    explained there), for a failure's message."""
    logs = sorted(temp.glob("session_latest/logs/ray_client_server*.err"))
    return "".join(f"\n--- {log.name}:\n{log.read_text()[-3000:]}" for log in logs)


def test_affvx_cancel_stops_the_ray_tasks_and_leaves_jobs_cancelled_or_complete(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*grid(small_store, run, "--backend", "ray"))
    victim, _ = wait_until(lambda: running_with_checkpoint(run), what="a running job")[0]
    assert cli("cancel", run).exit_code == 0
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, err  # not every job complete
    status = json.loads(cli("status", run, "--json").stdout)
    assert set(status["counts"]) <= {"COMPLETE", "CANCELLED"} and "CANCELLED" in status["counts"]
    # the running job was told (SIGTERM through its task), checkpointed, and is resumable
    assert attempts(victim)[-1]["exit_reason"] in ("cancelled", "completed")
    assert not live_workers(run)


def test_status_merges_rays_view_of_the_runs_tasks(small_store: Path, tmp_path: Path, cli) -> None:
    """While the driver runs, `affvx status` (another process) asks Ray's state API: the job
    Ray has not started yet says why it waits. Without a dashboard it says, in one line, that
    it shows the run directory alone."""
    run = tmp_path / "run"
    launcher = affvx(
        *("launch", "--store", str(small_store), "--run", str(run), "--model", "tcn"),
        *("--folds", "2", "--emotions", "valence", "--modalities", "visual", "--epochs", "4"),
        *("--backend", "ray", "--backend-option", "num_cpus=1"),
        *("--backend-option", "dashboard=true"),
    )

    def one_running_one_waiting() -> dict | None:
        answer = cli("status", run, "--json")
        if answer.exit_code != 0:  # the run directory is not written yet
            return None
        status = json.loads(answer.stdout)
        by_state = {job["state"]: job for job in status["jobs"]}
        waiting = by_state.get("SUBMITTED", {})
        return (
            status
            if "RUNNING" in by_state and waiting.get("reason", "").startswith("ray: PENDING")
            else None
        )

    status = wait_until(one_running_one_waiting, what="status to show Ray's pending task")
    assert status["note"] == ""
    driver = json.loads((run / "driver.json").read_text())
    driver["scheduler"]["dashboard_url"] = ""  # as a run whose instance has no dashboard
    (run / "driver.json").write_text(json.dumps(driver))
    status = json.loads(cli("status", run, "--json").stdout)
    assert "state API is out of reach" in status["note"] and len(status["jobs"]) == 2
    assert cli("cancel", run).exit_code == 0
    launcher.communicate(timeout=300)


def live_workers(run: Path) -> list[int]:
    """Pids of worker processes of `run` still alive."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if b"affvx.orchestrator.worker" in cmdline and str(run).encode() in cmdline:
                    alive.append(int(entry.name))
    return alive
