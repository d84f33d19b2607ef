"""`affvx launch --backend slurm` on a real one-node SLURM cluster (no accounting: states
come from squeue / scontrol and the run directory), and the faults a real cluster has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from affvx.orchestrator.ledger import JobFiles
from tests.support.runs import (
    affvx,
    attempt_seconds,
    attempts,
    backend_config,
    grid,
    job_dirs,
    metrics_without_seconds,
    report_files,
    running_with_checkpoint,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_config(tmp_path: Path, **sections: dict) -> Path:
    """A --config file: fast polling and a short warning (test jobs take seconds)."""
    return backend_config(
        tmp_path, "slurm", {"poll_interval_s": 0.5, "signal_grace_s": 30}, **sections
    )


def seconds_run(job_dir: Path) -> float:
    """Wall time of a job's single uninterrupted attempt."""
    [attempt] = attempts(job_dir)
    return attempt_seconds(attempt)


def on_slurm(store: Path, run: Path, tmp_path: Path, *extra: object) -> list[str]:
    return grid(store, run, "--backend", "slurm", "--config", slurm_config(tmp_path), *extra)


def test_the_grid_on_slurm_gives_the_numbers_of_the_local_backend(
    slurm, small_store: Path, reference_run: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli(*on_slurm(small_store, run, tmp_path))
    assert result.exit_code == 0, result.stderr
    for job_dir in job_dirs(run):
        [attempt] = attempts(job_dir)
        assert attempt["backend"] == "slurm" and attempt["exit_reason"] == "completed"
        assert "_" in attempt["scheduler_id"]  # an array task: <array id>_<index>
        assert (job_dir / "log" / f"{attempt['scheduler_id']}.err").exists()
    assert cli("collect", run).exit_code == 0
    assert report_files(run) == report_files(reference_run)  # one CPU per job on both


def test_scontrol_requeue_resumes_the_job_from_its_checkpoint(
    slurm, small_store: Path, reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_slurm(small_store, run, tmp_path))
    victim, _ = wait_until(
        lambda: running_with_checkpoint(run), what="a running job with a checkpoint"
    )[0]
    scheduler_id = JobFiles(victim).state()["scheduler_id"]
    slurm.run("scontrol", "requeue", scheduler_id)
    out, err = launcher.communicate()
    assert launcher.returncode == 0, err
    lines = attempts(victim)
    assert [a["exit_reason"] for a in lines] == ["preempted", "completed"]
    assert (
        lines[0]["scheduler_id"] == lines[1]["scheduler_id"] == scheduler_id
    )  # same job, requeued
    assert json.loads((victim / "progress.json").read_text())["resumed"] is True
    assert metrics_without_seconds(victim) == metrics_without_seconds(
        reference_run / "jobs" / victim.name
    )


def test_a_walltime_shorter_than_the_job_means_warn_checkpoint_requeue_complete(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    # fold 0 needs ~90 s of training here (a margin for faster machines), more than the 60 s
    # limit, so it cannot finish in one allocation: SLURM must warn it (--signal fires anywhere
    # up to a minute early), and it must checkpoint, requeue itself and complete
    settings = {"training": {"max_epochs": 560, "patience": 1000}}
    base = ("--folds", "2", "--emotions", "valence", "--modalities", "visual", "--model", "tcn")
    # the same two jobs without a time limit, on the local backend: the numbers to match
    local = tmp_path / "local"
    config = slurm_config(tmp_path, **settings)
    result = cli("launch", "--store", small_store, "--run", local, "--config", config, *base)
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    result = cli(
        "launch",
        "--store",
        small_store,
        "--run",
        run,
        "--config",
        config,
        *base,
        "--backend",
        "slurm",
        "--time-limit",
        "1",
    )
    assert result.exit_code == 0, result.stderr
    reasons = {d.name: [a["exit_reason"] for a in attempts(d)] for d in job_dirs(run)}
    assert all(r[-1] == "completed" and set(r[:-1]) <= {"preempted"} for r in reasons.values()), (
        reasons
    )
    # which jobs outlive the limit depends on the machine: those that did on the local backend
    # (same grid, same concurrency) must have been stopped at the warning at least once
    longer_than_limit = [d.name for d in job_dirs(local) if seconds_run(d) > 60]
    assert longer_than_limit, "no job needs more than the 60 s limit: raise max_epochs"
    assert all("preempted" in reasons[name] for name in longer_than_limit), reasons
    for job_dir in job_dirs(run):
        assert "DUE TO TIME LIMIT" not in "".join(
            p.read_text() for p in (run / "slurm").glob("*.err")
        )
        assert metrics_without_seconds(job_dir) == metrics_without_seconds(
            local / "jobs" / job_dir.name
        )


def test_scancel_makes_a_job_cancelled_and_resume_submits_only_that_job(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_slurm(small_store, run, tmp_path))
    victim, _ = wait_until(lambda: running_with_checkpoint(run), what="a running job")[0]
    slurm.run("scancel", JobFiles(victim).state()["scheduler_id"])
    out, err = launcher.communicate()
    assert launcher.returncode == 1
    status = json.loads(cli("status", run, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 11, "CANCELLED": 1}
    assert next(j for j in status["jobs"] if j["state"] == "CANCELLED")["job_id"] == victim.name
    before = {d.name: (d / "attempts.jsonl").read_text() for d in job_dirs(run) if d != victim}
    result = cli("launch", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr
    assert "submitted" in result.stderr and result.stderr.count("submitted as") == 1
    assert {
        d.name: (d / "attempts.jsonl").read_text() for d in job_dirs(run) if d != victim
    } == before
    # scancel from outside affvx: the job checkpointed on SIGTERM ("preempted" as it saw it),
    # the scheduler's CANCELLED made it CANCELLED in status and kept it from being resubmitted
    assert [a["exit_reason"] for a in attempts(victim)] == ["preempted", "completed"]
    assert json.loads(cli("status", run, "--json").stdout)["counts"] == {"COMPLETE": 12}


def test_affvx_cancel_scancels_every_unfinished_job(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli(*on_slurm(small_store, run, tmp_path, "--detach"))
    assert result.exit_code == 0, result.stderr
    wait_until(lambda: running_with_checkpoint(run), what="a running job")
    result = cli("cancel", run)
    assert result.exit_code == 0, result.stderr
    wait_until(lambda: not slurm.run("squeue", "-h").stdout.strip(), what="SLURM to end every job")
    status = json.loads(cli("status", run, "--json").stdout)
    assert set(status["counts"]) <= {"COMPLETE", "CANCELLED"} and status["counts"]["CANCELLED"]
    # the jobs that were running got SIGTERM from scancel, checkpointed and were not requeued
    last = {d.name: [a["exit_reason"] for a in attempts(d)][-1:] for d in job_dirs(run)}
    stopped = [name for name, reasons in last.items() if reasons == ["cancelled"]]
    assert stopped and all((run / "jobs" / name / "checkpoint.pt").exists() for name in stopped)


def test_slurmd_killed_and_restarted_mid_run(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_slurm(small_store, run, tmp_path))
    wait_until(lambda: running_with_checkpoint(run), what="a running job")
    slurm.kill_slurmd()
    # the running jobs carry on without their node daemon; wait until one more finishes
    done = sum((d / "result.json").exists() for d in job_dirs(run))
    wait_until(
        lambda: sum((d / "result.json").exists() for d in job_dirs(run)) > done, what="progress"
    )
    slurm.start_slurmd()
    out, err = launcher.communicate()
    status = json.loads(cli("status", run, "--json").stdout)
    for job in status["jobs"]:
        job_dir = run / "jobs" / job["job_id"]
        assert job["state"] in ("COMPLETE", "FAILED", "CANCELLED", "PREEMPTED", "LOST"), job
        assert (job["state"] == "COMPLETE") == (job_dir / "result.json").exists(), job
    resumed = cli("launch", "--resume", "--run", run)
    assert resumed.exit_code == 0, resumed.stderr  # whatever was left resumes to the end
    assert json.loads(cli("status", run, "--json").stdout)["counts"] == {"COMPLETE": 12}


def test_a_run_in_a_directory_with_a_weird_name_runs(
    slurm, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "grid of 'Ann' $(touch PWNED)"
    result = cli(
        "launch",
        "--store",
        small_store,
        "--run",
        run,
        "--folds",
        "2",
        "--emotions",
        "arousal",
        "--modalities",
        "mfcc",
        "--model",
        "tcn",
        "--epochs",
        "1",
        "--backend",
        "slurm",
        "--config",
        slurm_config(tmp_path),
    )
    assert result.exit_code == 0, result.stderr
    assert not any(p.name == "PWNED" for p in Path(os.getcwd()).iterdir())
    assert not (tmp_path / "PWNED").exists()
    assert json.loads(cli("status", run, "--json").stdout)["counts"] == {"COMPLETE": 2}
