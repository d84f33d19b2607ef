"""`affvx launch --backend pbs` on a real one-node OpenPBS, and the faults a PBS cluster has:
a walltime shorter than the job (PBS warns nobody), qdel, an operator's qrerun, a mom that
dies and comes back."""

from __future__ import annotations

import json
import os
import signal
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

pytestmark = [pytest.mark.pbs, pytest.mark.slow]


def pbs_config(tmp_path: Path, **sections: dict) -> Path:
    """A --config file: fast polling (test jobs take seconds)."""
    return backend_config(tmp_path, "pbs", {"poll_interval_s": 0.5}, **sections)


def on_pbs(store: Path, run: Path, tmp_path: Path, *extra: object) -> list[str]:
    return grid(store, run, "--backend", "pbs", "--config", pbs_config(tmp_path), *extra)


def test_the_grid_on_pbs_gives_the_numbers_of_the_local_backend(
    pbs, small_store: Path, reference_run: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "grid of 'Ann' $(touch PWNED)"  # quoting in the qsub script
    result = cli(*on_pbs(small_store, run, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    for job_dir in job_dirs(run):
        [attempt] = attempts(job_dir)
        assert attempt["backend"] == "pbs" and attempt["exit_reason"] == "completed"
        assert "[" in attempt["scheduler_id"]  # a subjob of one array: <seq>[<index>].<server>
        assert (job_dir / "log" / f"{attempt['scheduler_id']}.err").exists()
    assert cli("collect", run).exit_code == 0
    assert report_files(run) == report_files(reference_run)  # one CPU per job on both


def test_a_walltime_shorter_than_the_job_means_checkpoint_resubmit_complete(
    pbs, small_store: Path, tmp_path: Path, cli
) -> None:
    """PBS sends nothing before the walltime: the job's own clock stops it with a checkpoint,
    the pool submits it again, and it completes with the numbers of an uninterrupted run."""
    job = "valence-visual-fold0-seed0"
    base = ("--folds", "2", "--emotions", "valence", "--modalities", "visual", "--model", "tcn")
    config = pbs_config(tmp_path, training={"max_epochs": 300, "patience": 1000})
    reference = tmp_path / "reference"
    result = cli("launch", "--store", small_store, "--run", reference, "--config", config, *base)
    assert result.exit_code == 0, result.stderr
    [uninterrupted] = attempts(reference / "jobs" / job)
    # short enough that the job cannot finish in one walltime, long enough for its start-up
    limit_s = max(int(0.5 * attempt_seconds(uninterrupted)), 20)
    assert attempt_seconds(uninterrupted) > limit_s, "the job is too short: raise max_epochs"
    run = tmp_path / "run"
    limit = ("--backend", "pbs", "--time-limit", f"{limit_s}s")
    result = cli("launch", "--store", small_store, "--run", run, "--config", config, *base, *limit)
    assert result.exit_code == 0, result.stderr
    lines = attempts(run / "jobs" / job)
    assert len(lines) >= 2 and lines[-1]["exit_reason"] == "completed", lines
    for line in lines[:-1]:  # every stop was the job's own, before PBS's walltime
        assert (line["exit_reason"], line["reason"]) == ("preempted", "stopped by time limit")
        assert attempt_seconds(line) < limit_s
    assert len({line["scheduler_id"] for line in lines}) == len(lines)  # resubmitted each time
    assert metrics_without_seconds(run / "jobs" / job) == metrics_without_seconds(
        reference / "jobs" / job
    )


def test_qdel_makes_a_job_cancelled_and_resume_submits_only_that_job(
    pbs, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_pbs(small_store, run, tmp_path))
    victim, _ = wait_until(lambda: running_with_checkpoint(run), what="a running job")[0]
    pbs.run("qdel", JobFiles(victim).state()["scheduler_id"])
    out, err = launcher.communicate()
    assert launcher.returncode == 1, err
    status = json.loads(cli("status", run, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 11, "CANCELLED": 1}
    assert next(j for j in status["jobs"] if j["state"] == "CANCELLED")["job_id"] == victim.name
    before = {d.name: (d / "attempts.jsonl").read_text() for d in job_dirs(run) if d != victim}
    result = cli("launch", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("submitted as") == 1
    assert {
        d.name: (d / "attempts.jsonl").read_text() for d in job_dirs(run) if d != victim
    } == before
    # the job checkpointed on qdel's SIGTERM and resumed from there
    assert [a["exit_reason"] for a in attempts(victim)] == ["preempted", "completed"]
    assert json.loads((victim / "progress.json").read_text())["resumed"] is True


def test_an_operators_qrerun_resumes_the_job_from_its_checkpoint(
    pbs, small_store: Path, reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_pbs(small_store, run, tmp_path))
    victim, _ = wait_until(lambda: running_with_checkpoint(run), what="a running job")[0]
    scheduler_id = JobFiles(victim).state()["scheduler_id"]
    pbs.run("qrerun", scheduler_id)  # root is an operator of the test server
    out, err = launcher.communicate()
    assert launcher.returncode == 0, err
    lines = attempts(victim)
    assert [a["exit_reason"] for a in lines] == ["preempted", "completed"]
    assert lines[0]["scheduler_id"] == lines[1]["scheduler_id"] == scheduler_id  # rerun by PBS
    assert json.loads((victim / "progress.json").read_text())["resumed"] is True
    assert metrics_without_seconds(victim) == metrics_without_seconds(
        reference_run / "jobs" / victim.name
    )


def test_affvx_cancel_qdels_every_unfinished_job(
    pbs, small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli(*on_pbs(small_store, run, tmp_path, "--detach"))
    assert result.exit_code == 0, result.stderr
    wait_until(lambda: running_with_checkpoint(run), what="a running job")
    result = cli("cancel", run)
    assert result.exit_code == 0, result.stderr
    wait_until(lambda: not pbs.jobs(), what="PBS to end every job")
    status = json.loads(cli("status", run, "--json").stdout)
    assert set(status["counts"]) <= {"COMPLETE", "CANCELLED"} and status["counts"]["CANCELLED"]
    last = {d.name: [a["exit_reason"] for a in attempts(d)][-1:] for d in job_dirs(run)}
    stopped = [name for name, reasons in last.items() if reasons == ["cancelled"]]
    assert stopped and all((run / "jobs" / name / "checkpoint.pt").exists() for name in stopped)


def test_pbs_mom_killed_and_restarted_mid_run(pbs, small_store: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    launcher = affvx(*on_pbs(small_store, run, tmp_path))
    wait_until(lambda: running_with_checkpoint(run), what="a running job")
    os.kill(pbs.mom_pid(), signal.SIGKILL)
    done = sum((d / "result.json").exists() for d in job_dirs(run))
    wait_until(
        lambda: sum((d / "result.json").exists() for d in job_dirs(run)) > done, what="progress"
    )
    pbs.start_mom()
    out, err = launcher.communicate()
    status = json.loads(cli("status", run, "--json").stdout)
    for job in status["jobs"]:
        job_dir = run / "jobs" / job["job_id"]
        assert job["state"] in ("COMPLETE", "FAILED", "CANCELLED", "PREEMPTED", "LOST"), job
        assert (job["state"] == "COMPLETE") == (job_dir / "result.json").exists(), job
    resumed = cli("launch", "--resume", "--run", run)
    assert resumed.exit_code == 0, resumed.stderr  # whatever was left resumes to the end
    assert json.loads(cli("status", run, "--json").stdout)["counts"] == {"COMPLETE": 12}
