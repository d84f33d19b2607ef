"""`affvx tune` end to end on the local backend, with real jobs: a study to the end and its
report, a pruned trial's fold jobs cancelled, and the driver SIGKILLed then resumed.

Trials are small (tcn, 2 epochs, a 24-trial store, valence and the visual modality), so a
trial of 3 folds is a few seconds of real training per fold.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest

from affvx.orchestrator.ledger import JobFiles, JobState, view_job
from affvx.orchestrator.rundir import RunDir
from tests.support.runs import affvx, attempts, job_dirs, process_state, wait_until

pytestmark = pytest.mark.slow

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def tune_args(store: Path, run: Path, *extra: object) -> list[str]:
    return [
        "tune",
        "--store",
        str(store),
        "--run",
        str(run),
        "--emotions",
        "valence",
        "--modalities",
        "visual",
        "--model",
        "tcn",
        "--epochs",
        "2",
        "--max-parallel",
        "2",
        *map(str, extra),
    ]


def journal_study(run: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "tuning" / "journal.log"))
    )
    return optuna.load_study(study_name="affvx-valence-visual", storage=storage)


def trial_states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def tells_per_trial(run: Path) -> dict[int, int]:
    """How many times the journal sets each trial to a finished state (a tell)."""
    from optuna.storages.journal._storage import JournalOperation

    told: dict[int, int] = {}
    for line in (run / "tuning" / "journal.log").read_text().splitlines():
        op = json.loads(line)
        finished = {optuna.trial.TrialState[s].value for s in FINISHED}
        if op["op_code"] == JournalOperation.SET_TRIAL_STATE_VALUES and op["state"] in finished:
            told[op["trial_id"]] = told.get(op["trial_id"], 0) + 1
    return told


def test_a_study_runs_to_the_end_and_the_report_names_the_storages_best_trial(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli(*tune_args(small_store, run, "--trials", 4, "--folds", 2, "--pruner", "none"))
    assert result.exit_code == 0, result.stderr
    study = journal_study(run)
    assert trial_states(study) == ["COMPLETE"] * 4
    plan = RunDir.open(run)
    assert len(plan.jobs) == 8 and {j.candidate for j in plan.jobs} == {0, 1, 2, 3}
    for job in plan.jobs:  # each fold job ran once, with its trial's parameters
        assert [a["exit_reason"] for a in attempts(plan.job_dir(job.job_id))] == ["completed"]
        assert dict(job.params) == study.trials[job.candidate].params
    # the trial's value is the mean of its folds' CCCs, from the job files
    best = study.best_trial
    fold_ccc = [
        JobFiles(plan.job_dir(j.job_id)).result()["val_ccc_mean"]
        for j in plan.jobs
        if j.candidate == best.number
    ]
    assert best.value == pytest.approx(sum(fold_ccc) / 2)

    assert cli("collect", run).exit_code == 0
    report = run / "report"
    rows = (report / "trials.csv").read_text().splitlines()
    assert len(rows) == 5
    best_params = (report / "valence-visual" / "best_params.toml").read_text()
    assert f"trial {best.number}, mean CCC {best.value:.6f}" in best_params
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
        assert (report / "valence-visual" / f"{name}.png").stat().st_size > 1000
    summary = (report / "summary.csv").read_text().splitlines()[1].split(",")
    assert float(summary[5]) == pytest.approx(best.value)  # ccc_mean of the best trial's folds

    status = cli("status", run, "--json")
    trials = json.loads(status.stdout)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    assert all(t["folds_done"] == 2 for t in trials)
    assert trials[best.number]["mean_ccc"] == pytest.approx(best.value)

    # best_params.toml runs as `affvx launch --config` and gives the best trial's numbers
    again = tmp_path / "again"
    config = report / "valence-visual" / "best_params.toml"
    assert cli("launch", "--config", config, "--run", again).exit_code == 0
    relaunched = [JobFiles(d).result()["val_ccc_mean"] for d in job_dirs(again)]
    assert sorted(relaunched) == pytest.approx(sorted(fold_ccc))


def test_a_pruned_trial_has_its_unfinished_fold_jobs_cancelled(
    small_store: Path, tmp_path: Path, cli
) -> None:
    # p = 1: any trial worse on average than the best on its first two folds is pruned; with
    # learning rates from 1e-6 on, some of 4 trials are
    config = tmp_path / "tune.toml"
    config.write_text(
        '[tune]\nwilcoxon_p = 1.0\nsampler = "random"\n'
        "[tune.space]\nlr = {low = 1e-6, high = 1e-1, log = true}\n"
        "[training]\npatience = 40\n"
    )
    run = tmp_path / "run"
    args = tune_args(small_store, run, "--trials", 4, "--folds", 4, "--parallel", 1)
    # jobs of ~4 s (40 epochs of ~0.1 s, no early stop): a trial's later folds still run
    # when its first two are judged, a driver's step (at most a second) later
    result = cli(*args, "--epochs", 40, "--config", config)
    assert result.exit_code == 0, result.stderr
    study = journal_study(run)
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED"]
    assert pruned, trial_states(study)
    plan = RunDir.open(run)
    cancelled = 0
    for trial in pruned:
        jobs = [j for j in plan.jobs if j.candidate == trial.number]
        views = [view_job(j.job_id, JobFiles(plan.job_dir(j.job_id))) for j in jobs]
        states = [v.state for v in views]
        # a fold that finished as the trial was judged keeps its result: COMPLETE, not lost
        assert set(states) <= {JobState.COMPLETE, JobState.CANCELLED}, states
        assert states.count(JobState.COMPLETE) >= len(trial.intermediate_values)
        assert len(trial.intermediate_values) < 4
        cancelled += states.count(JobState.CANCELLED)
        for view in views:
            if view.pid:  # a started job: its process is gone, its attempt recorded
                assert process_state(view.pid) in ("", "Z")
            if view.state is JobState.CANCELLED and view.attempts:
                reasons = [a["exit_reason"] for a in attempts(plan.job_dir(view.job_id))]
                assert reasons and reasons[-1] == "cancelled", reasons
    assert cancelled, "no pruned trial had a fold job left to cancel"


def test_a_killed_driver_resumes_with_no_fold_trained_twice_and_no_trial_told_twice(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    driver = affvx(*tune_args(small_store, run, "--trials", 4, "--folds", 3, "--parallel", 2))

    def results() -> list[Path]:
        return [d for d in job_dirs(run) if (d / "result.json").exists()]

    wait_until(lambda: len(results()) >= 2, timeout_s=180, what="two finished folds")
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    done_before = {d.name: (d / "result.json").read_bytes() for d in results()}
    # its local jobs get SIGTERM with it (they checkpoint and exit): wait until none runs
    wait_until(
        lambda: all(
            process_state(int((JobFiles(d).state() or {}).get("pid", 0)) or 1 << 22) in ("", "Z")
            for d in job_dirs(run)
        ),
        what="the killed driver's jobs to exit",
    )
    note = json.loads(cli("status", run, "--json").stdout)["note"]
    assert f"`affvx tune --resume --run {run}` continues it" in note
    result = cli("tune", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr

    study = journal_study(run)
    states = trial_states(study)
    assert len(states) == 4 and all(s in FINISHED for s in states), states
    assert all(n == 1 for n in tells_per_trial(run).values())
    assert len(tells_per_trial(run)) == 4
    for job_dir in job_dirs(run):
        reasons = [a["exit_reason"] for a in attempts(job_dir)]
        assert reasons.count("completed") <= 1, (job_dir.name, reasons)
        if job_dir.name in done_before:  # finished before the kill: never trained again
            assert reasons == ["completed"]
            assert (job_dir / "result.json").read_bytes() == done_before[job_dir.name]
    # every fold of every complete trial has its one result
    plan = RunDir.open(run)
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name == "COMPLETE":
            jobs = [j for j in plan.jobs if j.candidate == trial.number]
            assert len(jobs) == 3
            assert all(JobFiles(plan.job_dir(j.job_id)).result() for j in jobs)


@pytest.mark.parametrize(
    ("p", "folds", "can_prune"),
    [(0.1, 3, False), (0.1, 4, False), (0.1, 5, True), (0.3, 2, False), (0.3, 3, True)],
)
def test_a_wilcoxon_threshold_that_can_never_prune_is_named(
    p: float, folds: int, can_prune: bool
) -> None:
    """Its smallest p-value on m folds is 1/2^m: p = 0.1 first prunes after 4 folds."""
    from affvx.orchestrator.space import TuneConfig
    from affvx.orchestrator.tune import wilcoxon_cannot_prune

    said = wilcoxon_cannot_prune(TuneConfig(pruner="wilcoxon", wilcoxon_p=p), folds)
    assert (said == "") is can_prune
    assert wilcoxon_cannot_prune(TuneConfig(pruner="median", wilcoxon_p=p), folds) == ""
