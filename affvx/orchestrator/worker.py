"""What a scheduler runs for one job: `python -m affvx.orchestrator.worker RUN JOB_ID`.

It records the attempt (state.json RUNNING, a heartbeat every few seconds, progress.json),
runs the trainer, records how the attempt ended in attempts.jsonl and state.json, and exits
with the status of the job protocol (affvx.protocol): 0 complete, 75 checkpointed and to be
requeued, 76 checkpointed because the job was cancelled, 2 failed deterministically (bad
input; never retried), 1 failed. What it knows of its allocation -- scheduler id, CPUs, time
limit, device, CUDA graphs -- comes from the AFFVX_* variables that every backend sets
(JobEnvironment), never from a scheduler's own variables.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affvx.orchestrator.errors import USER_ERRORS
from affvx.orchestrator.ledger import (
    HEARTBEAT_INTERVAL_S,
    JobFiles,
    attempt_record,
    now_utc,
)
from affvx.orchestrator.plan import PlannedJob, spec_for
from affvx.orchestrator.rundir import RunDir
from affvx.protocol import (
    EXIT_CANCELLED,
    EXIT_COMPLETE,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_REQUEUE,
    JobEnvironment,
)
from affvx.storage.atomic import atomic_write_json
from affvx.trainers.errors import DivergenceError

# failures that the same job would meet again: never retried
DETERMINISTIC_ERRORS = (*USER_ERRORS, DivergenceError)


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

    def flush(self) -> None:
        """Write what is known now (at the end of an attempt, so the next one and the driver
        see how far it got)."""
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._written >= self.min_interval_s:
            self._written = now
            atomic_write_json(  # a hint for status, rewritten often: not worth two fsyncs
                self.files.path / "progress.json",
                {**self.data, "updated_utc": now_utc()},
                durable=False,
            )


@contextlib.contextmanager
def heartbeat(files: JobFiles, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[None]:
    """Touch the job's heartbeat file every `interval_s` while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        asked = False
        while not stop.wait(interval_s):
            with contextlib.suppress(OSError):
                files.touch_heartbeat()
            if not asked and _told_to_stop(files):
                asked = True  # checkpoint and leave: see _told_to_stop
                os.kill(os.getpid(), signal.SIGTERM)

    files.touch_heartbeat()
    thread = threading.Thread(target=beat, name="affvx-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _told_to_stop(files: JobFiles) -> bool:
    """A newer attempt has started (the stand-down file), or the job has been cancelled
    (its mark): the attempt stops wherever it runs, even where the scheduler cannot signal
    it alone (a job packed with others into one array task)."""
    if (files.path / STAND_DOWN_FILE).exists():
        return True
    return bool((files.submission() or {}).get("cancelled_utc"))


STAND_DOWN_WAIT_S = 120.0  # an older attempt's time to checkpoint and exit
STAND_DOWN_FILE = "stand-down"


@contextlib.contextmanager
def sole_attempt(files: JobFiles, wait_s: float = STAND_DOWN_WAIT_S) -> Iterator[None]:
    """Hold the job's attempt lock while this attempt runs: no two attempts of one job write
    at once.

    An older attempt may still run when a newer one starts (Ray runs a task again when its
    worker dies, while the job it started checkpoints; a resumed run meets the jobs of a
    driver that was killed). The newer one asks it to stand down -- SIGTERM if it runs on
    this host, and a `stand-down` file that its heartbeat reads wherever it runs --, then
    waits for the lock: the older attempt checkpoints, records how it ended and exits. After
    `wait_s` an older attempt on this host is killed; one elsewhere that still holds the lock
    makes this attempt fail (RuntimeError), to be retried.
    """
    fd = os.open(files.path / "attempt.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _locked(fd):
            _ask_to_stand_down(files)
            if not _wait_for_lock(fd, wait_s) and not _kill_older(files, fd):
                older = files.state() or {}
                raise RuntimeError(
                    f"an older attempt of this job still runs on {older.get('node')} "
                    f"(pid {older.get('pid')}) and did not stand down within {wait_s:g} s"
                )
        with contextlib.suppress(FileNotFoundError):
            (files.path / STAND_DOWN_FILE).unlink()
        yield
    finally:
        os.close(fd)  # drops the lock


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for_lock(fd: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not _locked(fd):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _older_worker_here(files: JobFiles) -> int | None:
    """The pid of the attempt state.json names, if it runs on this host and is this job's
    worker (not a process that got its pid since)."""
    older = files.state() or {}
    pid = older.get("pid")
    if older.get("node") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = cmdline.split(b"\0")
    is_this_job = b"affvx.orchestrator.worker" in argv and files.path.name.encode() in argv
    return pid if is_this_job else None


def _ask_to_stand_down(files: JobFiles) -> None:
    atomic_write_json(files.path / STAND_DOWN_FILE, {"asked_utc": now_utc(), "by": os.getpid()})
    pid = _older_worker_here(files)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _kill_older(files: JobFiles, fd: int) -> bool:
    """SIGKILL an older attempt on this host that ignored its SIGTERM; True once the lock is
    ours."""
    pid = _older_worker_here(files)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _wait_for_lock(fd, 30.0)


def begin_attempt(files: JobFiles, environment: JobEnvironment) -> dict[str, Any]:
    """Record the start of an attempt; first close the record of one that died silently."""
    previous = files.state()
    if previous and previous.get("state") == "RUNNING":
        files.append_attempt(attempt_record(previous, None, "lost"))
    submission = files.submission() or {}
    attempt = max(int((previous or {}).get("attempt", 0)) + 1, int(submission.get("attempt", 1)))
    state = {
        "attempt": attempt,
        "state": "RUNNING",
        "backend": environment.backend,
        "scheduler_id": environment.scheduler_job_id or submission.get("scheduler_id", ""),
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "started_utc": now_utc(),
    }
    files.write_state(state)
    return state


def run_worker(run_path: Path, job_id: str) -> int:
    """Run one attempt of `job_id` in the run at `run_path`; return the exit status."""
    run = RunDir.open(run_path)
    job = run.job(job_id)
    files = JobFiles(run.job_dir(job_id))
    files.path.mkdir(parents=True, exist_ok=True)
    # a task run again (a requeued pack of jobs) meets jobs that have ended meanwhile
    if files.result() is not None:
        return EXIT_COMPLETE
    if (files.submission() or {}).get("cancelled_utc"):
        return EXIT_CANCELLED
    with sole_attempt(files):
        return _run_attempt(run, job, files)


def _run_attempt(run: RunDir, job: PlannedJob, files: JobFiles) -> int:
    environment = JobEnvironment.from_environ()
    state = begin_attempt(files, environment)
    try:
        spec = spec_for(
            run.config,
            run.folds,
            job,
            time_limit_s=environment.time_left_s(),
            device=environment.device,
            cuda_graphs=environment.cuda_graphs,
        )
        from affvx.trainers.job import run_job  # torch loads here, in the worker only

        with heartbeat(files):
            provenance = {k: state[k] for k in ("attempt", "backend", "scheduler_id", "node")}
            progress = ProgressWriter(files)
            outcome = run_job(spec, files.path, observer=progress, provenance=provenance)
            progress.flush()
    except DETERMINISTIC_ERRORS as error:
        reason = " ".join(str(error).split())
        files.close_attempt(state, "failed", reason=reason, exit_code=EXIT_INPUT)
        return EXIT_INPUT
    except Exception as error:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        files.close_attempt(state, "failed", reason=reason)
        raise
    if outcome.result is not None:
        files.close_attempt(state, "completed")
        return EXIT_COMPLETE
    # stopped after a checkpoint: by `affvx cancel` (which marks the job first) or to be requeued
    cancelled = bool((files.submission() or {}).get("cancelled_utc"))
    stopped_by = f"stopped by {outcome.stop_reason}" if outcome.stop_reason else ""
    files.close_attempt(state, "cancelled" if cancelled else "preempted", reason=stopped_by)
    return EXIT_CANCELLED if cancelled else EXIT_REQUEUE


def warm_up() -> None:
    """What a warm starter (affvx.cluster.warm) runs once before it forks workers: the job
    code's imports, lazy ones included."""
    from affvx.trainers.job import warm_up as warm_up_job

    warm_up_job()


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
    # the job's files are written and closed: spare the interpreter's exit a garbage
    # collection over all that torch and its compiler stack allocated (~1 s of every job)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main()
