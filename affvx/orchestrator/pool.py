"""The job pool: keeps one backend busy with the jobs of one or more runs.

    pool = JobPool(backend)
    pool.submit(run, config, jobs)          # at any time, for any run
    while pool.busy:
        for ended in pool.step():           # typed events: a job ended for good
            ...

The pool keeps no state that matters: everything is in the run directories, so a process
that dies can be replaced at any moment by a new pool that `submit`s the same jobs again. On
`submit` each job's state is worked out from its files and one batched scheduler query: a
complete job ends at once, a job the scheduler still runs is followed, every other job is
submitted.

Policy (tested on a fake backend in tests/orchestrator/test_pool.py):
- a job that checkpointed and exited with EXIT_REQUEUE is submitted again, without limit
  (a backend that `requeues_itself` does that by itself and the pool only follows);
- a job that failed, or that the scheduler lost (UNKNOWN without a result), is submitted
  again up to `max_retries` times per submission; then it ends FAILED -- unless its files
  say it checkpointed to run again (a scheduler without job history forgets finished
  jobs; a task of packed jobs has one status for all), which is a requeue;
- a job that exited with EXIT_INPUT failed deterministically and is never retried; so is
  one whose own attempt record says so, whatever its task's status (a packed job's);
- a job requeued STALLED_REQUEUES times in a row without training a batch more (a time
  limit shorter than its start-up) ends FAILED, saying so, instead of looping forever;
- a job marked cancelled in its files (`affvx cancel`, or `cancel` here) is stopped on the
  backend and ends CANCELLED;
- result.json alone means COMPLETE, whatever the scheduler said.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.cluster.base import Backend, JobRequest, JobStatus, SchedulerState
from affvx.orchestrator.config import ExperimentConfig
from affvx.orchestrator.ledger import JobFiles, JobState, running_here_but_dead, view_job
from affvx.orchestrator.plan import PlannedJob
from affvx.orchestrator.rundir import RunDir
from affvx.protocol import EXIT_INPUT, EXIT_REQUEUE


class Outcome(str, enum.Enum):
    """How a job ended for good in the pool."""

    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobEnded:
    """A job of `run` that will not run again in this pool: its outcome, and its result
    (result.json) when COMPLETE."""

    run: RunDir
    job: PlannedJob
    outcome: Outcome
    result: dict[str, Any] | None = None
    reason: str = ""


@dataclass
class _Tracked:
    run: RunDir
    config: ExperimentConfig
    job: PlannedJob
    scheduler_id: str = ""
    failures: int = 0
    runtime_s: float = 0.0
    stalled_requeues: int = 0
    progress_seen: tuple[Any, Any] | None = None

    @property
    def files(self) -> JobFiles:
        return JobFiles(self.run.job_dir(self.job.job_id))


RequestsFor = Callable[[RunDir, ExperimentConfig, list[PlannedJob], Backend], list[JobRequest]]
EventSink = Callable[[str, str], None]


class JobPool:
    """Runs the jobs submitted to it on one backend, several runs at once; see the module
    docstring for the retry, cancel and loss policy.

    `requests_for` turns jobs into the backend's JobRequests (the orchestrator's
    `job_requests`); `on_event(job_id, message)` hears every submission, requeue, retry
    and end, for display.
    """

    def __init__(
        self,
        backend: Backend,
        requests_for: RequestsFor,
        *,
        on_event: EventSink | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.requests_for = requests_for
        self.on_event = on_event or (lambda job_id, message: None)
        self.poll_interval_s = poll_interval_s or backend.poll_interval_s
        self._active: dict[tuple[Path, str], _Tracked] = {}
        self._ended: list[JobEnded] = []
        self._cancel_seen: dict[Path, float] = {}
        self.runtime_s: dict[tuple[Path, str], float] = {}

    @property
    def busy(self) -> bool:
        """True while a job is in the scheduler or an event is waiting to be taken."""
        return bool(self._active or self._ended)

    def active_jobs(self, run: RunDir | None = None) -> list[PlannedJob]:
        return [t.job for t in self._active.values() if run is None or t.run.path == run.path]

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, run: RunDir, config: ExperimentConfig, jobs: list[PlannedJob]) -> None:
        """Take on `jobs` of `run`: complete ones end at once (see `step`), jobs the
        scheduler still runs are followed, every other one is submitted."""
        new = [job for job in jobs if _key(run, job) not in self._active]
        tracked = [_Tracked(run, config, job) for job in new]
        views = {t.job.job_id: view_job(t.job.job_id, t.files) for t in tracked}
        alive = self._still_in_scheduler(views)
        to_submit = []
        for item in tracked:
            view = views[item.job.job_id]
            if view.state is JobState.COMPLETE:
                self._end(item, Outcome.COMPLETE)
            elif item.job.job_id in alive:
                item.scheduler_id = alive[item.job.job_id]
                self._active[_key(run, item.job)] = item
            else:
                if view.state is JobState.RUNNING:
                    _close_silent_attempt(item.files, "lost", None)
                to_submit.append(item)
        self._submit(to_submit)

    def cancel(self, run: RunDir, job_ids: list[str]) -> None:
        """Mark these jobs of `run` cancelled and stop the ones in the scheduler; each ends
        CANCELLED (or COMPLETE, if it finished first)."""
        for job_id in job_ids:
            JobFiles(run.job_dir(job_id)).mark_cancelled()
        self.backend.cancel(
            [
                t.scheduler_id
                for t in self._active.values()
                if t.run.path == run.path and t.job.job_id in job_ids
            ]
        )

    def _still_in_scheduler(self, views: dict[str, Any]) -> dict[str, str]:
        candidates = {
            job_id: view.scheduler_id
            for job_id, view in views.items()
            if view.state in (JobState.SUBMITTED, JobState.RUNNING)
            and view.scheduler_id
            and not running_here_but_dead(view)
        }
        if not candidates:
            return {}
        states = self.backend.poll(list(candidates.values()))
        return {
            job_id: scheduler_id
            for job_id, scheduler_id in candidates.items()
            if states.get(scheduler_id, _UNKNOWN).status.is_active()
        }

    def _submit(self, items: list[_Tracked]) -> None:
        by_run: dict[tuple[Path, int], list[_Tracked]] = {}
        for item in items:
            by_run.setdefault((item.run.path, id(item.config)), []).append(item)
        for group in by_run.values():
            first = group[0]
            requests = self.requests_for(
                first.run, first.config, [t.job for t in group], self.backend
            )
            attempts = [t.files.next_attempt() for t in group]
            scheduler_ids = self.backend.submit(requests)
            first.run.record_scheduler_reach(self.backend.reach())
            for item, attempt, scheduler_id in zip(group, attempts, scheduler_ids):
                item.files.write_submission(
                    attempt=attempt, backend=self.backend.name, scheduler_id=scheduler_id
                )
                item.scheduler_id = scheduler_id
                self._active[_key(item.run, item.job)] = item
                self.on_event(item.job.job_id, f"submitted as {scheduler_id}")

    # -- following ----------------------------------------------------------------------------

    def step(self) -> list[JobEnded]:
        """Wait for the backend (at most the poll interval), look at every active job once,
        resubmit what must run again, and return the jobs that ended for good."""
        if self._active and not self._ended:
            self.backend.wait(self.poll_interval_s)
            self._stop_cancelled_jobs()
            states = self.backend.poll([t.scheduler_id for t in self._active.values()])
            again = []
            for key, item in list(self._active.items()):
                state = states.get(item.scheduler_id, _UNKNOWN)
                if state.status.is_active():
                    continue
                del self._active[key]
                if state.runtime_s is not None:
                    item.runtime_s += state.runtime_s
                    self.runtime_s[key] = item.runtime_s
                if self._attempt_ended(item, state):
                    again.append(item)
            self._submit(again)
        ended, self._ended = self._ended, []
        return ended

    def run_until_idle(self, on_step: Callable[[], None] = lambda: None) -> list[JobEnded]:
        """`step` until nothing is active; every JobEnded, in the order they happened."""
        ended: list[JobEnded] = []
        while self.busy:
            ended.extend(self.step())
            on_step()
        return ended

    def _attempt_ended(self, item: _Tracked, state: SchedulerState) -> bool:
        """Record how an attempt ended; True if the job must be submitted again."""
        files, job_id = item.files, item.job.job_id
        if files.result() is not None:
            self._end(item, Outcome.COMPLETE)
            return False
        submission = files.submission() or {}
        if submission.get("cancelled_utc") or state.status is JobStatus.CANCELLED:
            _close_silent_attempt(files, "cancelled", state.exit_code)
            files.mark_cancelled()
            self._end(item, Outcome.CANCELLED)
            return False
        # its files say how it ended, where the scheduler forgot it or reports the status
        # of a whole task of packed jobs
        code = state.exit_code
        if code != EXIT_REQUEUE and _checkpointed_to_requeue(item):
            code = EXIT_REQUEUE
        elif code != EXIT_INPUT and _failed_deterministically(item):
            code = EXIT_INPUT
        if code == EXIT_REQUEUE:
            if self._stalled(item):
                self._end(item, Outcome.FAILED, STALLED_REASON)
                return False
            self.on_event(job_id, "checkpointed; requeued")
            return True  # it ended, so the scheduler did not requeue it: submit it again
        reason = {JobStatus.TIMEOUT: "timeout", JobStatus.UNKNOWN: "lost"}.get(
            state.status, "failed"
        )
        _close_silent_attempt(files, reason, code)
        if code == EXIT_INPUT:
            self._end(item, Outcome.FAILED, "failed deterministically (not retried)")
            return False
        item.failures += 1
        if item.failures > item.config.backend.max_retries:
            self._end(item, Outcome.FAILED, f"failed after {item.failures} attempts")
            return False
        self.on_event(job_id, f"attempt failed ({describe_exit(code)}); retrying")
        return True

    def _stalled(self, item: _Tracked) -> bool:
        """Count requeues that trained nothing more; True once there are too many."""
        progress = item.files.progress() or {}
        seen = (progress.get("epoch"), progress.get("batches_done"))
        item.stalled_requeues = item.stalled_requeues + 1 if seen == item.progress_seen else 0
        item.progress_seen = seen
        return item.stalled_requeues >= STALLED_REQUEUES

    def _end(self, item: _Tracked, outcome: Outcome, reason: str = "") -> None:
        result = item.files.result() if outcome is Outcome.COMPLETE else None
        self._ended.append(JobEnded(item.run, item.job, outcome, result, reason))
        self.on_event(item.job.job_id, reason or outcome.value)

    def _stop_cancelled_jobs(self) -> None:
        """Cancel on the backend the active jobs marked cancelled since the last look."""
        for run in {t.run.path: t.run for t in self._active.values()}.values():
            stamp = run.cancel_requested_at()
            if stamp is None or stamp <= self._cancel_seen.get(run.path, 0.0):
                continue
            self._cancel_seen[run.path] = stamp
            wanted = [
                t.scheduler_id
                for t in self._active.values()
                if t.run.path == run.path and (t.files.submission() or {}).get("cancelled_utc")
            ]
            self.backend.cancel(wanted)


_UNKNOWN = SchedulerState(JobStatus.UNKNOWN)
STALLED_REQUEUES = 3
STALLED_REASON = (
    f"requeued {STALLED_REQUEUES + 1} times without training a batch more: its time limit "
    "is shorter than its start-up; raise --time-limit"
)


def _key(run: RunDir, job: PlannedJob) -> tuple[Path, str]:
    return (run.path, job.job_id)


def _checkpointed_to_requeue(item: _Tracked) -> bool:
    """The attempt of `item` ended by checkpointing to run again (state.json PREEMPTED,
    written by the worker itself) -- what its exit status would have said, for a scheduler
    that no longer knows the job (no job history, no accounting)."""
    state = item.files.state() or {}
    return state.get("state") == "PREEMPTED" and state.get("scheduler_id") == item.scheduler_id


def _failed_deterministically(item: _Tracked) -> bool:
    """The attempt of `item` recorded that it failed deterministically (EXIT_INPUT, written
    by the worker itself) -- a retry would fail again, whatever its task's status says."""
    last = (item.files.attempts() or [{}])[-1]
    return last.get("scheduler_id") == item.scheduler_id and last.get("exit_code") == EXIT_INPUT


def _close_silent_attempt(files: JobFiles, exit_reason: str, code: int | None) -> None:
    """Record an attempt that ended without recording itself (killed, lost, cancelled)."""
    state = files.state()
    if not state or state.get("state") != "RUNNING":
        return
    message = f"{exit_reason}: {describe_exit(code)}" if code is not None else exit_reason
    files.close_attempt(state, exit_reason, reason=message, exit_code=code)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"
