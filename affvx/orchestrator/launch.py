"""`affvx launch`: plan the grid, create the run, submit its jobs to a pool, follow them.

The driver keeps no state of its own: everything it needs is in the run directory, so a
driver that dies can be replaced by `affvx launch --resume` at any moment. On every launch the
pool (affvx.orchestrator.pool) works out each job's state from the job's files and one batched
scheduler query; jobs still alive in the scheduler are followed, complete jobs are never
touched, and every other job is submitted (again).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affvx.cluster.errors import ClusterError
from affvx.orchestrator.backends import job_requests, make_backend, with_backend_options
from affvx.orchestrator.config import ExperimentConfig, resolve_config
from affvx.orchestrator.demo import ensure_demo_store
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.folds import FoldTable, make_folds, store_trials
from affvx.orchestrator.ledger import JobFiles, JobState, JobView, view_job
from affvx.orchestrator.plan import PlannedJob, plan_jobs
from affvx.orchestrator.pool import JobPool
from affvx.orchestrator.rundir import RunDir, new_run_path, newest_run
from affvx.orchestrator.space import TuneConfig, resolved_tune
from affvx.storage.reader import FeatureStore

VIEWS_INTERVAL_S = 2.0


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


@dataclass(frozen=True)
class Plan:
    """A launch's plan: the run directory (`existing`: already created), the resolved
    configuration, the fold table and every job of the grid. Nothing is written yet."""

    run: RunDir
    config: ExperimentConfig
    folds: FoldTable
    jobs: list[PlannedJob]
    existing: bool


# -- preparing a run ---------------------------------------------------------------------------


def prepare(
    *,
    flags: dict[str, Any],
    config_file: Path | None,
    run_path: Path | None,
    resume: bool,
    note: Callable[[str], None],
    backend_flags: Mapping[str, Any] | None = None,
    backend_option_texts: Sequence[str] = (),
    tuning: bool = False,
) -> Plan:
    """Resolve the configuration, the run directory and the plan (nothing is written).

    `backend_flags` are the launch flags a backend declares (`{"--partition": "gpu"}`) and
    `backend_option_texts` the `--backend-option NAME=VALUE` texts, both for the chosen backend.
    With `tuning` (affvx tune) the configuration gets its [tune] settings, checked, and the
    plan no jobs: a tuning run's jobs are its candidates' (affvx.orchestrator.tune).
    """
    if run_path is None and resume:
        run_path = newest_run()
    run = RunDir(run_path or new_run_path())
    if resume and not run.exists():
        raise ConfigError(
            f"{run.path}: no run to resume (no experiment.toml); launch without --resume"
        )
    existing = run.exists()
    if existing:
        _check_same_command(run, tuning)
        config = resolve_config(
            flags=flags, config_file=config_file, saved=run.saved_config_data()
        )
        config = _with_tuning(config, tuning)
        given = config.store if config.store != run.saved_config.store else None
        config = run.with_store(config, run.locate_store(given))
        run.check_same_experiment(config)
    else:
        if run.path.exists() and any(run.path.iterdir()):
            raise ConfigError(f"{run.path}: exists and is not an affvx run; choose another --run")
        if flags.get("store") is None and not (config_file and "store" in _file_keys(config_file)):
            flags = {**flags, "store": str(ensure_demo_store(note))}
        if flags.get("store") is not None:
            flags = {**flags, "store": str(Path(flags["store"]).resolve())}
        config = _with_tuning(resolve_config(flags=flags, config_file=config_file), tuning)
    config = with_backend_options(config, backend_flags, backend_option_texts)
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
    jobs = [] if tuning else plan_jobs(config, folds, store.fingerprint)
    if existing:
        saved = {job.job_id: job.config_hash for job in run.jobs}
        changed = [job.job_id for job in jobs if saved.get(job.job_id) != job.config_hash]
        if changed:
            raise ConfigError(
                f"{run.path}: job {changed[0]} no longer matches the run (the store's content or the "
                "experiment changed); start a new run with --run NEW_DIR"
            )
    return Plan(run=run, config=config, folds=folds, jobs=jobs, existing=existing)


def _with_tuning(config: ExperimentConfig, tuning: bool) -> ExperimentConfig:
    """A tuning run's configuration has its [tune] settings resolved; a launch's none."""
    if not tuning:
        return dataclasses.replace(config, tune=None)
    return dataclasses.replace(
        config, tune=resolved_tune(config.tune or TuneConfig(), config.model.name)
    )


def _check_same_command(run: RunDir, tuning: bool) -> None:
    was_tuning = "tune" in run.saved_config_data()
    if was_tuning and not tuning:
        raise ConfigError(
            f"{run.path} is a tuning run: continue it with `affvx tune --resume --run {run.path}`"
        )
    if tuning and not was_tuning:
        raise ConfigError(
            f"{run.path} is a run of `affvx launch`, not a tuning run: continue it with "
            "`affvx launch --resume`, or tune in a new run (--run NEW_DIR)"
        )


def _file_keys(path: Path) -> set[str]:
    from affvx.orchestrator.config import read_config_file

    return set(read_config_file(path))


# -- launch ------------------------------------------------------------------------------------


def launch(
    *,
    flags: dict[str, Any],
    config_file: Path | None = None,
    run_path: Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    detach: bool = False,
    backend_flags: Mapping[str, Any] | None = None,
    backend_option_texts: Sequence[str] = (),
    observer: LaunchObserver | None = None,
    note: Callable[[str], None] = lambda message: None,
    poll_interval_s: float | None = None,
) -> LaunchOutcome:
    """Plan, then submit and (unless detached) follow every unfinished job of the run."""
    observer = observer or LaunchObserver()
    plan = prepare(
        flags=flags,
        config_file=config_file,
        run_path=run_path,
        resume=resume,
        note=note,
        backend_flags=backend_flags,
        backend_option_texts=backend_option_texts,
    )
    run, config = plan.run, plan.config
    backend = make_backend(config)
    requests = job_requests(run, config, plan.jobs, backend)
    backend.check_fits(requests)  # before anything is written
    for line in backend.notes():
        note(line)
    if dry_run:
        return LaunchOutcome(
            run=run,
            jobs=plan.jobs,
            dry_run_scripts=backend.render(requests),
            dry_run_command=shlex.join(requests[0].command) if requests else "",
        )
    if plan.existing:
        run.record_store(config.store)  # where it was found now, for the workers too
    else:
        run.create(config, plan.folds, plan.jobs)
    observer.on_plan(run, plan.jobs, plan.existing)
    if detach and backend.capabilities.needs_local_supervisor:
        backend.close()
        spawn_supervisor(run, config.backend.options_for())
        return LaunchOutcome(run=run, jobs=plan.jobs, detached=True)
    run.claim_driver("detached-submit" if detach else "follow")
    try:
        with backend:
            pool = JobPool(
                backend, job_requests, on_event=observer.on_event, poll_interval_s=poll_interval_s
            )
            pool.submit(run, config, plan.jobs)
            if detach:
                return LaunchOutcome(
                    run=run, jobs=plan.jobs, detached=True, views=job_views(run, plan.jobs)
                )
            views = follow(pool, run, plan.jobs, observer)
    finally:
        run.release_driver()
    runtime_s = {job_id: seconds for (_, job_id), seconds in pool.runtime_s.items()}
    return LaunchOutcome(run=run, jobs=plan.jobs, views=views, runtime_s=runtime_s)


def follow(
    pool: JobPool, run: RunDir, jobs: list[PlannedJob], observer: LaunchObserver
) -> dict[str, JobView]:
    """Step the pool until it is idle, showing the jobs' views every few seconds."""
    observer.on_views(job_views(run, jobs))
    shown = time.monotonic()

    def show() -> None:
        nonlocal shown
        if time.monotonic() - shown > VIEWS_INTERVAL_S:
            shown = time.monotonic()
            observer.on_views(job_views(run, jobs))

    pool.run_until_idle(on_step=show)
    views = job_views(run, jobs)
    observer.on_views(views)
    return views


def job_views(run: RunDir, jobs: list[PlannedJob]) -> dict[str, JobView]:
    return {job.job_id: view_job(job.job_id, JobFiles(run.job_dir(job.job_id))) for job in jobs}


def spawn_supervisor(run: RunDir, backend_options: Mapping[str, Any]) -> int:
    """Start a background process that drives the run (a backend whose jobs need a local
    supervisor, --detach), with this launch's backend options."""
    import subprocess

    log = open(run.path / "driver.log", "ab")
    command = [
        sys.executable,
        "-m",
        "affvx.orchestrator.supervise",
        str(run.path.resolve()),
        json.dumps(dict(backend_options)),
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    return process.pid


def supervise(run_path: Path, backend_options: Mapping[str, Any] | None = None) -> int:
    """Drive an existing run to the end without a terminal (what --detach starts)."""
    run = RunDir.open(run_path)
    config = run.config
    if backend_options:
        name = config.backend.name
        options = {**config.backend.options, name: dict(backend_options)}
        config = dataclasses.replace(
            config, backend=dataclasses.replace(config.backend, options=options)
        )
    run.claim_driver("detached")
    try:
        with make_backend(config) as backend:
            pool = JobPool(backend, job_requests)
            pool.submit(run, config, run.jobs)
            pool.run_until_idle()
    except ClusterError as error:
        sys.stderr.write(f"affvx supervisor: {error}\n")
        return 1
    finally:
        run.release_driver()
    views = job_views(run, run.jobs)
    return 0 if all(v.state is JobState.COMPLETE for v in views.values()) else 1
