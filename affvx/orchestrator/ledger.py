"""One job's record in the run directory, and the state it adds up to.

    jobs/<job_id>/
      submission.json   written by the orchestrator: attempt, backend, scheduler id, cancelled
      state.json        written by whoever runs the attempt: RUNNING / COMPLETE / FAILED /
                        PREEMPTED, node, pid, times, reason
      attempts.jsonl    one line per ended attempt: backend, scheduler id, node, start, end,
                        exit reason (completed, failed, preempted, timeout, cancelled, lost)
      heartbeat         touched every few seconds while an attempt runs
      progress.json     epoch, batches, best validation CCC (the trainer's progress)
      result.json       the trainer's result: its presence alone means COMPLETE
      attempt.lock      flock'ed by the running attempt; stand-down: a newer attempt asks
                        the running one to checkpoint and go (affvx.orchestrator.worker)

Each file has one writer at a time; every write is atomic. The state is derived from the
files, never stored twice: a job with result.json is COMPLETE whatever else says.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.storage.atomic import atomic_write_json

HEARTBEAT_INTERVAL_S = 10.0
HEARTBEAT_STALE_S = 90.0


# exit reasons of an attempt (attempts.jsonl) -> the state they leave the job in
FINAL_STATES = {"completed": "COMPLETE", "preempted": "PREEMPTED", "cancelled": "CANCELLED"}


def attempt_record(
    state: dict[str, Any],
    end_utc: str | None,
    exit_reason: str,
    exit_code: int | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """One line of attempts.jsonl for the attempt that `state` (state.json) describes."""
    return {
        "attempt": state.get("attempt"),
        "backend": state.get("backend"),
        "scheduler_id": state.get("scheduler_id"),
        "node": state.get("node"),
        "pid": state.get("pid"),
        "start_utc": state.get("started_utc"),
        "end_utc": end_utc,
        "exit_reason": exit_reason,
        "exit_code": exit_code,
        "reason": reason,
    }


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"

    def is_finished(self) -> bool:
        return self in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class JobFiles:
    """Reads and writes the files of one job directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._prefix = f"{path}{os.sep}"  # plain strings: status reads thousands of these

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._prefix + name, "rb") as handle:
                return json.loads(handle.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def result(self) -> dict[str, Any] | None:
        return self._read_json("result.json")

    def submission(self) -> dict[str, Any] | None:
        return self._read_json("submission.json")

    def state(self) -> dict[str, Any] | None:
        return self._read_json("state.json")

    def progress(self) -> dict[str, Any] | None:
        return self._read_json("progress.json")

    def failure(self) -> dict[str, Any] | None:
        return self._read_json("failure.json")

    def attempts(self) -> list[dict[str, Any]]:
        try:
            text = (self.path / "attempts.jsonl").read_text()
        except FileNotFoundError:
            return []
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-append
        return lines

    def heartbeat_age_s(self) -> float | None:
        try:
            return time.time() - (self.path / "heartbeat").stat().st_mtime
        except FileNotFoundError:
            return None

    # -- writing ------------------------------------------------------------------------------

    def write_submission(self, *, attempt: int, backend: str, scheduler_id: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.path / "submission.json",
            {
                "attempt": attempt,
                "backend": backend,
                "scheduler_id": scheduler_id,
                "submitted_utc": now_utc(),
                "cancelled_utc": None,
            },
        )

    def mark_cancelled(self) -> None:
        submission = self.submission() or {"attempt": 0, "backend": "", "scheduler_id": ""}
        submission["cancelled_utc"] = now_utc()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "submission.json", submission)

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.path / "state.json", state)

    def append_attempt(self, record: dict[str, Any]) -> None:
        """Add one ended attempt, unless that attempt is already recorded."""
        if any(a.get("attempt") == record["attempt"] for a in self.attempts()):
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        fd = os.open(self.path / "attempts.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def close_attempt(
        self,
        state: dict[str, Any],
        exit_reason: str,
        *,
        reason: str = "",
        exit_code: int | None = None,
    ) -> None:
        """Record how the attempt in `state` ended: a line in attempts.jsonl, then the final
        state.json (COMPLETE, PREEMPTED, CANCELLED or FAILED, from `exit_reason`)."""
        ended_utc = now_utc()
        self.append_attempt(attempt_record(state, ended_utc, exit_reason, exit_code, reason))
        self.write_state(
            {
                **state,
                "state": FINAL_STATES.get(exit_reason, "FAILED"),
                "ended_utc": ended_utc,
                "exit_reason": exit_reason,
                "reason": reason,
            }
        )

    def touch_heartbeat(self) -> None:
        path = self.path / "heartbeat"
        path.touch()
        os.utime(path)

    def next_attempt(self) -> int:
        """The attempt number for a new submission."""
        return 1 + max(
            [0]
            + [int(a.get("attempt", 0)) for a in self.attempts()]
            + [
                int((self.state() or {}).get("attempt", 0)),
                int((self.submission() or {}).get("attempt", 0)),
            ]
        )

    def failures(self) -> int:
        """Attempts that ended in failure (preemptions and cancellations do not count)."""
        return sum(a.get("exit_reason") in ("failed", "lost", "timeout") for a in self.attempts())


@dataclass
class JobView:
    """What `affvx status` shows of one job."""

    job_id: str
    state: JobState
    attempts: int = 0
    scheduler_id: str = ""
    node: str = ""
    epoch: int | None = None
    max_epochs: int | None = None
    batches: tuple[int, int] | None = None
    val_ccc: dict[str, float] | None = None
    best_epoch: int | None = None
    elapsed_s: float | None = None
    reason: str = ""
    heartbeat_age_s: float | None = None
    pid: int | None = None


def view_job(job_id: str, files: JobFiles) -> JobView:
    """The job's state from its files alone (the scheduler's view is merged by the caller).

    Reads as few files as it can: a complete job costs two small reads.
    """
    result = files.result()
    if result is not None and result.get("provenance"):
        # a complete job costs one read: result.json says which attempt produced it
        ran = result["provenance"]
        return JobView(
            job_id=job_id,
            state=JobState.COMPLETE,
            attempts=int(ran.get("attempt", 0)),
            scheduler_id=str(ran.get("scheduler_id") or ""),
            node=str(ran.get("node") or ""),
            val_ccc=result.get("val_ccc"),
            best_epoch=result.get("best_epoch"),
            epoch=result.get("epochs_run"),
            elapsed_s=result.get("train_seconds"),
        )
    state = files.state() or {}
    view = JobView(
        job_id=job_id,
        state=JobState.PENDING,
        attempts=int(state.get("attempt", 0)),
        scheduler_id=str(state.get("scheduler_id") or ""),
        node=str(state.get("node") or ""),
        pid=state.get("pid"),
    )
    if result is not None:
        view.state = JobState.COMPLETE
        view.val_ccc = result.get("val_ccc")
        view.best_epoch = result.get("best_epoch")
        view.epoch = result.get("epochs_run")
        view.elapsed_s = result.get("train_seconds")
        return view
    submission = files.submission() or {}
    view.scheduler_id = view.scheduler_id or str(submission.get("scheduler_id") or "")
    view.heartbeat_age_s = files.heartbeat_age_s()
    progress = files.progress() or {}
    if progress:
        view.epoch, view.max_epochs = progress.get("epoch"), progress.get("max_epochs")
        view.val_ccc, view.best_epoch = progress.get("best_val_ccc"), progress.get("best_epoch")
        if progress.get("n_batches"):
            view.batches = (progress["batches_done"], progress["n_batches"])
    state_attempt = int(state.get("attempt", 0))
    submitted_attempt = int(submission.get("attempt", 0))
    if submission.get("cancelled_utc"):
        view.state = JobState.CANCELLED
    elif state and state_attempt >= submitted_attempt:
        view.state = (
            JobState(state["state"]) if state["state"] in JobState.__members__ else JobState.LOST
        )
        view.reason = state.get("reason", "")
        if view.state is JobState.RUNNING and state.get("started_utc"):
            started = dt.datetime.fromisoformat(state["started_utc"])
            view.elapsed_s = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        if view.state is JobState.COMPLETE:  # a state without its result: the result was lost
            view.state, view.reason = (
                JobState.LOST,
                "state.json says COMPLETE but result.json is missing",
            )
    elif submission:
        view.state = JobState.SUBMITTED
        view.scheduler_id = str(submission.get("scheduler_id") or "")
    if view.state is JobState.FAILED and not view.reason:
        view.reason = (files.failure() or {}).get("reason", "")
    return view


def running_here_but_dead(view: JobView) -> bool:
    """A RUNNING job whose process was on this host and is gone."""
    if view.state is not JobState.RUNNING or view.pid is None or view.node != socket.gethostname():
        return False
    try:
        os.kill(int(view.pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def heartbeat_stale(view: JobView) -> bool:
    return view.heartbeat_age_s is None or view.heartbeat_age_s > HEARTBEAT_STALE_S
