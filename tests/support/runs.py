"""Helpers for tests that launch grids and crash them: commands, waiting on files, reports."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from affvx.orchestrator.ledger import JobFiles


def grid(store: Path, run: Path, *extra: object) -> list[str]:
    """The test grid: 3 folds x 2 emotions x 2 modality sets = 12 tcn jobs of 4 epochs."""
    return [
        "launch",
        "--store",
        str(store),
        "--run",
        str(run),
        "--folds",
        "3",
        "--emotions",
        "valence,arousal",
        "--modalities",
        "visual",
        "--modalities",
        "visual,mfcc",
        "--model",
        "tcn",
        "--epochs",
        "4",
        *map(str, extra),
    ]


def affvx(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "affvx", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, timeout_s: float = 120.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll the run directory until `condition()` is truthy (bounded; files are the signal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def job_dirs(run: Path) -> list[Path]:
    return sorted((run / "jobs").iterdir()) if (run / "jobs").exists() else []


def attempts(job_dir: Path) -> list[dict]:
    return JobFiles(job_dir).attempts()


def running_with_checkpoint(run: Path) -> list[tuple[Path, int]]:
    """Jobs that are RUNNING and have checkpointed at least once, with their pids."""
    found = []
    for job_dir in job_dirs(run):
        state = JobFiles(job_dir).state() or {}
        if (
            state.get("state") == "RUNNING"
            and (job_dir / "checkpoint.pt").exists()
            and not (job_dir / "result.json").exists()
        ):
            found.append((job_dir, int(state["pid"])))
    return found


def process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` (R, S, D, T stopped, Z zombie), "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return stat[stat.rindex(")") + 2]  # the name in parentheses may hold spaces


def frozen_mid_training(run: Path) -> tuple[Path, int] | None:
    """Stop (SIGSTOP) a job that has checkpointed and is still training; return it frozen.

    A job is only returned once the kernel has stopped it and, stopped, it still has no result
    and an epoch to train: a signal sent to it now certainly lands mid-job, however fast the
    machine. A job that got further than that is let go on (SIGCONT).
    """
    for job_dir, pid in running_with_checkpoint(run):
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        wait_until(
            lambda pid=pid: process_state(pid) in ("T", "Z", ""), timeout_s=30, what="SIGSTOP"
        )
        progress = JobFiles(job_dir).progress() or {}
        if (
            process_state(pid) == "T"
            and not (job_dir / "result.json").exists()
            and progress.get("epoch", 0) < (progress.get("max_epochs") or 0)
        ):
            return job_dir, pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return None


def report_files(run: Path) -> dict[str, bytes]:
    """The report's tables and submission, byte for byte."""
    report = run / "report"
    names = ["folds.csv", "summary.csv"]
    names += [f"submission/VA_Set/{p.name}" for p in (report / "submission/VA_Set").iterdir()]
    return {name: (report / name).read_bytes() for name in names}


def metrics_without_seconds(job_dir: Path) -> list[str]:
    return [row.rsplit(",", 1)[0] for row in (job_dir / "metrics.csv").read_text().splitlines()]


def backend_config(tmp_path: Path, backend: str, settings: dict, **sections: dict) -> Path:
    """A --config file with `[backend.<backend>]` settings and other sections."""
    lines = [f"[backend.{backend}]"] + [f"{key} = {value!r}" for key, value in settings.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value!r}" for key, value in values.items()]
    path = tmp_path / f"{backend}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def attempt_seconds(attempt: dict) -> float:
    """Wall time of one line of attempts.jsonl."""
    start, end = (dt.datetime.fromisoformat(attempt[k]) for k in ("start_utc", "end_utc"))
    return (end - start).total_seconds()


def one_cell_run(store: Path, run: Path, **training: object) -> Path:
    """A created run of one cell (valence, visual, tcn, 2 folds), as `affvx launch` creates
    it, with these [training] settings; no job started."""
    from affvx.orchestrator.launch import prepare

    flags = {
        "store": str(store),
        "folds": 2,
        "emotions": ("valence",),
        "modalities": (("visual",),),
        "model": {"name": "tcn"},
        "training": training,
    }
    plan = prepare(flags=flags, config_file=None, run_path=run, resume=False, note=lambda _: None)
    plan.run.create(plan.config, plan.folds, plan.jobs)
    return plan.run.path


def start_worker(run: Path, job_id: str, backend: str = "local") -> subprocess.Popen[bytes]:
    """A job's worker as a backend starts it: stop signals held until it can checkpoint."""
    from affvx.protocol import block_stop_signals

    return subprocess.Popen(
        [sys.executable, "-m", "affvx.orchestrator.worker", str(run), job_id],
        env={**os.environ, "AFFVX_BACKEND": backend, "AFFVX_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=block_stop_signals,
    )
