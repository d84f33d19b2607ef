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
- `wait(timeout_s)` returns when a job may have changed state, at the latest after
  `timeout_s` (default: sleep `timeout_s`; the local backend wakes when a child exits).
- `render(requests)` returns the script(s) `submit` would hand the scheduler, for --dry-run.
- `close()` releases what the backend holds (the local backend stops its children).
- `check_fits(requests)` refuses, before a run directory is written, what could never run.
- `reach()` / `observe(ids, reach)`: how `affvx status`, in another process, learns what the
  scheduler says of jobs it did not submit (by default: `poll`, where any process can).

What differs between backends is declared, never inferred from a name:
- `capabilities` (`Capabilities`): whether jobs outlive the submitting process, whether a
  detached run needs a local supervisor, whether any process can poll the scheduler, and
  whether the scheduler requeues a job that exits with EXIT_REQUEUE by itself;
- `options` (`BackendOption`s): the settings its constructor takes, with types, defaults and
  help; `[backend.<name>]` in experiment.toml, `--backend-option KEY=VALUE` and the launch
  flags are all read through them.

The in-job side (what a job process sees) is `affvx.protocol`: jobs start with
STOP_SIGNALS blocked (a backend starts them under `stop_signals_blocked`), so that a warning
or a preemption arriving while the job is still starting up is held, not fatal; every backend
exports the same `AFFVX_*` variables (`JobEnvironment`): scheduler job id, CPUs, GPUs, and
the time limit by which the job must have checkpointed, so that a job stops itself before
its limit whether or not the scheduler warns it.

Jobs communicate with the orchestrator through files, not through the backend; the exit
status is a hint (affvx.protocol): 0 complete, EXIT_REQUEUE checkpointed and wants to run
again, EXIT_INPUT failed deterministically (do not retry), anything else failed.
"""

from __future__ import annotations

import abc
import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from affvx.cluster.errors import ClusterError
from affvx.protocol import (  # noqa: F401  (re-exported: the backends' vocabulary)
    CUDA_GRAPHS_CHOICES,
    EXIT_INPUT,
    EXIT_REQUEUE,
    GPU_MEMORY_FRACTION,
    STOP_SIGNALS,
    JobEnvironment,
    block_stop_signals,
    stop_signals_blocked,
)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so that callers never need to know which backend it is.

    - `jobs_outlive_client`: jobs go on after the process that submitted them exits
      (a cluster's jobs do; the local backend's children die with it).
    - `needs_local_supervisor`: someone must stay on this machine to run the jobs, so a
      detached launch starts a background supervisor process.
    - `pollable_anywhere`: any process that reaches the scheduler can `poll` ids submitted by
      another process (`affvx status` in a second shell asks the scheduler).
    - `requeues_itself`: a job that exits with EXIT_REQUEUE is run again under the same id by
      the scheduler (`poll` shows it PENDING again); otherwise the caller resubmits it.
    """

    jobs_outlive_client: bool
    needs_local_supervisor: bool
    pollable_anywhere: bool
    requeues_itself: bool


_OPTION_KINDS = (str, int, float, bool, list, dict)


@dataclass(frozen=True)
class BackendOption:
    """One setting a backend's constructor takes.

    `kind` is str, int, float, bool, list (a list of strings; a flag may be repeated) or dict
    (a TOML table; as text, JSON).
    `flag` is the `affvx launch` flag for it, if it has one (`--partition`); every option can
    also be given as `--backend-option NAME=VALUE` and in `[backend.<name>]`.
    """

    name: str
    kind: type
    default: Any
    help: str
    flag: str | None = None
    minimum: float | None = None  # for numbers: the smallest value it takes

    def __post_init__(self) -> None:
        if self.kind not in _OPTION_KINDS:
            raise TypeError(f"option {self.name}: kind must be one of {_OPTION_KINDS}")

    def parse(self, text: str) -> Any:
        """The value of `NAME=VALUE` text; ClusterError naming the option if it is not one."""
        text = text.strip()
        try:
            if self.kind is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return lowered in ("true", "1", "yes")
            if self.kind is list:
                return [part.strip() for part in text.split(",") if part.strip()]
            if self.kind is dict:
                value = json.loads(text)
                if not isinstance(value, dict):
                    raise ValueError(text)
                return value
            return self.kind(text)
        except ValueError:
            expected = "a JSON object" if self.kind is dict else self.kind.__name__
            raise ClusterError(
                f"{self.name}={text!r}: expected {expected} ({self.help})"
            ) from None

    def check(self, value: Any, label: str = "") -> Any:
        """`value` (from TOML or a flag) if it has this option's type and range; ClusterError
        naming it as `label` (the flag, or the TOML key) if not."""
        label = label or self.name
        shown = f"{label} {value!r}" if label.startswith("--") else f"{label} = {value!r}"
        if value is None:
            return None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is list and isinstance(value, (list, tuple)):
            if all(isinstance(v, str) for v in value):
                return list(value)
        elif isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool)):
            if self.minimum is not None and value < self.minimum:
                raise ClusterError(f"{shown}: give at least {self.minimum:g} ({self.help})")
            return value
        expected = {list: "a list of strings", dict: "a table"}.get(self.kind, self.kind.__name__)
        raise ClusterError(f"{shown} is not a valid value: expected {expected} ({self.help})")


@dataclass(frozen=True)
class Resources:
    """What one job needs, in neutral units that every backend maps to its own flags.

    `jobs_per_gpu` N > 1: jobs of one GPU each share a GPU N at a time (a small job leaves a
    GPU mostly idle), each taking at most 1/N of its memory. The local backend hands a GPU
    to N jobs, Ray asks for 1/N of a GPU per job, SLURM and PBS pack N jobs into one array
    task that holds one GPU. `cuda_graphs` (auto, on, off) is how a GPU job runs its training
    step; it reaches the job as AFFVX_CUDA_GRAPHS.
    """

    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    time_limit_min: float | None = None
    jobs_per_gpu: int = 1
    cuda_graphs: str = "auto"

    def __post_init__(self) -> None:
        if self.cpus < 1 or self.gpus < 0:
            raise ValueError("cpus must be >= 1 and gpus >= 0")
        if self.jobs_per_gpu < 1:
            raise ValueError("jobs_per_gpu must be >= 1")
        if self.jobs_per_gpu > 1 and self.gpus > 1:
            raise ValueError(
                f"jobs_per_gpu = {self.jobs_per_gpu} shares one GPU among jobs of one GPU "
                f"each; give gpus = 1 (not {self.gpus})"
            )
        if self.cuda_graphs not in CUDA_GRAPHS_CHOICES:
            raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS_CHOICES)}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError("mem_gb must be > 0")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            raise ValueError("time_limit_min must be > 0")

    @property
    def shares_gpu(self) -> bool:
        """True when this job shares its one GPU with others (gpus 1, jobs_per_gpu > 1)."""
        return self.gpus == 1 and self.jobs_per_gpu > 1

    def sharing_environment(self) -> dict[str, str]:
        """What a job that shares its GPU is told: the share of its memory it may take."""
        if not self.shares_gpu:
            return {}
        return {GPU_MEMORY_FRACTION: f"{1 / self.jobs_per_gpu:.4f}"}


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
    """Base of all backends; the module docstring is the contract.

    Subclasses set `name`, `capabilities` and `options` (one BackendOption per keyword of
    their constructor) and implement submit, poll, cancel and render.
    """

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]
    options: ClassVar[tuple[BackendOption, ...]] = ()
    # how often a driver may ask `poll` (cheap locally, not on a cluster)
    poll_interval_s: float = 1.0

    @classmethod
    def configured(cls, values: Mapping[str, Any], where: str = "") -> Backend:
        """An instance from option values (from experiment.toml or flags), checked against
        `options`: an unknown name or a value of the wrong type raises ClusterError naming
        it and the options this backend takes."""
        known = {option.name: option for option in cls.options}
        where = where or f"[backend.{cls.name}] "
        arguments = {}
        for key, value in values.items():
            if key not in known:
                raise ClusterError(
                    f"{where}{key!r} is not an option of the {cls.name} backend; "
                    f"its options: {describe_options(cls.options)}"
                )
            checked = known[key].check(value, f"{where}{key}")
            if checked is not None:
                arguments[key] = checked
        return cls(**arguments)

    @abc.abstractmethod
    def submit(self, requests: list[JobRequest]) -> list[str]: ...

    @abc.abstractmethod
    def poll(self, ids: list[str]) -> dict[str, SchedulerState]: ...

    @abc.abstractmethod
    def cancel(self, ids: list[str]) -> None: ...

    @abc.abstractmethod
    def render(self, requests: list[JobRequest]) -> list[str]: ...

    def check_fits(self, requests: list[JobRequest]) -> None:
        """Raise ClusterError, naming the job and what it asks for, if a request can never
        run on this backend (more CPUs or GPUs than it has). Called before anything is
        written. Default: nothing (a cluster's scheduler judges its own limits)."""

    def notes(self) -> list[str]:
        """Lines for the user on how the jobs will run, said once before anything is
        submitted (e.g. an asked-for feature this machine lacks, gone without). Default: none."""
        return []

    def reach(self) -> dict[str, str]:
        """What another process needs to ask the scheduler about the jobs this instance has
        submitted (see `observe`); the driver records it in the run directory. Default:
        nothing (a scheduler any process can poll needs no directions)."""
        return {}

    def observe(self, ids: list[str], reach: Mapping[str, str]) -> dict[str, SchedulerState]:
        """What the scheduler says of `ids` to a process that did not submit them (`affvx
        status` in another shell), given the submitter's `reach`. Default: `poll` where the
        backend is `pollable_anywhere`, else nothing. Raises ClusterError when the scheduler
        cannot be asked."""
        return self.poll(ids) if self.capabilities.pollable_anywhere else {}

    def wait(self, timeout_s: float) -> None:
        """Return when a job may have changed state; here: after `timeout_s`."""
        time.sleep(timeout_s)

    def close(self) -> None:
        """Release whatever the backend holds (default: nothing)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_options(options: Sequence[BackendOption]) -> str:
    """`partition (--partition), account, ...` for error messages."""
    if not options:
        return "none"
    return ", ".join(f"{o.name} ({o.flag})" if o.flag else o.name for o in options)


def job_time_limit_s(resources: Resources, warning_s: float) -> float | None:
    """The time limit a job process gets (AFFVX_TIME_LIMIT_S): the allocation's, less the
    backend's warning time (the job stops when the warning would come), and at least
    EXIT_MARGIN of the limit (at most EXIT_MARGIN_MAX_S) for the checkpoint and the exit,
    warned or not."""
    if resources.time_limit_min is None:
        return None
    limit_s = 60 * resources.time_limit_min
    margin_s = max(warning_s, min(EXIT_MARGIN * limit_s, EXIT_MARGIN_MAX_S))
    return max(limit_s - margin_s, 0.0)


EXIT_MARGIN = 0.1
EXIT_MARGIN_MAX_S = 300.0
