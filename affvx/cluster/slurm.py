"""The `slurm` backend: job arrays through submitit, requeue on USR2 / SIGTERM, state with or
without accounting.

Submission. Requests go to submitit's SlurmExecutor as one job array per batch (split to the
cluster's MaxArraySize, `%N` = array_parallelism). Each task is a pickled `RunCommand` that
runs the job's argv as a child process through the shared task shim (affvx.cluster.task). The batch script `exec`s Python, so the Python
process *is* the batch shell and receives `--signal=B:USR2@<grace>` itself.

Signals. USR2 (the warning before the time limit, or a preemption with
`preempt_send_user_signal`) and SIGTERM (preemption, scontrol requeue, scancel) are forwarded
to the child, which checkpoints and exits with EXIT_REQUEUE; the child also keeps its own
clock (AFFVX_TIME_LIMIT_S: the limit less `signal_grace_s`), so it stops in time even where
the warning is lost. If SLURM is not already
ending the job (a warning signal), the task asks it to requeue the job (`scontrol requeue`:
same id, SLURM_RESTART_COUNT + 1); SLURM requeues preempted and `scontrol requeue`d jobs by
itself, and a cancelled job stays cancelled.

State. `sacct` when the cluster has accounting; otherwise `squeue -t all` for what slurmctld
still holds and `scontrol show job` for exit codes. An id neither knows is UNKNOWN.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.cluster.arrays import SubmititArrayBackend, shared_options
from affvx.cluster.base import (
    EXIT_REQUEUE,
    BackendOption,
    Capabilities,
    JobEnvironment,
    JobRequest,
    JobStatus,
    Resources,
    SchedulerState,
)
from affvx.cluster.errors import ClusterError, SchedulerCommandError
from affvx.cluster.task import TaskCommand, TaskPack, granted_cpus, visible_gpus

DEFAULT_MAX_ARRAY_SIZE = 1001
STATES = {
    "PENDING": JobStatus.PENDING,
    "CONFIGURING": JobStatus.PENDING,
    "RUNNING": JobStatus.RUNNING,
    "COMPLETING": JobStatus.RUNNING,
    "SUSPENDED": JobStatus.RUNNING,
    "STOPPED": JobStatus.RUNNING,
    "RESIZING": JobStatus.RUNNING,
    "REQUEUED": JobStatus.REQUEUED,
    "REQUEUE_FED": JobStatus.REQUEUED,
    "REQUEUE_HOLD": JobStatus.REQUEUED,
    "PREEMPTED": JobStatus.REQUEUED,
    "COMPLETED": JobStatus.EXITED,
    "FAILED": JobStatus.EXITED,
    "OUT_OF_MEMORY": JobStatus.EXITED,
    "BOOT_FAIL": JobStatus.EXITED,
    "DEADLINE": JobStatus.EXITED,
    "NODE_FAIL": JobStatus.EXITED,
    "CANCELLED": JobStatus.CANCELLED,
    "TIMEOUT": JobStatus.TIMEOUT,
}


@dataclass(frozen=True)
class RunCommand:
    """What a SLURM task runs (pickled by submitit): the job's command through the task shim.

    A child that exits with EXIT_REQUEUE gets its job requeued, unless SLURM is already
    ending the job.
    """

    task: TaskCommand | TaskPack

    def __call__(self) -> int:
        code = self.task.run(slurm_job_environment(), _own_job_id())
        if code == EXIT_REQUEUE:
            _requeue_self()
        if code != 0:
            sys.exit(code if code > 0 else 128 - code)
        return code


def slurm_job_environment() -> JobEnvironment:
    """The job's allocation as SLURM describes it, in affvx's terms."""
    return JobEnvironment(
        scheduler_job_id=_own_job_id(),
        backend=SlurmBackend.name,
        cpus=granted_cpus("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"),
        gpus=visible_gpus(),
    )


def _own_job_id() -> str:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")


def _requeue_self() -> None:
    """Ask SLURM to run this job again -- only while it is RUNNING.

    A job SLURM is already ending is COMPLETING: then `scontrol requeue` and preemption requeue
    it by themselves, and `scancel` or the time limit end it for good (requeueing it ourselves
    would bring a cancelled job back to life).
    """
    job_id = _own_job_id()
    if not job_id:
        return
    state = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    )
    if state.stdout.strip() == "RUNNING":
        subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)


class SlurmBackend(SubmititArrayBackend):
    """Runs jobs on a SLURM cluster through submitit (see the module docstring)."""

    name = "slurm"
    submit_command = "sbatch"
    capabilities = Capabilities(
        jobs_outlive_client=True,
        needs_local_supervisor=False,
        pollable_anywhere=True,
        requeues_itself=True,
    )
    options = (
        BackendOption("partition", str, None, "SLURM partition", flag="--partition"),
        BackendOption("account", str, None, "SLURM account", flag="--account"),
        BackendOption("qos", str, None, "SLURM quality of service", flag="--qos"),
        BackendOption("constraint", str, None, "SLURM node constraint", flag="--constraint"),
        BackendOption(
            "extra_directives",
            list,
            [],
            "extra #SBATCH directive KEY=VALUE; repeat for several",
            flag="--sbatch",
        ),
        BackendOption(
            "signal_grace_s",
            int,
            120,
            "seconds before the time limit that SLURM warns the job (USR2) and that the job "
            "stops itself",
        ),
        BackendOption("accounting", str, "auto", "job state from sacct: auto, sacct or none"),
        *shared_options("slurm", "SLURM %N"),
    )

    def __init__(
        self,
        *,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        constraint: str | None = None,
        extra_directives: Sequence[str] = (),
        signal_grace_s: int = 120,
        accounting: str = "auto",
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        if accounting not in ("auto", "sacct", "none"):
            raise ClusterError(
                f"[backend.slurm] accounting = {accounting!r}: choose auto, sacct or none"
            )
        self.partition, self.account, self.qos, self.constraint = (
            partition,
            account,
            qos,
            constraint,
        )
        self.extra_directives = [_directive(d) for d in extra_directives]
        self.signal_grace_s = signal_grace_s
        self.accounting = accounting
        self._sacct_works: bool | None = None if accounting == "auto" else accounting == "sacct"
        self._max_array_size: int | None = None

    @property
    def warning_s(self) -> float:
        return self.signal_grace_s

    # -- scripts ------------------------------------------------------------------------------

    def parameters(self, resources: Resources, name: str) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for jobs with these resources."""
        directives: dict[str, Any] = {"signal": f"B:USR2@{self.signal_grace_s}", "requeue": True}
        directives.update(dict(self.extra_directives))
        parameters: dict[str, Any] = {
            "job_name": name,
            "cpus_per_task": resources.cpus,
            "use_srun": False,  # the task is the batch shell, so it gets B: signals
            "array_parallelism": self.array_parallelism,
            "additional_parameters": directives,
            "stderr_to_stdout": False,
            "time": int(max(1, round(self.time_limit_min(resources)))),
        }
        if resources.gpus:
            parameters["gpus_per_node"] = resources.gpus
        if resources.mem_gb:
            parameters["mem"] = f"{int(resources.mem_gb * 1024)}MB"
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                parameters[key] = getattr(self, key)
        if self.setup:
            parameters["setup"] = list(self.setup)
        return parameters

    def render(self, requests: list[JobRequest]) -> list[str]:
        from submitit.slurm.slurm import _make_sbatch_string

        scripts = []
        for chunk in self._chunks(requests, self._array_size_or_default()):
            folder = self._folder(chunk[0][0])
            parameters = self.array_parameters(chunk)
            if len(chunk) > 1:
                parameters["map_count"] = len(chunk)
            command = " ".join(
                [self._python_command(), "-u -m submitit.core._submit", shlex.quote(str(folder))]
            )
            scripts.append(_make_sbatch_string(command=command, folder=folder, **parameters))
        return scripts

    def _executor(self, folder: Path) -> Any:
        import submitit

        return submitit.SlurmExecutor(folder=folder, python=self._python_command())

    def _task_callable(self, task: TaskCommand | TaskPack) -> RunCommand:
        return RunCommand(task)

    def _python_command(self) -> str:
        return "exec " + self.quoted_python()

    # -- the contract -------------------------------------------------------------------------

    def poll_tasks(self, ids: list[str]) -> dict[str, SchedulerState]:
        if not ids:
            return {}
        states: dict[str, SchedulerState] = {}
        if self._use_sacct():
            states = self._from_sacct(ids)
        missing = [i for i in ids if i not in states]
        if missing:
            states.update(self._from_squeue(missing))
        ended_without_code = [
            i for i, s in states.items() if s.exit_code is None and not s.status.is_active()
        ]
        if ended_without_code:
            for job_id, state in self._from_scontrol(ended_without_code).items():
                states[job_id] = state
        return {i: states.get(i, SchedulerState(JobStatus.UNKNOWN)) for i in ids}

    def cancel_tasks(self, ids: list[str]) -> None:
        if ids:
            _run(["scancel", *ids], check=False)

    # -- arrays -------------------------------------------------------------------------------

    def max_array_size(self) -> int:
        """The cluster's MaxArraySize (from `scontrol show config`)."""
        if self._max_array_size is None:
            output = _run(["scontrol", "show", "config"], check=False)
            match = re.search(r"^MaxArraySize\s*=\s*(\d+)", output, flags=re.M)
            self._max_array_size = int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    def _array_size_or_default(self) -> int:
        return self._max_array_size or DEFAULT_MAX_ARRAY_SIZE

    # -- state --------------------------------------------------------------------------------

    def _use_sacct(self) -> bool:
        if self._sacct_works is None:
            try:
                probe = subprocess.run(
                    ["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=120
                )
            except (FileNotFoundError, subprocess.TimeoutExpired):
                self._sacct_works = False  # no accounting here: squeue and scontrol answer
            else:
                self._sacct_works = probe.returncode == 0
        return self._sacct_works

    def _from_sacct(self, ids: list[str]) -> dict[str, SchedulerState]:
        bases = sorted({i.split("_")[0] for i in ids})
        output = _run(
            [
                "sacct",
                "-n",
                "-X",
                "-P",
                "-o",
                "JobID,State,ExitCode,NodeList",
                "-j",
                ",".join(bases),
            ],
            check=False,
        )
        return {
            job_id: _state(state, exit_code, node)
            for job_field, state, exit_code, node in _rows(output, 4)
            for job_id in _expand(job_field)
        }

    def _from_squeue(self, ids: list[str]) -> dict[str, SchedulerState]:
        output = _run(
            ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%N|%r"], check=False
        )
        return {
            job_id: SchedulerState(STATES.get(state, JobStatus.UNKNOWN), node=node, reason=reason)
            for job_field, state, node, reason in _rows(output, 4)
            for job_id in _expand(job_field)
        }

    def _from_scontrol(self, ids: list[str]) -> dict[str, SchedulerState]:
        states = {}
        for base in sorted({i.split("_")[0] for i in ids}):
            output = _run(["scontrol", "show", "job", "-o", base], check=False)
            for line in output.splitlines():
                fields = dict(re.findall(r"(\w+)=(\S*)", line))
                if "JobState" not in fields:
                    continue
                task = fields.get("ArrayTaskId")
                job_id = (
                    f"{fields['ArrayJobId']}_{task}"
                    if task and fields.get("ArrayJobId")
                    else fields.get("JobId", "")
                )
                states[job_id] = _state(
                    fields["JobState"], fields.get("ExitCode", ""), fields.get("NodeList", "")
                )
        return states


def _state(state: str, exit_code: str, node: str) -> SchedulerState:
    """A SchedulerState from SLURM's state word and `code:signal` exit code."""
    word = state.split()[0] if state else ""
    status = STATES.get(word, JobStatus.UNKNOWN)
    code: int | None = None
    if ":" in exit_code and not status.is_active():
        value, _, sig = exit_code.partition(":")
        code = (
            -int(sig) if sig.isdigit() and int(sig) else (int(value) if value.isdigit() else None)
        )
    return SchedulerState(
        status, exit_code=code, node=node if node != "None assigned" else "", reason=state
    )


def _rows(output: str, width: int) -> list[list[str]]:
    """The `|`-separated lines of `sacct -P` / `squeue -o` output, cut to `width` fields;
    shorter lines (warnings, blanks) are skipped."""
    rows = [line.split("|") for line in output.splitlines()]
    return [row[:width] for row in rows if len(row) >= width]


def _expand(job_field: str) -> list[str]:
    """`123`, `123_4`, `123_[1-3,7%2]` -> the job ids they stand for."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_field)
    if not match:
        return [job_field]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        ids.extend(f"{base}_{i}" for i in range(int(first), int(last or first) + 1))
    return ids


def _directive(text: str) -> tuple[str, Any]:
    """`--key=value`, `key=value` or `--flag` -> (key, value)."""
    text = text.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH") :].strip()
    key, sep, value = text.lstrip("-").partition("=")
    if not key:
        raise ClusterError(f"extra sbatch directive {text!r}: use key=value, e.g. mail-type=END")
    return key.strip().replace("_", "-"), value.strip() if sep else True


def _run(command: list[str], check: bool = True) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ClusterError(f"{command[0]} is not on PATH: is this a SLURM login node?") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{command[0]} did not answer within 120 s") from None
    if check and result.returncode != 0:
        raise SchedulerCommandError(command, result.returncode, result.stdout, result.stderr)
    return result.stdout
