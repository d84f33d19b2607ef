"""A backend for tests: in process, deterministic, with scriptable failures.

By default it runs each request's command as a real child process (so it passes the shared
conformance suite like any backend). A `script` replaces what an attempt does: it is called
with the request and the attempt's number (0, 1, ... per key) and returns a `Scripted` end
-- an exit status after a number of polls, an effect on the files (write result.json, say),
or a scheduler that forgets the job -- or None to run the command for real.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from affvx.cluster.base import (
    EXIT_REQUEUE,
    Backend,
    BackendOption,
    Capabilities,
    JobEnvironment,
    JobRequest,
    JobStatus,
    SchedulerState,
    block_stop_signals,
    job_time_limit_s,
)


@dataclass(frozen=True)
class Scripted:
    """One attempt that ends, `polls` polls after it was submitted, with `status` and
    `exit_code`, after running `effect` (in this process) on its request."""

    exit_code: int | None = 0
    status: JobStatus = JobStatus.EXITED
    effect: Callable[[JobRequest], None] | None = None
    polls: int = 1


LOST = Scripted(exit_code=None, status=JobStatus.UNKNOWN)

Script = Callable[[JobRequest, int], "Scripted | None"]


@dataclass
class _Job:
    request: JobRequest
    attempt: int
    scripted: Scripted | None
    polls_left: int = 0
    process: subprocess.Popen[bytes] | None = None
    state: SchedulerState = field(default_factory=lambda: SchedulerState(JobStatus.PENDING))
    cancelled: bool = False


class FakeBackend(Backend):
    """Runs requests as scripted (or as real child processes); records every submission.

    `submissions` counts submissions per key; `cancelled` lists the ids it was asked to
    cancel. With `requeues_itself`, a scripted attempt that ends with EXIT_REQUEUE is run
    again under the same id, as SLURM does.
    """

    name = "fake"
    capabilities = Capabilities(
        jobs_outlive_client=False,
        needs_local_supervisor=True,
        pollable_anywhere=False,
        requeues_itself=False,
    )
    options = (BackendOption("requeues_itself", bool, False, "requeue EXIT_REQUEUE itself"),)

    def __init__(self, script: Script | None = None, *, requeues_itself: bool = False) -> None:
        self.script = script or (lambda request, attempt: None)
        if requeues_itself:
            self.capabilities = Capabilities(False, True, False, True)
        self.submissions: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self._ids = (f"fake-{n}" for n in itertools.count(1))
        self._jobs: dict[str, _Job] = {}

    def submit(self, requests: list[JobRequest]) -> list[str]:
        ids = []
        for request in requests:
            job_id = next(self._ids)
            self._jobs[job_id] = self._attempt(job_id, request)
            self.submissions[request.key] += 1
            ids.append(job_id)
        return ids

    def poll(self, ids: list[str]) -> dict[str, SchedulerState]:
        for job_id, job in self._jobs.items():
            self._advance(job_id, job)
        return {i: self._jobs[i].state if i in self._jobs else _UNKNOWN for i in ids}

    def cancel(self, ids: list[str]) -> None:
        self.cancelled.extend(ids)
        for job_id in ids:
            job = self._jobs.get(job_id)
            if job is None or not job.state.status.is_active():
                continue
            job.cancelled = True
            if job.process is not None:
                job.process.send_signal(signal.SIGTERM)
            else:
                job.state = SchedulerState(JobStatus.CANCELLED, reason="cancelled")

    def render(self, requests: list[JobRequest]) -> list[str]:
        return [f"# fake backend: {len(requests)} jobs\n"] if requests else []

    def close(self) -> None:
        for job in self._jobs.values():
            if job.process is not None and job.process.poll() is None:
                job.process.kill()
                job.process.wait()

    def lose(self, job_id: str) -> None:
        """The scheduler forgets `job_id` (a node died with it)."""
        self._jobs.pop(job_id, None)

    # -- internals ----------------------------------------------------------------------------

    def _attempt(self, job_id: str, request: JobRequest) -> _Job:
        attempt = self.submissions[request.key]
        scripted = self.script(request, attempt)
        job = _Job(request, attempt, scripted, polls_left=scripted.polls if scripted else 0)
        if scripted is None:
            job.process = _start(job_id, request)
            job.state = SchedulerState(JobStatus.RUNNING)
        return job

    def _advance(self, job_id: str, job: _Job) -> None:
        if not job.state.status.is_active():
            return
        if job.process is not None:
            code = job.process.poll()
            if code is not None:
                status = JobStatus.CANCELLED if job.cancelled else JobStatus.EXITED
                job.state = SchedulerState(status, exit_code=code)
            return
        assert job.scripted is not None
        job.polls_left -= 1
        if job.polls_left > 0:
            job.state = SchedulerState(JobStatus.RUNNING)
            return
        if job.scripted.effect is not None:
            job.scripted.effect(job.request)
        if self.capabilities.requeues_itself and job.scripted.exit_code == EXIT_REQUEUE:
            self.submissions[job.request.key] += 1
            self._jobs[job_id] = self._attempt(job_id, job.request)
            self._jobs[job_id].state = SchedulerState(JobStatus.REQUEUED)
            return
        job.state = SchedulerState(job.scripted.status, exit_code=job.scripted.exit_code)


_UNKNOWN = SchedulerState(JobStatus.UNKNOWN)


def _start(job_id: str, request: JobRequest) -> subprocess.Popen[bytes]:
    request.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict(request.env)}
    env.update(
        JobEnvironment(
            scheduler_job_id=job_id,
            backend=FakeBackend.name,
            cpus=request.resources.cpus,
            time_limit_s=job_time_limit_s(request.resources, warning_s=1.0),
        ).to_environ()
    )
    with (
        open(request.log_dir / f"{job_id}.out", "ab") as out,
        open(request.log_dir / f"{job_id}.err", "ab") as err,
    ):
        return subprocess.Popen(
            list(request.command),
            cwd=request.workdir,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=block_stop_signals,
        )
