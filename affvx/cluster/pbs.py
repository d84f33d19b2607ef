"""The `pbs` backend: PBS Pro / OpenPBS (and Torque) through affvx's submitit plugin.

Submission. Requests go to `PbsExecutor` (affvx.cluster.submitit_pbs) as one job array per
batch of equal resources (`-J 0-N%P`, split at the server's max_array_size), each task a
pickled `RunCommand` that runs the job's argv through the shared task shim.

Time. PBS gives no warning before the walltime: SIGTERM at the limit, SIGKILL `kill_delay`
later. So the job keeps its own clock (AFFVX_TIME_LIMIT_S: the walltime less a margin,
affvx.cluster.base.job_time_limit_s), checkpoints and exits with EXIT_REQUEUE before the
limit; PBS cannot requeue a job for its owner (`qrerun` is an operator's command), so the
pool submits it again and the new attempt resumes from the checkpoint. A SIGTERM (qdel, the
walltime, an operator's qrerun) also ends in a checkpoint: the task forwards it.

State. `qstat -x -f -F json` (job history must be on; without it a finished job is simply
unknown), parsed defensively with a fallback to the text form (affvx.cluster.pbs_qstat). A
qstat that fails (server unreachable) is no news: the last state seen is kept, never
"ended". An id the server does not know is UNKNOWN.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.cluster import pbs_qstat
from affvx.cluster.arrays import SubmititArrayBackend, shared_options
from affvx.cluster.base import (
    BackendOption,
    Capabilities,
    JobEnvironment,
    JobRequest,
    JobStatus,
    Resources,
    SchedulerState,
)
from affvx.cluster.errors import ClusterError
from affvx.cluster.task import TaskCommand, TaskPack, granted_cpus, visible_gpus

DEFAULT_MAX_ARRAY_SIZE = 10000
FLAVOUR_CHOICES = ("auto", "pbspro", "torque")


@dataclass(frozen=True)
class RunCommand:
    """What a PBS task runs (pickled by submitit): the job's command through the task shim,
    ending with the job's own exit status."""

    task: TaskCommand | TaskPack

    def __call__(self) -> int:
        environment = pbs_job_environment()
        code = self.task.run(environment, environment.scheduler_job_id)
        if code != 0:
            sys.exit(code if code > 0 else 128 - code)
        return code


def pbs_job_environment() -> JobEnvironment:
    """The job's allocation as PBS describes it, in affvx's terms."""
    return JobEnvironment(
        scheduler_job_id=os.environ.get("PBS_JOBID", ""),
        backend=PbsBackend.name,
        cpus=granted_cpus("NCPUS", "PBS_NUM_PPN"),
        gpus=visible_gpus(),
    )


class PbsBackend(SubmititArrayBackend):
    """Runs jobs on a PBS Pro, OpenPBS or Torque cluster (see the module docstring)."""

    name = "pbs"
    submit_command = "qsub"
    capabilities = Capabilities(
        jobs_outlive_client=True,
        needs_local_supervisor=False,
        pollable_anywhere=True,
        requeues_itself=False,
    )
    options = (
        BackendOption("queue", str, None, "PBS queue (-q)", flag="--queue"),
        BackendOption("account", str, None, "account to charge (-A)", flag="--account"),
        BackendOption(
            "extra_directives",
            list,
            [],
            "extra #PBS directive, e.g. '-l place=excl'; repeat for several",
            flag="--pbs-directive",
        ),
        BackendOption(
            "flavour", str, "auto", "pbspro (PBS Pro, OpenPBS) or torque [default: asked of qstat]"
        ),
        *shared_options("pbs", "PBS -J 0-N%P"),
    )
    warning_s = 0.0  # PBS warns nobody before the walltime

    def __init__(
        self,
        *,
        queue: str | None = None,
        account: str | None = None,
        extra_directives: Sequence[str] = (),
        flavour: str = "auto",
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        if flavour not in FLAVOUR_CHOICES:
            raise ClusterError(
                f"[backend.pbs] flavour = {flavour!r}: choose {', '.join(FLAVOUR_CHOICES)}"
            )
        self.queue = _plain_word("queue", queue)
        self.account = _plain_word("account", account)
        self.extra_directives = [_checked_directive(d) for d in extra_directives]
        self._flavour = flavour
        self._max_array_size: int | None = None
        self._last_seen: dict[str, SchedulerState] = {}

    @property
    def flavour(self) -> str:
        """pbspro or torque: as configured, else asked of `qstat --version`."""
        if self._flavour == "auto":
            from affvx.cluster.submitit_pbs import detect_flavour

            self._flavour = detect_flavour()
        return self._flavour

    # -- scripts ------------------------------------------------------------------------------

    def parameters(self, resources: Resources, name: str) -> dict[str, Any]:
        """PbsExecutor parameters for jobs with these resources."""
        return {
            "job_name": name,
            "queue": self.queue,
            "account": self.account,
            "ncpus": resources.cpus,
            "ngpus": resources.gpus,
            "mem_gb": resources.mem_gb,
            "walltime_min": self.time_limit_min(resources),
            "array_parallelism": self.array_parallelism,
            "directives": list(self.extra_directives),
            "setup": list(self.setup),
            "flavour": self.flavour,
        }

    def render(self, requests: list[JobRequest]) -> list[str]:
        from affvx.cluster.submitit_pbs import LEAN_ENTRY, qsub_script, submitit_command

        scripts = []
        for chunk in self._chunks(requests, self._max_array_size or DEFAULT_MAX_ARRAY_SIZE):
            folder = self._folder(chunk[0][0])
            command = submitit_command(self.quoted_python(), folder, LEAN_ENTRY)
            parameters = self.array_parameters(chunk)
            scripts.append(qsub_script(command, folder, array_size=len(chunk), **parameters))
        return scripts

    def _executor(self, folder: Path) -> Any:
        from affvx.cluster.submitit_pbs import LEAN_ENTRY, PbsExecutor

        # a RunCommand needs nothing of submitit in the job: the lean entry starts in half the time
        return PbsExecutor(folder, python=self.quoted_python(), entry=LEAN_ENTRY)

    def _task_callable(self, task: TaskCommand | TaskPack) -> RunCommand:
        return RunCommand(task)

    # -- the contract -------------------------------------------------------------------------

    def poll_tasks(self, ids: list[str]) -> dict[str, SchedulerState]:
        if not ids:
            return {}
        jobs = pbs_qstat.query(ids, self.flavour)
        if jobs is None:  # no answer: nothing is known to have changed
            return {i: self._last_seen.get(i, _NO_ANSWER) for i in ids}
        states = {}
        for job_id in ids:
            attributes = jobs.get(job_id)
            states[job_id] = (
                pbs_qstat.job_state(attributes)
                if attributes
                else SchedulerState(JobStatus.UNKNOWN)
            )
        self._last_seen.update(states)
        return states

    def cancel_tasks(self, ids: list[str]) -> None:
        if ids:
            pbs_qstat.run(["qdel", *ids])

    # -- arrays -------------------------------------------------------------------------------

    def max_array_size(self) -> int:
        """The server's max_array_size (`qstat -B -f`), else PBS's default."""
        if self._max_array_size is None:
            done = pbs_qstat.run(["qstat", "-B", "-f"])
            size = DEFAULT_MAX_ARRAY_SIZE
            for line in done.stdout.splitlines():
                key, _, value = line.strip().partition(" = ")
                if key == "max_array_size" and value.strip().isdigit():
                    size = int(value)
            self._max_array_size = size
        return self._max_array_size


_NO_ANSWER = SchedulerState(JobStatus.PENDING, reason="qstat did not answer")


def _checked_directive(text: str) -> str:
    try:
        return pbs_qstat.directive(text)
    except ValueError as error:
        raise ClusterError(f"[backend.pbs] extra_directives: {error}") from None


def _plain_word(option: str, value: str | None) -> str | None:
    """`value` if a #PBS directive can carry it as it is (no spaces, quotes or $)."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@:+=-]+", value):
        raise ClusterError(
            f"[backend.pbs] {option} = {value!r}: use letters, digits and _ . @ : + = - only "
            "(PBS names have no spaces or quotes)"
        )
    return value
