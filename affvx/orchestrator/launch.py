"""`affvx launch`: plan the grid, submit its jobs, follow them, resume after any crash.

The driver keeps no state of its own: everything it needs is in the run directory, so a
driver that dies can be replaced by `affvx launch --resume` at any moment. On every launch it
works out each job's state from the job's files and one batched scheduler query; jobs still
alive in the scheduler are followed, complete jobs are never touched, and every other job is
submitted (again).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affvx.cluster.base import Backend, JobRequest, JobStatus, Resources, SchedulerState
from affvx.cluster.errors import ClusterError
from affvx.cluster.registry import get_backend
from affvx.orchestrator.config import ExperimentConfig, resolve_config
from affvx.orchestrator.demo import ensure_demo_store
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.folds import FoldTable, make_folds, store_trials
from affvx.orchestrator.ledger import (
    JobFiles,
    JobState,
    JobView,
    now_utc,
    running_here_but_dead,
    view_job,
)
from affvx.orchestrator.plan import PlannedJob, plan_jobs
from affvx.orchestrator.rundir import RunDir, new_run_path, newest_run
from affvx.storage.reader import FeatureStore

EXIT_REQUEUE, EXIT_INPUT = 75, 2
CANCEL_REQUEST = "cancel.request"


class LaunchObserver:
    """What the driver reports while it works; the CLI renders it. Every method is optional."""

    def on_plan(self, run: RunDir, jobs: list[PlannedJob], resumed: bool) -> None: ...

    def on_views(self, views: dict[str, JobView]) -> None: ...

    def on_event(self, job_id: str, message: str) -> None: ...


@dataclass
class LaunchOutcome:
    """How a launch ended: the run, each job's final view, and the exit code."""

    run: RunDir
    views: dict[str, JobView] = field(default_factory=dict)
    detached: bool = False
    dry_run_scripts: list[str] = field(default_factory=list)
    jobs: list[PlannedJob] = field(default_factory=list)
    runtime_s: dict[str, float] = field(default_factory=dict)
    dry_run_command: str = ""

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for view in self.views.values():
            counts[view.state.value] = counts.get(view.state.value, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        if self.detached or self.dry_run_scripts:
            return 0
        return 0 if all(v.state is JobState.COMPLETE for v in self.views.values()) else 1


# -- preparing a run ---------------------------------------------------------------------------


def prepare(
    *,
    flags: dict[str, Any],
    config_file: Path | None,
    run_path: Path | None,
    resume: bool,
    note: Callable[[str], None],
) -> tuple[RunDir, ExperimentConfig, FoldTable, list[PlannedJob], bool]:
    """Resolve the configuration, the run directory and the plan (nothing is written)."""
    if run_path is None and resume:
        run_path = newest_run()
    run = RunDir(run_path or new_run_path())
    if resume and not run.exists():
        raise ConfigError(
            f"{run.path}: no run to resume (no experiment.toml); launch without --resume"
        )
    existing = run.exists()
    if existing:
        config = resolve_config(
            flags=flags, config_file=config_file, saved=run.saved_config_data()
        )
        run.check_same_experiment(config)
    else:
        if run.path.exists() and any(run.path.iterdir()):
            raise ConfigError(f"{run.path}: exists and is not an affvx run; choose another --run")
        if flags.get("store") is None and not (config_file and "store" in _file_keys(config_file)):
            flags = {**flags, "store": str(ensure_demo_store(note))}
        if flags.get("store") is not None:
            flags = {**flags, "store": str(Path(flags["store"]).resolve())}
        config = resolve_config(flags=flags, config_file=config_file)
    store = FeatureStore(config.store)
    for modalities in config.modalities:
        missing = [m for m in modalities if m not in store.modalities]
        if missing:
            raise ConfigError(
                f"unknown modality {missing[0]!r}: the store {store.path} has {', '.join(store.modalities)}"
            )
    folds = (
        run.folds
        if existing
        else make_folds(store_trials(store), config.protocol, config.folds, config.fold_seed)
    )
    jobs = plan_jobs(config, folds, store.fingerprint)
    if existing:
        saved = {job.job_id: job.config_hash for job in run.jobs}
        changed = [job.job_id for job in jobs if saved.get(job.job_id) != job.config_hash]
        if changed:
            raise ConfigError(
                f"{run.path}: job {changed[0]} no longer matches the run (the store's content or the "
                "experiment changed); start a new run with --run NEW_DIR"
            )
    return run, config, folds, jobs, existing


def _file_keys(path: Path) -> set[str]:
    from affvx.orchestrator.config import read_config_file

    return set(read_config_file(path))


def job_requests(
    run: RunDir, config: ExperimentConfig, jobs: list[PlannedJob], backend_name: str
) -> list[JobRequest]:
    """What the backend runs for each job: the worker, with the job's resources."""
    root = run.path.resolve()
    settings = config.resources
    resources = Resources(
        cpus=settings.cpus,
        gpus=settings.gpus,
        mem_gb=settings.mem_gb,
        time_limit_min=settings.time_limit_min,
    )
    env = (("AFFVX_BACKEND", backend_name), ("AFFVX_DEVICE", "cuda" if settings.gpus else "cpu"))
    return [
        JobRequest(
            key=job.job_id,
            command=(sys.executable, "-m", "affvx.orchestrator.worker", str(root), job.job_id),
            workdir=root,
            log_dir=root / "jobs" / job.job_id / "log",
            resources=resources,
            env=env,
            name=job.job_id,
        )
        for job in jobs
    ]


def make_backend(config: ExperimentConfig, max_parallel: int | None = None) -> Backend:
    options = config.backend.options_for()
    if max_parallel is not None:
        options["max_parallel"] = max_parallel
    try:
        return get_backend(config.backend.name, **options)
    except TypeError as error:
        raise ConfigError(f"[backend.{config.backend.name}]: {error}") from None


# -- the driver --------------------------------------------------------------------------------


class Driver:
    """Keeps a backend busy with a run's unfinished jobs until every job is finished.

    Retries: a job that checkpointed and exited to be requeued is resubmitted without limit
    (unless the scheduler requeues it itself); a job that failed is resubmitted up to
    `max_retries` times per launch; a job that failed on bad input is never retried.
    """

    def __init__(
        self,
        run: RunDir,
        config: ExperimentConfig,
        jobs: list[PlannedJob],
        backend: Backend,
        *,
        observer: LaunchObserver | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        self.run = run
        self.config = config
        self.jobs = {job.job_id: job for job in jobs}
        self.backend = backend
        self.observer = observer or LaunchObserver()
        self.poll_interval_s = poll_interval_s or backend.poll_interval_s
        self.active: dict[str, str] = {}  # job id -> scheduler id
        self.failures: dict[str, int] = {}
        self.final: set[str] = set()
        self.runtime_s: dict[str, float] = {}  # job id -> seconds its processes ran (if known)
        self._cancel_seen = 0.0

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.run.job_dir(job_id))

    def start(self) -> None:
        """Adopt jobs the scheduler still runs; submit every other unfinished job."""
        views = {job_id: view_job(job_id, self.files(job_id)) for job_id in self.jobs}
        alive = self._still_in_scheduler(views)
        to_submit = []
        for job_id, view in views.items():
            if view.state is JobState.COMPLETE:
                self.final.add(job_id)
            elif job_id in alive:
                self.active[job_id] = alive[job_id]
            else:
                if view.state is JobState.RUNNING:
                    self._close_silent_attempt(job_id, "lost", None)
                to_submit.append(job_id)
        self._submit(to_submit)
        self.observer.on_views(self.views())

    def _still_in_scheduler(self, views: dict[str, JobView]) -> dict[str, str]:
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
            j: s
            for j, s in candidates.items()
            if states.get(s, SchedulerState(JobStatus.UNKNOWN)).status.is_active()
        }

    def _submit(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        requests = job_requests(
            self.run, self.config, [self.jobs[j] for j in job_ids], self.backend.name
        )
        attempts = {j: self.files(j).next_attempt() for j in job_ids}
        scheduler_ids = self.backend.submit(requests)
        for job_id, scheduler_id in zip(job_ids, scheduler_ids):
            self.files(job_id).write_submission(
                attempt=attempts[job_id], backend=self.backend.name, scheduler_id=scheduler_id
            )
            self.active[job_id] = scheduler_id
            self.observer.on_event(job_id, f"submitted as {scheduler_id}")

    def follow(self) -> dict[str, JobView]:
        """Poll until no job is active; return every job's final view."""
        last_views = 0.0
        while self.active:
            self._wait()
            self._handle_cancel_requests()
            states = self.backend.poll(list(self.active.values()))
            resubmit = []
            for job_id, scheduler_id in list(self.active.items()):
                state = states.get(scheduler_id, SchedulerState(JobStatus.UNKNOWN))
                if state.status.is_active():
                    continue
                del self.active[job_id]
                if state.runtime_s is not None:
                    self.runtime_s[job_id] = self.runtime_s.get(job_id, 0.0) + state.runtime_s
                if self._ended(job_id, state):
                    resubmit.append(job_id)
            self._submit(resubmit)
            if time.monotonic() - last_views > 2.0 or not self.active:
                last_views = time.monotonic()
                self.observer.on_views(self.views())
        return self.views()

    def views(self) -> dict[str, JobView]:
        return {job_id: view_job(job_id, self.files(job_id)) for job_id in self.jobs}

    def _wait(self) -> None:
        wait = getattr(self.backend, "wait", None)
        if wait is not None:
            wait(self.poll_interval_s)
        else:
            time.sleep(self.poll_interval_s)

    def _ended(self, job_id: str, state: SchedulerState) -> bool:
        """Record how a job's attempt ended; True if it must be submitted again."""
        files = self.files(job_id)
        if files.result() is not None:
            self.final.add(job_id)
            self.observer.on_event(job_id, "complete")
            return False
        submission = files.submission() or {}
        if submission.get("cancelled_utc") or state.status is JobStatus.CANCELLED:
            self._close_silent_attempt(job_id, "cancelled", state.exit_code)
            files.mark_cancelled()
            self.final.add(job_id)
            self.observer.on_event(job_id, "cancelled")
            return False
        code = state.exit_code
        if code == EXIT_REQUEUE:
            self.observer.on_event(job_id, "checkpointed; requeued")
            return True  # it ended, so the scheduler did not requeue it: submit it again
        reason = {JobStatus.TIMEOUT: "timeout", JobStatus.UNKNOWN: "lost"}.get(
            state.status, "failed"
        )
        self._close_silent_attempt(job_id, reason, code)
        if code == EXIT_INPUT:
            self.final.add(job_id)
            self.observer.on_event(job_id, "failed on bad input (not retried)")
            return False
        self.failures[job_id] = self.failures.get(job_id, 0) + 1
        if self.failures[job_id] > self.config.backend.max_retries:
            self.final.add(job_id)
            self.observer.on_event(job_id, f"failed after {self.failures[job_id]} attempts")
            return False
        self.observer.on_event(job_id, f"attempt failed ({_describe_exit(code)}); retrying")
        return True

    def _close_silent_attempt(self, job_id: str, reason: str, code: int | None) -> None:
        """Record an attempt that ended without recording itself (killed, lost, cancelled)."""
        files = self.files(job_id)
        state = files.state()
        if not state or state.get("state") != "RUNNING":
            return
        message = f"{reason}: {_describe_exit(code)}" if code is not None else reason
        files.append_attempt(
            {
                "attempt": state.get("attempt"),
                "backend": state.get("backend"),
                "scheduler_id": state.get("scheduler_id"),
                "node": state.get("node"),
                "pid": state.get("pid"),
                "start_utc": state.get("started_utc"),
                "end_utc": now_utc(),
                "exit_reason": reason,
                "exit_code": code,
            }
        )
        final = "CANCELLED" if reason == "cancelled" else "FAILED"
        files.write_state(
            {
                **state,
                "state": final,
                "ended_utc": now_utc(),
                "exit_reason": reason,
                "reason": message,
            }
        )

    def _handle_cancel_requests(self) -> None:
        try:
            stamp = (self.run.path / CANCEL_REQUEST).stat().st_mtime
        except FileNotFoundError:
            return
        if stamp <= self._cancel_seen:
            return
        self._cancel_seen = stamp
        wanted = [
            s
            for j, s in self.active.items()
            if (self.files(j).submission() or {}).get("cancelled_utc")
        ]
        self.backend.cancel(wanted)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


# -- launch ------------------------------------------------------------------------------------


def launch(
    *,
    flags: dict[str, Any],
    config_file: Path | None = None,
    run_path: Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    detach: bool = False,
    max_parallel: int | None = None,
    observer: LaunchObserver | None = None,
    note: Callable[[str], None] = lambda message: None,
    poll_interval_s: float | None = None,
) -> LaunchOutcome:
    """Plan, then submit and (unless detached) follow every unfinished job of the run."""
    observer = observer or LaunchObserver()
    run, config, folds, jobs, existing = prepare(
        flags=flags, config_file=config_file, run_path=run_path, resume=resume, note=note
    )
    backend = make_backend(config, max_parallel)
    if dry_run:
        requests = job_requests(run, config, jobs, backend.name)
        return LaunchOutcome(
            run=run,
            jobs=jobs,
            dry_run_scripts=backend.render(requests),
            dry_run_command=shlex.join(requests[0].command) if requests else "",
        )
    if not existing:
        run.create(config, folds, jobs)
    observer.on_plan(run, jobs, existing)
    if detach and backend.name == "local":
        backend.close()
        spawn_supervisor(run, max_parallel)
        return LaunchOutcome(run=run, jobs=jobs, detached=True)
    run.claim_driver("detached-submit" if detach else "follow")
    try:
        with backend:
            driver = Driver(
                run, config, jobs, backend, observer=observer, poll_interval_s=poll_interval_s
            )
            driver.start()
            if detach:
                return LaunchOutcome(run=run, jobs=jobs, detached=True, views=driver.views())
            views = driver.follow()
    finally:
        run.release_driver()
    return LaunchOutcome(run=run, jobs=jobs, views=views, runtime_s=driver.runtime_s)


def spawn_supervisor(run: RunDir, max_parallel: int | None) -> int:
    """Start a background process that drives the run (local backend, --detach)."""
    import subprocess

    log = open(run.path / "driver.log", "ab")
    command = [sys.executable, "-m", "affvx.orchestrator.supervise", str(run.path.resolve())]
    if max_parallel:
        command.append(str(max_parallel))
    process = subprocess.Popen(
        command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    return process.pid


def supervise(run_path: Path, max_parallel: int | None = None) -> int:
    """Drive an existing run to the end without a terminal (what --detach starts)."""
    run = RunDir.open(run_path)
    config = run.config
    run.claim_driver("detached")
    try:
        with make_backend(config, max_parallel) as backend:
            driver = Driver(run, config, run.jobs, backend)
            driver.start()
            views = driver.follow()
    except ClusterError as error:
        sys.stderr.write(f"affvx supervisor: {error}\n")
        return 1
    finally:
        run.release_driver()
    return 0 if all(v.state is JobState.COMPLETE for v in views.values()) else 1


def request_cancel(run: RunDir) -> None:
    """Tell a live driver to look for cancelled jobs."""
    path = run.path / CANCEL_REQUEST
    path.write_text(f"{now_utc()} {socket.gethostname()} {os.getpid()}\n")
