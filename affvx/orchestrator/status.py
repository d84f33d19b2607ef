"""`affvx status`: where every job of a run is, from three sources merged.

1. the job files (result, state, submission, progress) -- the ground truth for COMPLETE;
2. the heartbeat a running job refreshes, and for jobs on this host whether their process
   still exists;
3. one batched scheduler query for jobs the files call SUBMITTED or RUNNING: `observe`,
   with the directions the driver recorded in driver.json (Ray: its state API, through the
   dashboard). Skipped for the local backend, whose scheduler lives inside the driver; when
   the scheduler does not answer, the note says so and the files alone decide.

A RUNNING job whose heartbeat stopped, that the scheduler no longer runs and that wrote no
result is LOST, never COMPLETE; the reason says which sources disagreed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affvx.cluster.base import JobStatus, SchedulerState
from affvx.orchestrator.ledger import (
    JobFiles,
    JobState,
    JobView,
    heartbeat_stale,
    running_here_but_dead,
    view_job,
)
from affvx.orchestrator.plan import PlannedJob
from affvx.orchestrator.rundir import RunDir
from affvx.storage.atomic import atomic_write_text

STATE_ORDER = [s.value for s in JobState]


@dataclass
class RunStatus:
    """Every job of a run with its merged state."""

    run: RunDir
    jobs: list[PlannedJob]
    views: dict[str, JobView]
    driver: dict[str, Any] | None
    note: str = ""

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATE_ORDER}
        for view in self.views.values():
            counts[view.state.value] += 1
        return {state: n for state, n in counts.items() if n}

    def to_json(self) -> dict[str, Any]:
        jobs = []
        for job in self.jobs:
            view = self.views[job.job_id]
            jobs.append(
                {
                    "job_id": job.job_id,
                    "fold": job.fold,
                    "emotion": job.emotion,
                    "modalities": job.modality_set,
                    "seed": job.seed,
                    "state": view.state.value,
                    "attempts": view.attempts,
                    "val_ccc": view.val_ccc,
                    "best_epoch": view.best_epoch,
                    "epoch": view.epoch,
                    "max_epochs": view.max_epochs,
                    "elapsed_s": view.elapsed_s,
                    "scheduler_id": view.scheduler_id,
                    "node": view.node,
                    "reason": view.reason,
                }
            )
        return {
            "run": str(self.run.path),
            "counts": self.counts(),
            "driver": self.driver,
            "note": self.note,
            "jobs": jobs,
        }


CACHE_FILE = ".status-cache.json"
_CACHED_FIELDS = (
    "attempts",
    "scheduler_id",
    "node",
    "val_ccc",
    "best_epoch",
    "epoch",
    "elapsed_s",
)


def read_views(run: RunDir, jobs: list[PlannedJob]) -> dict[str, JobView]:
    """Every job's view from its files.

    A complete job never changes again (result.json is never overwritten), so the views of
    complete jobs are kept in RUN/.status-cache.json and read back in one go; only the other
    jobs' files are read each time. A read-only run directory just goes without the cache.
    """
    cache_path = run.path / CACHE_FILE
    try:
        cached = json.loads(cache_path.read_text()).get("complete", {})
    except (OSError, ValueError):
        cached = {}
    views: dict[str, JobView] = {}
    newly_complete = {}
    jobs_dir = run.jobs_dir
    for job in jobs:
        known = cached.get(job.job_id)
        if known is not None:
            views[job.job_id] = JobView(
                job.job_id, JobState.COMPLETE, **dict(zip(_CACHED_FIELDS, known))
            )
            continue
        view = view_job(job.job_id, JobFiles(jobs_dir / job.job_id))
        views[job.job_id] = view
        if view.state is JobState.COMPLETE:
            newly_complete[job.job_id] = [getattr(view, name) for name in _CACHED_FIELDS]
    if newly_complete:
        payload = json.dumps({"complete": {**cached, **newly_complete}}, separators=(",", ":"))
        with contextlib.suppress(OSError):
            atomic_write_text(cache_path, payload)
    return views


def run_status(run_path: Path, *, query_scheduler: bool = True) -> RunStatus:
    run = RunDir.open(run_path)
    jobs = run.jobs
    views = read_views(run, jobs)
    driver = run.driver()
    status = RunStatus(run=run, jobs=jobs, views=views, driver=driver)
    scheduler, unreachable = _scheduler_states(run, views, driver) if query_scheduler else ({}, "")
    for view in views.values():
        merge_scheduler_state(view, scheduler.get(view.scheduler_id))
    unfinished = any(not v.state.is_finished() for v in views.values())
    if (
        unfinished
        and not (driver and driver.get("alive"))
        and not _backend_class(run).capabilities.jobs_outlive_client
    ):
        command = "tune" if run.saved_config.tune is not None else "launch"
        status.note = f"no affvx process follows this run; `affvx {command} --resume --run {run.path}` continues it"
    elif unreachable:
        status.note = f"{unreachable}; showing what the run directory says"
    return status


def _backend_class(run: RunDir) -> Any:
    from affvx.cluster.registry import backend_class

    return backend_class(run.saved_config.backend.name)


def _scheduler_states(
    run: RunDir, views: dict[str, JobView], driver: dict[str, Any] | None
) -> tuple[dict[str, SchedulerState], str]:
    """What the scheduler says of the unfinished jobs (one query), and why it could not be
    asked where it should have been ("" otherwise)."""
    ids = [
        v.scheduler_id
        for v in views.values()
        if v.state in (JobState.SUBMITTED, JobState.RUNNING) and v.scheduler_id
    ]
    reach = (driver or {}).get("scheduler") or {}
    if not ids or not (reach or _backend_class(run).capabilities.pollable_anywhere):
        return {}, ""
    from affvx.cluster.errors import ClusterError
    from affvx.cluster.registry import get_backend

    try:
        settings = run.saved_config.backend
        backend = get_backend(settings.name, settings.options_for())
        return backend.observe(ids, reach), ""
    except ClusterError as error:
        return {}, str(error)


def merge_scheduler_state(view: JobView, scheduled: SchedulerState | None) -> None:
    """Correct a job's file view with the scheduler's: start it, or declare it LOST."""
    if view.state is JobState.SUBMITTED and scheduled is not None:
        if scheduled.status is JobStatus.RUNNING:
            view.state = JobState.RUNNING
        elif scheduled.status is JobStatus.PENDING:
            view.reason = view.reason or scheduled.reason  # why it waits
        return
    if view.state is not JobState.RUNNING:
        return
    if running_here_but_dead(view):
        view.state, view.reason = (
            JobState.LOST,
            f"its process {view.pid} on {view.node} is gone and it wrote no result",
        )
    elif scheduled is not None and not scheduled.status.is_active() and heartbeat_stale(view):
        view.state = JobState.LOST
        view.reason = f"the scheduler says {scheduled.status.value} for {view.scheduler_id}, its heartbeat stopped, and it wrote no result"
    elif scheduled is None and heartbeat_stale(view) and view.node:
        age = "never" if view.heartbeat_age_s is None else f"{view.heartbeat_age_s:.0f} s ago"
        view.state, view.reason = (
            JobState.LOST,
            f"its heartbeat stopped ({age}) and it wrote no result",
        )
