"""What the backends that submit job arrays through submitit share (slurm, pbs).

A subclass names its submitit executor (`_executor`), what each task runs (`_task_callable`),
the parameters for a batch of equal resources (`parameters`), the largest array its scheduler
takes (`max_array_size`) and how long before the time limit its scheduler warns a job
(`warning_s`, 0 where it does not). This class cuts requests into arrays of equal resources,
builds each job's task with its own clock, submits, and turns submitit's errors into
ClusterErrors that carry the scheduler's message.
"""

from __future__ import annotations

import abc
import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affvx.cluster.base import Backend, BackendOption, JobRequest, Resources, job_time_limit_s
from affvx.cluster.errors import ClusterError, SchedulerCommandError
from affvx.cluster.task import TaskCommand


def shared_options(scheduler: str, array_limit: str) -> tuple[BackendOption, ...]:
    """The options every array backend takes; `array_limit` says how its scheduler writes
    the array's concurrency (SLURM `%N`)."""
    return (
        BackendOption(
            "setup",
            list,
            [],
            "shell line run before each job (module load ...); repeat for several",
            flag="--setup",
        ),
        BackendOption(
            "array_parallelism",
            int,
            256,
            f"most array tasks running at once ({array_limit})",
            flag="--array-parallelism",
            minimum=1,
        ),
        BackendOption("default_time_min", float, 24 * 60.0, "time limit without --time-limit"),
        BackendOption("poll_interval_s", float, 10.0, "seconds between scheduler queries"),
        BackendOption("folder", str, None, f"submitit's folder [default: RUN/{scheduler}]"),
        BackendOption("python", str, None, "Python on the nodes [default: this one]"),
    )


class SubmititArrayBackend(Backend):
    """A backend that submits job arrays through a submitit executor (module docstring)."""

    submit_command = ""  # the scheduler's submission command, for error messages

    def __init__(
        self,
        *,
        setup: Sequence[str] = (),
        array_parallelism: int = 256,
        default_time_min: float = 24 * 60,
        poll_interval_s: float = 10.0,
        folder: str | None = None,
        python: str | None = None,
    ) -> None:
        if array_parallelism < 1:
            raise ClusterError(f"[backend.{self.name}] array_parallelism must be >= 1")
        self.setup = list(setup)
        self.array_parallelism = array_parallelism
        self.default_time_min = default_time_min
        self.poll_interval_s = poll_interval_s
        self.folder = folder
        self.python = python or sys.executable

    # -- what a subclass says -----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def warning_s(self) -> float:
        """Seconds before the time limit at which the scheduler warns a job (0: never)."""

    @abc.abstractmethod
    def parameters(self, resources: Resources, name: str) -> dict[str, Any]:
        """The executor's parameters for a batch of jobs with these resources."""

    @abc.abstractmethod
    def max_array_size(self) -> int:
        """The largest array the scheduler takes (asked of it once)."""

    @abc.abstractmethod
    def _executor(self, folder: Path) -> Any:
        """A submitit executor writing into `folder`."""

    @abc.abstractmethod
    def _task_callable(self, task: TaskCommand) -> Callable[[], int]:
        """What one array task runs (pickled)."""

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> list[str]:
        if not requests:
            return []
        ids: list[str] = []
        for chunk in self._chunks(requests, self.max_array_size()):
            first = chunk[0]
            executor = self._executor(self._folder(first))
            try:
                executor.update_parameters(**self.parameters(first.resources, job_name(first)))
                tasks = [self._task_callable(self._task(r)) for r in chunk]
                with executor.batch():
                    jobs = [executor.submit(task) for task in tasks]
            except subprocess.CalledProcessError as error:
                raise SchedulerCommandError(
                    list(error.cmd), error.returncode, _text(error.stdout), _text(error.stderr)
                ) from None
            except (ValueError, RuntimeError) as error:
                raise ClusterError(
                    f"{self.submit_command} refused the jobs: {' '.join(str(error).split())}"
                ) from None
            ids.extend(job.job_id for job in jobs)
        return ids

    def _task(self, request: JobRequest) -> TaskCommand:
        resources = dataclasses.replace(
            request.resources, time_limit_min=self.time_limit_min(request.resources)
        )
        return TaskCommand.for_request(request, job_time_limit_s(resources, self.warning_s))

    def time_limit_min(self, resources: Resources) -> float:
        return resources.time_limit_min or self.default_time_min

    def quoted_python(self) -> str:
        return shlex.quote(self.python)

    def _folder(self, request: JobRequest) -> Path:
        return Path(self.folder) if self.folder else request.workdir / self.name

    @staticmethod
    def _chunks(requests: list[JobRequest], size: int) -> list[list[JobRequest]]:
        """Batches of equal resources, each at most `size` (array indices 0..size-1)."""
        groups: dict[Resources, list[JobRequest]] = {}
        for request in requests:
            groups.setdefault(request.resources, []).append(request)
        return [
            group[i : i + size] for group in groups.values() for i in range(0, len(group), size)
        ]


def job_name(request: JobRequest) -> str:
    return f"affvx-{request.workdir.name}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
