"""What the backends that submit job arrays through submitit share (slurm, pbs).

A subclass names its submitit executor (`_executor`), what each task runs (`_task_callable`),
the parameters for a batch of equal resources (`parameters`), the largest array its scheduler
takes (`max_array_size`), how long before the time limit its scheduler warns a job
(`warning_s`, 0 where it does not), and how to poll and cancel its own task ids
(`poll_tasks`, `cancel_tasks`). This class cuts requests into arrays of equal resources,
builds each job's task with its own clock, submits, and turns submitit's errors into
ClusterErrors that carry the scheduler's message.

Packing (`--jobs-per-gpu N`, Resources.shares_gpu): jobs that share a GPU N ways go N to an
array task that holds one GPU and N times a job's CPUs and memory, and run there side by
side (task.TaskPack). Each keeps its own scheduler id -- the task's with `#k/n` -- whose
state is the task's; a requeue of the task reruns its jobs, and those already complete end
at once.
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

from affvx.cluster.base import (
    Backend,
    BackendOption,
    JobRequest,
    JobStatus,
    Resources,
    SchedulerState,
    job_time_limit_s,
)
from affvx.cluster.errors import ClusterError, SchedulerCommandError
from affvx.cluster.task import TaskCommand, TaskPack, packed_id, unpacked


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
        BackendOption(
            "mps",
            bool,
            False,
            "run the GPU work of the jobs packed into one array task (--jobs-per-gpu) through "
            "a private NVIDIA MPS daemon of that task; without a GPU or MPS, one line and none",
            flag="--mps",
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
        mps: bool = False,
    ) -> None:
        if array_parallelism < 1:
            raise ClusterError(f"[backend.{self.name}] array_parallelism must be >= 1")
        self.setup = list(setup)
        self.array_parallelism = array_parallelism
        self.default_time_min = default_time_min
        self.poll_interval_s = poll_interval_s
        self.folder = folder
        self.python = python or sys.executable
        self.mps = mps

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
    def _task_callable(self, task: TaskCommand | TaskPack) -> Callable[[], int]:
        """What one array task runs (pickled)."""

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> list[str]:
        if not requests:
            return []
        ids: dict[int, str] = {}  # id(request) -> its scheduler id
        for chunk in self._chunks(requests, self.max_array_size()):
            first = chunk[0][0]
            executor = self._executor(self._folder(first))
            try:
                executor.update_parameters(**self.array_parameters(chunk))
                tasks = [self._task_callable(self._runnable(group)) for group in chunk]
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
            for job, group in zip(jobs, chunk):
                ids.update(zip(map(id, group), _member_ids(job.job_id, len(group))))
        return [ids[id(request)] for request in requests]

    def poll(self, ids: list[str]) -> dict[str, SchedulerState]:
        """Each id's state; a packed job's is its task's (the pool reads the job's own
        files for how it ended)."""
        tasks = {job_id: _task_id(job_id) for job_id in ids}
        states = self.poll_tasks(sorted(set(tasks.values()))) if ids else {}
        return {job_id: states.get(task, _UNKNOWN) for job_id, task in tasks.items()}

    def cancel(self, ids: list[str]) -> None:
        """Cancel the tasks of these ids. A task of packed jobs is cancelled when all its
        jobs are; a packed job cancelled alone stops by itself, from its cancel mark (the
        worker reads it), and the task goes on with the others."""
        whole: list[str] = []
        packs: dict[str, set[int]] = {}
        for job_id in ids:
            member = unpacked(job_id)
            if member is None:
                whole.append(job_id)
                continue
            task, number, count = member
            packs.setdefault(task, set()).add(number)
            if len(packs[task]) == count:
                whole.append(task)
        if whole:
            self.cancel_tasks(whole)

    @abc.abstractmethod
    def poll_tasks(self, task_ids: list[str]) -> dict[str, SchedulerState]:
        """`poll` for the scheduler's own (array task) ids."""

    @abc.abstractmethod
    def cancel_tasks(self, task_ids: list[str]) -> None:
        """`cancel` for the scheduler's own (array task) ids."""

    def array_parameters(self, chunk: list[list[JobRequest]]) -> dict[str, Any]:
        """The executor's parameters for an array of tasks (each a group of requests):
        those of `parameters` for one task's resources; for packed jobs, a comment line in
        the script that says how many share each task."""
        first = chunk[0]
        parameters = self.parameters(task_resources(first), job_name(first[0]))
        share = first[0].resources.jobs_per_gpu
        if first[0].resources.shares_gpu:
            jobs = sum(len(group) for group in chunk)
            comment = (
                f"# affvx: {jobs} jobs in {len(chunk)} array tasks, up to {share} side by side "
                "in each on its one GPU (--jobs-per-gpu)"
            )
            parameters["setup"] = [comment, *parameters.get("setup", [])]
        return parameters

    def _runnable(self, group: list[JobRequest]) -> TaskCommand | TaskPack:
        """What one array task runs: the job's command (a job alone keeps the task's id),
        or the group's side by side."""
        if len(group) == 1:
            return self._task(group[0])
        return TaskPack(tuple(self._task(r) for r in group), mps=self.mps)

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
    def _chunks(requests: list[JobRequest], size: int) -> list[list[list[JobRequest]]]:
        """Arrays of at most `size` tasks of equal resources; each task a group of requests:
        one job, or for jobs that share a GPU N ways, up to N of them (spread evenly over
        as few tasks as hold them all)."""
        groups: dict[Resources, list[JobRequest]] = {}
        for request in requests:
            groups.setdefault(request.resources, []).append(request)
        tasks_by_resources = [
            _packs(group, resources.jobs_per_gpu) if resources.shares_gpu else [[r] for r in group]
            for resources, group in groups.items()
        ]
        return [
            tasks[i : i + size] for tasks in tasks_by_resources for i in range(0, len(tasks), size)
        ]


def task_resources(group: list[JobRequest]) -> Resources:
    """What one array task holds for its group: a job's resources, or for jobs that share
    a GPU N ways, the GPU and N times a job's CPUs and memory."""
    resources = group[0].resources
    if not resources.shares_gpu:
        return resources
    share = resources.jobs_per_gpu
    return dataclasses.replace(
        resources,
        cpus=resources.cpus * share,
        mem_gb=resources.mem_gb * share if resources.mem_gb else None,
        jobs_per_gpu=1,
    )


def _packs(requests: list[JobRequest], per_task: int) -> list[list[JobRequest]]:
    """`requests` in as few groups of at most `per_task` as hold them, sizes within one."""
    count = -(-len(requests) // per_task)
    return [requests[i::count] for i in range(count)]


def _member_ids(task_id: str, count: int) -> list[str]:
    return [task_id] if count == 1 else [packed_id(task_id, k, count) for k in range(count)]


def _task_id(scheduler_id: str) -> str:
    member = unpacked(scheduler_id)
    return scheduler_id if member is None else member[0]


_UNKNOWN = SchedulerState(JobStatus.UNKNOWN)


def job_name(request: JobRequest) -> str:
    return f"affvx-{request.workdir.name}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
