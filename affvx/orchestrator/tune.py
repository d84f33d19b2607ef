"""`affvx tune`: every (emotion, modality set) cell of the grid is an Optuna study; a trial
(a *candidate*: "trial" means a video in affvx) is one set of hyperparameters evaluated by all
k folds, each fold a job of the run like any job of `affvx launch` (own id
`...-fold3-seed0-cand7`, checkpoint, attempts), on the same job pool and backend.

One driver owns every study (ask / tell: the storage has one writer). It keeps `parallel`
candidates in flight per study, reports each finished fold's CCC to the pruner (step = fold
index for the Wilcoxon pruner; running mean at step = folds done for the median pruner), and
when the pruner says stop it tells the trial PRUNED and cancels the candidate's unfinished
fold jobs on the backend. A fold job that fails past its retries fails its trial.

The driver keeps nothing that matters in memory. Before submitting a candidate's jobs it
records them in RUN/tuning/candidates/ (affvx.orchestrator.rundir.CandidateRecord); a
driver killed at any moment is replaced by `affvx tune --resume`, which rebuilds its state
from the storage and the run directory (`_resume_study`): a trial still RUNNING in the
storage continues with its recorded jobs (complete folds are not trained again, the others
resume from their checkpoints) and is told once all its folds are done; a trial asked but not
yet recorded is recorded then; a finished trial's leftover jobs are cancelled. A trial is told
only when the storage says it is still RUNNING, so no trial is told twice.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affvx.cluster.base import Backend
from affvx.orchestrator.backends import job_requests, make_backend
from affvx.orchestrator.config import ExperimentConfig
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.launch import Plan, prepare
from affvx.orchestrator.ledger import JobFiles, JobState, view_job
from affvx.orchestrator.plan import PlannedJob, plan_candidate_jobs
from affvx.orchestrator.pool import JobEnded, JobPool, Outcome
from affvx.orchestrator.rundir import CandidateRecord, RunDir
from affvx.orchestrator.space import TuneConfig, suggest
from affvx.storage.format import read_fingerprint

JOURNAL_FILE = "journal.log"
ABANDONED = "affvx_abandoned"  # user attr of a trial failed because it was never recorded
FAIL_REASON = "affvx_reason"


class TuneObserver:
    """What the tuning driver reports while it works; the CLI renders it."""

    def on_start(self, run: RunDir, studies: list[str], resumed: bool) -> None: ...

    def on_trial(self, study: str, number: int, state: str, detail: str) -> None: ...

    def on_event(self, job_id: str, message: str) -> None: ...


@dataclass
class StudyBest:
    """One study's outcome: its best complete trial (None if there is none) and counts."""

    study: str
    emotion: str
    modalities: str
    counts: dict[str, int]
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuneOutcome:
    """How `affvx tune` ended: the run, each study's best trial, or the dry-run plan."""

    run: RunDir
    studies: list[StudyBest] = field(default_factory=list)
    detached: bool = False
    dry_run: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        if self.detached or self.dry_run is not None:
            return 0
        return 0 if all(s.best_number is not None for s in self.studies) else 1


# -- storage -----------------------------------------------------------------------------------


def quiet_optuna() -> Any:
    """optuna, imported here (status and collect of launch runs never need it), without its
    INFO lines and experimental-feature warnings (affvx reports trials itself)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def study_name(tune: TuneConfig, emotion: str, modalities: tuple[str, ...]) -> str:
    return f"{tune.study_name}-{emotion}-{'+'.join(modalities)}"


def storage_location(run: RunDir, tune: TuneConfig) -> str:
    """The storage as a user would name it: the database URL or the journal file's path."""
    return tune.storage or str(run.tuning_dir / JOURNAL_FILE)


def open_storage(run: RunDir, tune: TuneConfig) -> Any:
    """The run's Optuna storage: the database `tune.storage` names, or the journal file
    (RUN/tuning/journal.log by default; a `storage` without `://` is a journal file path).
    ConfigError, naming the fix, when it cannot be opened."""
    optuna = quiet_optuna()

    location = storage_location(run, tune)
    try:
        if "://" in location:
            return optuna.storages.RDBStorage(location)
        path = Path(location)
        if tune.storage is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))
        )
    except Exception as error:  # sqlalchemy, a missing driver, a bad path: all one answer
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ConfigError(
            f"--storage {location}: cannot open it ({reason}); give a database URL that "
            "works, e.g. sqlite:///tune.db, or leave --storage out for a journal file in "
            "the run directory"
        ) from None


def check_storage_url(url: str | None) -> None:
    """Open a --storage URL once before anything is written (a new run)."""
    if url is None:
        return
    if "://" not in url and not Path(url).parent.is_dir():
        raise ConfigError(
            f"--storage {url}: no directory {Path(url).parent} for a journal file; give a "
            "database URL, e.g. sqlite:///tune.db, or an existing directory"
        )
    if "://" in url:
        open_storage(RunDir("."), TuneConfig(storage=url))


def make_sampler(tune: TuneConfig, seed: int) -> Any:
    import optuna

    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(tune: TuneConfig) -> Any:
    import optuna

    if tune.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=tune.wilcoxon_p, n_startup_steps=2)
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def wilcoxon_cannot_prune(tune: TuneConfig, n_folds: int) -> str:
    """Why the Wilcoxon pruner would never stop a trial before its last fold ("" if it can).

    Its one-sided signed-rank test on m folds cannot give a p-value below 1/2**m, so a trial
    is pruned after the first m folds with 1/2**m < wilcoxon_p at the earliest."""
    if tune.pruner != "wilcoxon":
        return ""
    earliest = next((m for m in range(1, n_folds + 1) if 0.5**m < tune.wilcoxon_p), None)
    if earliest is not None and earliest < n_folds:
        return ""
    return (
        f"the Wilcoxon pruner at wilcoxon_p = {tune.wilcoxon_p:g} cannot stop a trial before "
        f"its last fold with {n_folds} folds (its smallest p-value is 1/2^{n_folds} = "
        f"{0.5**n_folds:g}); raise [tune] wilcoxon_p or use --pruner median"
    )


def load_study(storage: Any, tune: TuneConfig, name: str) -> Any:
    """The study `name` (created if new), with the run's sampler and pruner. The sampler's
    seed is offset by the trials the study has, so a resumed study does not ask again what
    it asked before the driver died."""
    import optuna

    try:
        asked = storage.get_n_trials(storage.get_study_id_from_name(name))
    except KeyError:
        asked = 0
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(tune, tune.sampler_seed + asked),
        pruner=make_pruner(tune),
        load_if_exists=True,
    )


# -- one study in flight -----------------------------------------------------------------------


@dataclass
class Candidate:
    """A trial in flight: its recorded jobs, the Optuna trial, the folds' scores so far."""

    record: CandidateRecord
    trial: Any  # optuna.Trial
    seed_scores: dict[int, list[float]] = field(default_factory=dict)
    unfinished: set[str] = field(default_factory=set)

    def fold_scores(self, seeds: int) -> dict[int, float]:
        return {
            fold: sum(values) / len(values)
            for fold, values in self.seed_scores.items()
            if len(values) == seeds
        }


@dataclass
class CellStudy:
    """One (emotion, modality set) cell's study and its candidates in flight."""

    name: str
    emotion: str
    modalities: tuple[str, ...]
    study: Any  # optuna.Study
    finished: int = 0
    live: dict[int, Candidate] = field(default_factory=dict)


class TuneDriver:
    """Runs every study of a tuning run to `tune.trials` finished trials on one job pool
    (see the module docstring for the protocol and how it survives being killed)."""

    def __init__(
        self,
        run: RunDir,
        config: ExperimentConfig,
        pool: JobPool,
        storage: Any,
        observer: TuneObserver,
    ) -> None:
        assert config.tune is not None
        self.run, self.config, self.tune = run, config, config.tune
        self.pool, self.storage, self.observer = pool, storage, observer
        self.folds = run.folds
        self.fingerprint = read_fingerprint(Path(config.store)) or ""
        self.cells: list[CellStudy] = []
        self.owner: dict[str, tuple[CellStudy, int]] = {}
        self.stopping = False  # a user cancelled jobs: finish, ask nothing new

    # -- the loop -------------------------------------------------------------------------------

    def run_to_end(self) -> None:
        for emotion in self.config.emotions:
            for modalities in self.config.modalities:
                name = study_name(self.tune, emotion, modalities)
                cell = CellStudy(
                    name, emotion, modalities, load_study(self.storage, self.tune, name)
                )
                self.cells.append(cell)
                self._resume_study(cell)
        while True:
            for cell in self.cells:
                self._fill(cell)
            if not self.pool.busy:
                break
            for ended in self.pool.step():
                self._on_job_ended(ended)
        for cell in self.cells:  # a candidate whose jobs the pool no longer has (cannot happen)
            for candidate in list(cell.live.values()):
                self._finish(cell, candidate, "FAIL", reason="its jobs ended without a result")

    def _fill(self, cell: CellStudy) -> None:
        while (
            not self.stopping
            and cell.finished + len(cell.live) < self.tune.trials
            and len(cell.live) < self.tune.parallel
        ):
            trial = cell.study.ask()
            params = suggest(trial, self.tune.space)
            self._start(cell, trial, self._record(cell, trial.number, params))

    def _record(self, cell: CellStudy, number: int, params: dict[str, Any]) -> CandidateRecord:
        jobs = plan_candidate_jobs(
            self.config,
            self.folds,
            self.fingerprint,
            (cell.emotion, cell.modalities),
            number,
            params,
        )
        random.Random(f"{self.tune.sampler_seed}-{number}").shuffle(jobs)  # fold order per trial
        record = CandidateRecord(cell.name, cell.emotion, cell.modalities, number, params, jobs)
        self.run.write_candidate(record)  # before any job is submitted
        return self.run.candidate(cell.emotion, cell.modalities, number) or record

    def _start(self, cell: CellStudy, trial: Any, record: CandidateRecord) -> None:
        candidate = Candidate(record, trial, unfinished={job.job_id for job in record.jobs})
        cell.live[record.candidate] = candidate
        for job in record.jobs:
            self.owner[job.job_id] = (cell, record.candidate)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in record.params.items())
        self.observer.on_trial(cell.name, record.candidate, "RUNNING", shown)
        self.pool.submit(self.run, self.config, record.jobs)

    # -- fold jobs ending -------------------------------------------------------------------------

    def _on_job_ended(self, ended: JobEnded) -> None:
        owner = self.owner.get(ended.job.job_id)
        if owner is None:
            return
        cell, number = owner
        candidate = cell.live.get(number)
        if candidate is None:  # a pruned or failed candidate's job, cancelled
            return
        candidate.unfinished.discard(ended.job.job_id)
        if ended.outcome is Outcome.COMPLETE:
            self._on_fold_done(cell, candidate, ended)
        elif ended.outcome is Outcome.FAILED:
            self._finish(cell, candidate, "FAIL", reason=f"{ended.job.job_id}: {ended.reason}")
        else:  # cancelled by the user (`affvx cancel`): stop tuning
            self.stopping = True
            self._finish(cell, candidate, "FAIL", reason=f"{ended.job.job_id} was cancelled")

    def _on_fold_done(self, cell: CellStudy, candidate: Candidate, ended: JobEnded) -> None:
        score = float((ended.result or {})["val_ccc_mean"])
        candidate.seed_scores.setdefault(ended.job.fold, []).append(score)
        seeds = len(self.config.seeds)
        scores = candidate.fold_scores(seeds)
        if len(candidate.seed_scores[ended.job.fold]) == seeds:
            self._report(candidate, ended.job.fold, scores)
        if len(scores) == len(self.folds.folds):
            self._finish(cell, candidate, "COMPLETE", value=sum(scores.values()) / len(scores))
        elif candidate.trial.should_prune():
            self._finish(cell, candidate, "PRUNED")

    def _report(self, candidate: Candidate, fold: int, scores: dict[int, float]) -> None:
        """Report a finished fold once: its CCC at step = fold (Wilcoxon), or the running
        mean at step = folds done (median)."""
        if self.tune.pruner == "median":
            step, value = len(scores) - 1, sum(scores.values()) / len(scores)
        else:
            step, value = fold, scores[fold]
        reported = self.storage.get_trial(candidate.trial._trial_id).intermediate_values
        if step not in reported:
            candidate.trial.report(value, step)

    def _finish(
        self,
        cell: CellStudy,
        candidate: Candidate,
        state: str,
        *,
        value: float | None = None,
        reason: str = "",
    ) -> None:
        """Tell the study (unless the storage has it finished already), then cancel the
        candidate's unfinished jobs."""
        import optuna

        number = candidate.record.candidate
        del cell.live[number]
        cell.finished += 1
        trial_id = candidate.trial._trial_id
        if self.storage.get_trial(trial_id).state is optuna.trial.TrialState.RUNNING:
            if reason:
                self.storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
            cell.study.tell(
                candidate.trial,
                value if state == "COMPLETE" else None,
                state=getattr(optuna.trial.TrialState, state),
            )
        if candidate.unfinished:
            self.pool.cancel(self.run, sorted(candidate.unfinished))
        detail = f"mean CCC {value:.4f}" if value is not None else reason
        if state == "PRUNED":
            detail = f"after {len(candidate.seed_scores)} folds; cancelled {len(candidate.unfinished)} jobs"
        self.observer.on_trial(cell.name, number, state, detail)

    # -- resuming -------------------------------------------------------------------------------

    def _resume_study(self, cell: CellStudy) -> None:
        """Rebuild the cell's state from the storage and the run directory."""
        import optuna

        TrialState = optuna.trial.TrialState
        for frozen in cell.study.get_trials(deepcopy=False):
            if frozen.state is TrialState.WAITING:
                continue  # enqueued: the next ask takes it
            record = self.run.candidate(cell.emotion, cell.modalities, frozen.number)
            if frozen.state is not TrialState.RUNNING:
                cell.finished += not frozen.user_attrs.get(ABANDONED)
                if record is not None:
                    self._stop_leftovers(record)
                continue
            if record is None:
                if set(frozen.params) != set(self.tune.space):  # killed mid-suggest
                    self.storage.set_trial_user_attr(frozen._trial_id, ABANDONED, True)
                    cell.study.tell(frozen.number, state=TrialState.FAIL)
                    continue
                record = self._record(cell, frozen.number, dict(frozen.params))
            trial = optuna.trial.Trial(cell.study, frozen._trial_id)
            self._start(cell, trial, record)

    def _stop_leftovers(self, record: CandidateRecord) -> None:
        """Cancel the unfinished jobs of a finished candidate (the driver died between its
        tell and its cancel): marked in their files, stopped on the backend."""
        views = [view_job(j.job_id, JobFiles(self.run.job_dir(j.job_id))) for j in record.jobs]
        left = [v for v in views if not v.state.is_finished() and v.state is not JobState.PENDING]
        for view in left:
            JobFiles(self.run.job_dir(view.job_id)).mark_cancelled()
        alive = [v.scheduler_id for v in left if v.scheduler_id]
        if alive:
            self.pool.backend.cancel(alive)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# -- the command -------------------------------------------------------------------------------


def tune(
    *,
    flags: dict[str, Any],
    config_file: Path | None = None,
    run_path: Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    detach: bool = False,
    backend_flags: Mapping[str, Any] | None = None,
    backend_option_texts: Sequence[str] = (),
    observer: TuneObserver | None = None,
    note: Callable[[str], None] = lambda message: None,
    poll_interval_s: float | None = None,
) -> TuneOutcome:
    """Plan the studies, then drive them to the end (or start a driver in the background)."""
    observer = observer or TuneObserver()
    plan = prepare(
        flags=flags,
        config_file=config_file,
        run_path=run_path,
        resume=resume,
        note=note,
        backend_flags=backend_flags,
        backend_option_texts=backend_option_texts,
        tuning=True,
    )
    run, config = plan.run, plan.config
    assert config.tune is not None
    backend = make_backend(config)
    backend.check_fits(job_requests(run, config, example_trial_jobs(plan), backend))
    for line in backend.notes():
        note(line)
    pruner_note = wilcoxon_cannot_prune(config.tune, len(plan.folds.folds))
    if dry_run:
        backend.close()
        if pruner_note:
            note(pruner_note)
        return TuneOutcome(run=run, dry_run=dry_run_plan(plan, backend))
    if plan.existing:
        run.record_store(config.store)
    else:
        check_storage_url(config.tune.storage)
        run.create(config, plan.folds, plan.jobs)
    if pruner_note:  # once the input is known to be good: mistakes stay one line
        note(pruner_note)
    if detach:
        backend.close()
        spawn_tune_driver(run, config.backend.options_for())
        return TuneOutcome(run=run, detached=True)
    return _drive(run, config, backend, observer, plan.existing, poll_interval_s)


def _drive(
    run: RunDir,
    config: ExperimentConfig,
    backend: Backend,
    observer: TuneObserver,
    resumed: bool,
    poll_interval_s: float | None = None,
) -> TuneOutcome:
    assert config.tune is not None
    storage = open_storage(run, config.tune)
    run.claim_driver("tune")
    try:
        with backend:
            pool = JobPool(
                backend, job_requests, on_event=observer.on_event, poll_interval_s=poll_interval_s
            )
            driver = TuneDriver(run, config, pool, storage, observer)
            observer.on_start(
                run,
                [
                    study_name(config.tune, e, m)
                    for e in config.emotions
                    for m in config.modalities
                ],
                resumed,
            )
            driver.run_to_end()
    finally:
        run.release_driver()
    return TuneOutcome(run=run, studies=study_bests(run, config, storage))


def study_bests(run: RunDir, config: ExperimentConfig, storage: Any) -> list[StudyBest]:
    """Each study's best complete trial and its trial counts by state."""
    import optuna

    assert config.tune is not None
    bests = []
    for emotion in config.emotions:
        for modalities in config.modalities:
            name = study_name(config.tune, emotion, modalities)
            study = optuna.load_study(study_name=name, storage=storage)
            counts: dict[str, int] = {}
            for trial in study.get_trials(deepcopy=False):
                counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
            best = StudyBest(name, emotion, "+".join(modalities), counts)
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if complete:
                top = study.best_trial
                best.best_number, best.best_value, best.best_params = (
                    top.number,
                    top.value,
                    dict(top.params),
                )
            bests.append(best)
    return bests


def example_trial_jobs(plan: Plan) -> list[PlannedJob]:
    """The fold jobs of a first trial of the first cell (their parameters are the
    sampler's, once it runs): what every trial's jobs ask of the backend."""
    config = plan.config
    first_cell = (config.emotions[0], config.modalities[0])
    return plan_candidate_jobs(config, plan.folds, "", first_cell, 0, {})


def dry_run_plan(plan: Plan, backend: Backend) -> dict[str, Any]:
    """What `affvx tune --dry-run` prints: the studies, the space, and what one candidate's
    jobs would submit (the parameters are the sampler's, once it runs)."""
    config, tune_config = plan.config, plan.config.tune
    assert tune_config is not None
    n_folds = len(plan.folds.folds)
    studies = [
        {
            "study": study_name(tune_config, emotion, modalities),
            "emotion": emotion,
            "modalities": "+".join(modalities),
            "trials": tune_config.trials,
            "fold_jobs": tune_config.trials * n_folds * len(config.seeds),
        }
        for emotion in config.emotions
        for modalities in config.modalities
    ]
    example = example_trial_jobs(plan)
    requests = job_requests(plan.run, config, example, backend)
    return {
        "studies": studies,
        "folds": n_folds,
        "space": tune_config.space,
        "pruner": tune_config.pruner,
        "sampler": f"{tune_config.sampler} (seed {tune_config.sampler_seed})",
        "parallel": tune_config.parallel,
        "storage": storage_location(plan.run, tune_config),
        "scripts": backend.render(requests),
        "example_job": example[0].job_id if example else "",
    }


# -- detached driver ---------------------------------------------------------------------------


def spawn_tune_driver(run: RunDir, backend_options: Mapping[str, Any]) -> int:
    """Start the tuning driver of an existing run in the background (--detach)."""
    import subprocess

    log = open(run.path / "driver.log", "ab")
    command = [
        sys.executable,
        "-m",
        "affvx.orchestrator.tune",
        str(run.path.resolve()),
        json.dumps(dict(backend_options)),
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    return process.pid


def drive_existing(run_path: Path, backend_options: Mapping[str, Any] | None = None) -> int:
    """Drive a tuning run without a terminal (what --detach starts); the exit status."""
    run = RunDir.open(run_path)
    config = run.config
    if backend_options:
        name = config.backend.name
        options = {**config.backend.options, name: dict(backend_options)}
        config = dataclasses.replace(
            config, backend=dataclasses.replace(config.backend, options=options)
        )
    outcome = _drive(run, config, make_backend(config), TuneObserver(), resumed=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(
        drive_existing(Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
    )
