"""What a scheduler runs for one job: `python -m affvx.orchestrator.worker RUN JOB_ID`.

It records the attempt (state.json RUNNING, a heartbeat every few seconds, progress.json),
runs the trainer, records how the attempt ended in attempts.jsonl and state.json, and exits
with the status the backends understand: 0 complete, 75 checkpointed and to be requeued,
2 bad input (never retried), 1 failed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affvx.orchestrator.errors import USER_ERRORS
from affvx.orchestrator.ledger import HEARTBEAT_INTERVAL_S, JobFiles, now_utc
from affvx.orchestrator.plan import spec_for
from affvx.orchestrator.rundir import RunDir
from affvx.storage.atomic import atomic_write_json

EXIT_COMPLETE, EXIT_FAILED, EXIT_INPUT, EXIT_REQUEUE = 0, 1, 2, 75
SCHEDULER_ID_VARIABLES = (
    "AFFVX_SCHEDULER_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_JOB_ID",
    "PBS_JOBID",
)


def scheduler_job_id() -> str:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    for variable in SCHEDULER_ID_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return ""


class ProgressWriter:
    """A trainer observer that keeps progress.json current (at most every few seconds)."""

    def __init__(self, files: JobFiles, min_interval_s: float = 5.0) -> None:
        self.files = files
        self.min_interval_s = min_interval_s
        self.data: dict[str, Any] = {
            "epoch": 0,
            "max_epochs": None,
            "batches_done": 0,
            "n_batches": None,
            "best_val_ccc": None,
            "best_epoch": None,
            "resumed": False,
        }
        self._written = 0.0
        previous = files.progress()
        if previous:  # a resumed attempt keeps the best score seen so far
            self.data.update(
                best_val_ccc=previous.get("best_val_ccc"), best_epoch=previous.get("best_epoch")
            )

    def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None:
        self.data.update(epoch=epoch, max_epochs=max_epochs, resumed=resumed)
        self._write(force=True)

    def on_batch(self, *, epoch: int, done: int, total: int) -> None:
        self.data.update(epoch=epoch, batches_done=done, n_batches=total)
        self._write()

    def on_epoch(self, row: dict[str, Any]) -> None:
        scores = {
            k[len("val_ccc_") :]: v
            for k, v in row.items()
            if k.startswith("val_ccc_") and k != "val_ccc_mean"
        }
        best = self.data.get("best_val_ccc")
        if best is None or row["val_ccc_mean"] > sum(best.values()) / len(best):
            self.data.update(best_val_ccc=scores, best_epoch=row["epoch"])
        self.data.update(epoch=row["epoch"] + 1, batches_done=0)
        self._write(force=True)

    def on_phase(self, phase: str) -> None:
        self.data["phase"] = phase
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._written >= self.min_interval_s:
            self._written = now
            atomic_write_json(
                self.files.path / "progress.json", {**self.data, "updated_utc": now_utc()}
            )


@contextlib.contextmanager
def heartbeat(files: JobFiles, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[None]:
    """Touch the job's heartbeat file every `interval_s` while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            with contextlib.suppress(OSError):
                files.touch_heartbeat()

    files.touch_heartbeat()
    thread = threading.Thread(target=beat, name="affvx-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def begin_attempt(files: JobFiles, backend: str) -> dict[str, Any]:
    """Record the start of an attempt; first close the record of one that died silently."""
    previous = files.state()
    if previous and previous.get("state") == "RUNNING":
        files.append_attempt({**_attempt_record(previous), "end_utc": None, "exit_reason": "lost"})
    submission = files.submission() or {}
    attempt = max(int((previous or {}).get("attempt", 0)) + 1, int(submission.get("attempt", 1)))
    state = {
        "attempt": attempt,
        "state": "RUNNING",
        "backend": backend,
        "scheduler_id": scheduler_job_id() or submission.get("scheduler_id", ""),
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "started_utc": now_utc(),
    }
    files.write_state(state)
    return state


def end_attempt(files: JobFiles, state: dict[str, Any], outcome: str, reason: str = "") -> None:
    final = {"completed": "COMPLETE", "preempted": "PREEMPTED", "cancelled": "CANCELLED"}.get(
        outcome, "FAILED"
    )
    ended = {
        **state,
        "state": final,
        "ended_utc": now_utc(),
        "exit_reason": outcome,
        "reason": reason,
    }
    files.append_attempt(
        {**_attempt_record(ended), "end_utc": ended["ended_utc"], "exit_reason": outcome}
    )
    files.write_state(ended)


def _attempt_record(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt": state.get("attempt"),
        "backend": state.get("backend"),
        "scheduler_id": state.get("scheduler_id"),
        "node": state.get("node"),
        "pid": state.get("pid"),
        "start_utc": state.get("started_utc"),
    }


def run_worker(run_path: Path, job_id: str) -> int:
    """Run one attempt of `job_id` in the run at `run_path`; return the exit status."""
    run = RunDir.open(run_path)
    job = run.job(job_id)
    files = JobFiles(run.job_dir(job_id))
    files.path.mkdir(parents=True, exist_ok=True)
    state = begin_attempt(files, os.environ.get("AFFVX_BACKEND", ""))
    limit = os.environ.get("AFFVX_TIME_LIMIT_S")
    device = os.environ.get("AFFVX_DEVICE", "auto")
    try:
        spec = spec_for(
            run.config, run.folds, job, time_limit_s=float(limit) if limit else None, device=device
        )
        from affvx.trainers.job import run_job  # torch loads here, in the worker only

        with heartbeat(files):
            provenance = {k: state[k] for k in ("attempt", "backend", "scheduler_id", "node")}
            outcome = run_job(
                spec, files.path, observer=ProgressWriter(files), provenance=provenance
            )
    except USER_ERRORS as error:
        end_attempt(files, state, "failed", reason=" ".join(str(error).split()))
        return EXIT_INPUT
    except Exception as error:
        end_attempt(
            files,
            state,
            "failed",
            reason=f"{type(error).__name__}: {' '.join(str(error).split())}",
        )
        raise
    if outcome.result is not None:
        end_attempt(files, state, "completed")
        return EXIT_COMPLETE
    # stopped after a checkpoint: by `affvx cancel` (which marks the job first) or to be requeued
    cancelled = bool((files.submission() or {}).get("cancelled_utc"))
    end_attempt(files, state, "cancelled" if cancelled else "preempted")
    return EXIT_REQUEUE


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m affvx.orchestrator.worker RUN JOB_ID\n")
        sys.exit(EXIT_INPUT)
    try:
        code = run_worker(Path(args[0]), args[1])
    except Exception:
        import traceback

        traceback.print_exc()
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
