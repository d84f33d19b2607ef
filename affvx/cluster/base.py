"""The backend contract: what every scheduler (local, SLURM, PBS, Ray) implements.

A backend runs commands. It knows nothing of folds, emotions or models: the orchestrator
hands it `JobRequest`s (an argv, a working directory, where the logs go, neutral resources)
and gets back scheduler ids, which it stores in the run directory. The contract:

- `submit(requests)` starts or queues every request and returns one scheduler id (a string)
  per request, in order. It raises ClusterError (with the scheduler's own message) when the
  scheduler refuses; nothing is half-submitted from the orchestrator's point of view, since
  ids are recorded only for what `submit` returned.
- `poll(ids)` asks the scheduler once for all ids (one batched query, never one per job) and
  returns a SchedulerState per id it could find out about. An id the scheduler no longer
  knows is UNKNOWN, never COMPLETED: the orchestrator decides from the run directory.
- `cancel(ids)` asks the scheduler to stop them: a running job gets SIGTERM (it checkpoints and
  exits), later SIGKILL; a queued job never starts. Unknown or finished ids are ignored.
- `render(requests)` returns the script(s) `submit` would hand the scheduler, for --dry-run.
- `requeues_itself`: True when the scheduler restarts a job that exits with REQUEUE_EXIT_CODE
  under the same id (SLURM via `scontrol requeue`): `poll` then shows it PENDING again. A job
  that ended with that status anyway (any backend) is resubmitted by the orchestrator.
- `close()` releases what the backend holds (the local backend stops its children).

Jobs start with STOP_SIGNALS blocked (a backend starts them under `stop_signals_blocked`),
so that a warning or a preemption arriving while the job is still starting up is held, not
fatal: the job unblocks them once its handlers can checkpoint (affvx's trainer does).

Jobs communicate with the orchestrator through files, not through the backend; the exit
status is a hint: 0 complete, REQUEUE_EXIT_CODE checkpointed and wants to run again, 2 bad
input (do not retry), anything else failed.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REQUEUE_EXIT_CODE = 75  # the trainers' "checkpointed, run me again" status (EX_TEMPFAIL)
INPUT_ERROR_EXIT_CODE = 2
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def block_stop_signals() -> None:
    """Block STOP_SIGNALS in the calling thread (for a child's preexec_fn)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """STOP_SIGNALS blocked in this thread for the duration: children started inside inherit
    the blocked mask; signals that arrive meanwhile are delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass(frozen=True)
class Resources:
    """What one job needs, in neutral units that every backend maps to its own flags."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    time_limit_min: float | None = None

    def __post_init__(self) -> None:
        if self.cpus < 1 or self.gpus < 0:
            raise ValueError("cpus must be >= 1 and gpus >= 0")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError("mem_gb must be > 0")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            raise ValueError("time_limit_min must be > 0")


@dataclass(frozen=True)
class JobRequest:
    """One command to run: `key` is the caller's stable name for it (the job id)."""

    key: str
    command: tuple[str, ...]
    workdir: Path
    log_dir: Path
    resources: Resources = field(default_factory=Resources)
    env: tuple[tuple[str, str], ...] = ()
    name: str = ""


class JobStatus(str, enum.Enum):
    """A scheduler's view of one job."""

    PENDING = "PENDING"  # queued, not started
    RUNNING = "RUNNING"
    EXITED = "EXITED"  # ended on its own: see exit_code
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"  # killed at its time limit
    REQUEUED = "REQUEUED"  # waiting to run again under the same id
    UNKNOWN = "UNKNOWN"  # the scheduler has forgotten it (or never knew)

    def is_active(self) -> bool:
        return self in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.REQUEUED)


@dataclass(frozen=True)
class SchedulerState:
    """What `poll` learned about one scheduler id."""

    status: JobStatus
    exit_code: int | None = None
    node: str = ""
    reason: str = ""
    runtime_s: float | None = None  # how long the job's process ran, when the backend knows


class Backend(abc.ABC):
    """Base of all backends; see the module docstring for the contract."""

    name: str = ""
    requeues_itself: bool = False
    # how often a driver may ask `poll` (cheap locally, not on a cluster)
    poll_interval_s: float = 1.0

    @abc.abstractmethod
    def submit(self, requests: list[JobRequest]) -> list[str]: ...

    @abc.abstractmethod
    def poll(self, ids: list[str]) -> dict[str, SchedulerState]: ...

    @abc.abstractmethod
    def cancel(self, ids: list[str]) -> None: ...

    @abc.abstractmethod
    def render(self, requests: list[JobRequest]) -> list[str]: ...

    def close(self) -> None:
        """Release whatever the backend holds (default: nothing)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
