"""The job pool's policy -- retries, deterministic failures, requeues, loss, cancel, adoption,
several runs -- on the fake backend, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affvx.cluster.base import Backend, JobRequest, JobStatus
from affvx.orchestrator.config import BackendConfig, ExperimentConfig
from affvx.orchestrator.ledger import JobFiles
from affvx.orchestrator.plan import PlannedJob
from affvx.orchestrator.pool import JobPool, Outcome
from affvx.orchestrator.rundir import RunDir
from affvx.protocol import EXIT_FAILED, EXIT_INPUT, EXIT_REQUEUE
from tests.support.fake_backend import LOST, FakeBackend, Scripted


def planned(job_id: str) -> PlannedJob:
    return PlannedJob(
        job_id=job_id,
        fold=0,
        emotion="valence",
        modalities=("visual",),
        seed=0,
        model="tcn",
        config_hash="0" * 16,
    )


def config(max_retries: int = 2) -> ExperimentConfig:
    return ExperimentConfig(store="unused", backend=BackendConfig(max_retries=max_retries))


def requests_for(
    run: RunDir, config: ExperimentConfig, jobs: list[PlannedJob], backend: Backend
) -> list[JobRequest]:
    return [
        JobRequest(
            key=str(run.job_dir(job.job_id)),
            command=("true",),
            workdir=run.path,
            log_dir=run.job_dir(job.job_id) / "log",
        )
        for job in jobs
    ]


def completes(request: JobRequest) -> None:
    """What a worker leaves behind when it finishes: result.json."""
    (Path(request.key) / "result.json").write_text(json.dumps({"val_ccc": {"valence": 0.5}}))


def starts(request: JobRequest) -> None:
    """What a worker leaves behind when it starts and is then killed: a RUNNING state."""
    files = JobFiles(Path(request.key))
    files.write_state({"state": "RUNNING", "attempt": files.next_attempt(), "node": "n1"})


def run_pool(backend: FakeBackend, run: RunDir, jobs: list[str], retries: int = 2) -> dict:
    pool = JobPool(backend, requests_for, poll_interval_s=0.001)
    pool.submit(run, config(retries), [planned(j) for j in jobs])
    return {ended.job.job_id: ended for ended in pool.run_until_idle()}


def sequence(*ends: Scripted):  # type: ignore[no-untyped-def]
    return lambda request, attempt: ends[min(attempt, len(ends) - 1)]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "run")


def test_a_failing_job_is_retried_up_to_max_retries_then_completes(run: RunDir) -> None:
    fail = Scripted(exit_code=EXIT_FAILED, effect=starts)
    backend = FakeBackend(sequence(fail, fail, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=2)
    assert ended["a"].outcome is Outcome.COMPLETE and ended["a"].result == {
        "val_ccc": {"valence": 0.5}
    }
    assert sum(backend.submissions.values()) == 3
    reasons = [a["exit_reason"] for a in JobFiles(run.job_dir("a")).attempts()]
    assert reasons == ["failed", "failed"]


def test_a_job_failing_more_than_max_retries_fails(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(exit_code=EXIT_FAILED)))
    ended = run_pool(backend, run, ["a"], retries=1)
    assert ended["a"].outcome is Outcome.FAILED and "2 attempts" in ended["a"].reason
    assert sum(backend.submissions.values()) == 2


def test_a_deterministic_failure_is_never_retried(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(exit_code=EXIT_INPUT)))
    ended = run_pool(backend, run, ["a"], retries=5)
    assert ended["a"].outcome is Outcome.FAILED
    assert sum(backend.submissions.values()) == 1


@pytest.mark.parametrize("task_exit_code", [EXIT_FAILED, EXIT_REQUEUE])
def test_a_job_whose_own_record_says_deterministic_is_never_retried(
    run: RunDir, task_exit_code: int
) -> None:
    """A packed job's task status is its pack's (here: a neighbour crashed, or checkpointed
    to run again); the job's own attempt record says it failed deterministically."""

    def fails_deterministically(request: JobRequest) -> None:
        files = JobFiles(Path(request.key))
        scheduler_id = (files.submission() or {})["scheduler_id"]
        running = {"state": "RUNNING", "attempt": 1, "scheduler_id": scheduler_id}
        files.close_attempt(running, "failed", reason="diverged", exit_code=EXIT_INPUT)

    task = Scripted(exit_code=task_exit_code, effect=fails_deterministically)
    backend = FakeBackend(sequence(task, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=5)
    assert ended["a"].outcome is Outcome.FAILED
    assert sum(backend.submissions.values()) == 1


def test_a_deterministic_failure_of_an_earlier_attempt_does_not_decide_this_one(
    run: RunDir,
) -> None:
    """Only the record of the attempt that just ended counts (same scheduler id)."""

    def earlier_record_then_crash(request: JobRequest) -> None:
        files = JobFiles(Path(request.key))
        earlier = {"state": "RUNNING", "attempt": 1, "scheduler_id": "an-earlier-task"}
        files.close_attempt(earlier, "failed", reason="diverged", exit_code=EXIT_INPUT)

    crash = Scripted(exit_code=EXIT_FAILED, effect=earlier_record_then_crash)
    backend = FakeBackend(sequence(crash, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=1)
    assert ended["a"].outcome is Outcome.COMPLETE


def test_requeues_are_resubmitted_without_counting_as_failures(run: RunDir) -> None:
    requeue = Scripted(exit_code=EXIT_REQUEUE)
    backend = FakeBackend(sequence(requeue, requeue, requeue, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=0)
    assert ended["a"].outcome is Outcome.COMPLETE
    assert sum(backend.submissions.values()) == 4


def test_a_backend_that_requeues_itself_is_only_followed(run: RunDir) -> None:
    requeue = Scripted(exit_code=EXIT_REQUEUE)
    backend = FakeBackend(sequence(requeue, Scripted(effect=completes)), requeues_itself=True)
    pool = JobPool(backend, requests_for, poll_interval_s=0.001)
    pool.submit(run, config(0), [planned("a")])
    [ended] = pool.run_until_idle()
    assert ended.outcome is Outcome.COMPLETE
    assert backend.submissions["" + str(run.job_dir("a"))] == 2  # both under one submit
    assert json.loads((run.job_dir("a") / "submission.json").read_text())["attempt"] == 1


def test_a_job_the_scheduler_lost_is_recorded_lost_and_retried(run: RunDir) -> None:
    lost_after_start = Scripted(exit_code=None, status=JobStatus.UNKNOWN, effect=starts)
    backend = FakeBackend(sequence(lost_after_start, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=1)
    assert ended["a"].outcome is Outcome.COMPLETE
    [attempt] = JobFiles(run.job_dir("a")).attempts()
    assert attempt["exit_reason"] == "lost"


def test_a_forgotten_job_whose_files_say_it_checkpointed_is_a_requeue(run: RunDir) -> None:
    """A scheduler without job history forgets a job that stopped at its own time limit: the
    worker's PREEMPTED state tells the pool to submit it again, not to count a failure."""

    def checkpoints(request: JobRequest) -> None:
        files = JobFiles(Path(request.key))
        scheduler_id = (files.submission() or {})["scheduler_id"]
        running = {
            "state": "RUNNING",
            "attempt": files.next_attempt(),
            "scheduler_id": scheduler_id,
        }
        files.close_attempt(running, "preempted", reason="stopped by time limit")

    forgotten = Scripted(exit_code=None, status=JobStatus.UNKNOWN, effect=checkpoints)
    backend = FakeBackend(sequence(forgotten, forgotten, forgotten, Scripted(effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=0)
    assert ended["a"].outcome is Outcome.COMPLETE
    reasons = [a["exit_reason"] for a in JobFiles(run.job_dir("a")).attempts()]
    assert reasons == ["preempted"] * 3


def test_a_job_lost_more_often_than_retries_allow_fails(run: RunDir) -> None:
    backend = FakeBackend(sequence(LOST))
    ended = run_pool(backend, run, ["a"], retries=1)
    assert ended["a"].outcome is Outcome.FAILED


def test_a_result_wins_over_what_the_scheduler_says(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(exit_code=EXIT_FAILED, effect=completes)))
    ended = run_pool(backend, run, ["a"], retries=0)
    assert ended["a"].outcome is Outcome.COMPLETE


def test_cancel_stops_the_job_on_the_backend_and_ends_it_cancelled(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(polls=10**6)))  # runs until stopped
    pool = JobPool(backend, requests_for, poll_interval_s=0.001)
    pool.submit(run, config(), [planned("a"), planned("b")])
    pool.step()
    pool.cancel(run, ["a"])
    assert len(backend.cancelled) == 1
    ended = pool.step()
    assert [(e.job.job_id, e.outcome) for e in ended] == [("a", Outcome.CANCELLED)]
    assert [j.job_id for j in pool.active_jobs()] == ["b"]


def test_a_cancel_request_from_another_process_reaches_the_pool(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(polls=10**6)))
    pool = JobPool(backend, requests_for, poll_interval_s=0.001)
    pool.submit(run, config(), [planned("a")])
    pool.step()
    JobFiles(run.job_dir("a")).mark_cancelled()  # what `affvx cancel` does ...
    run.request_cancel()  # ... and then it tells the driver
    ended = pool.step()
    assert [e.outcome for e in ended] == [Outcome.CANCELLED] and backend.cancelled


def test_complete_jobs_end_at_once_and_are_never_submitted(run: RunDir) -> None:
    run.job_dir("a").mkdir(parents=True)
    completes(JobRequest(str(run.job_dir("a")), ("true",), run.path, run.path))
    backend = FakeBackend()
    ended = run_pool(backend, run, ["a"])
    assert ended["a"].outcome is Outcome.COMPLETE and not backend.submissions


def test_a_job_still_in_the_scheduler_is_adopted_not_resubmitted(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(polls=3, effect=completes)))
    first = JobPool(backend, requests_for, poll_interval_s=0.001)
    first.submit(run, config(), [planned("a")])  # then this driver dies
    second = JobPool(backend, requests_for, poll_interval_s=0.001)
    second.submit(run, config(), [planned("a")])
    [ended] = second.run_until_idle()
    assert ended.outcome is Outcome.COMPLETE and sum(backend.submissions.values()) == 1


def test_one_pool_serves_several_runs(tmp_path: Path) -> None:
    runs = [RunDir(tmp_path / "one"), RunDir(tmp_path / "two")]
    backend = FakeBackend(sequence(Scripted(effect=completes)))
    pool = JobPool(backend, requests_for, poll_interval_s=0.001)
    pool.submit(runs[0], config(), [planned("a")])
    first = pool.step()
    pool.submit(runs[1], config(), [planned("a"), planned("b")])
    ended = first + pool.run_until_idle()
    assert sorted((e.run.path.name, e.job.job_id) for e in ended) == [
        ("one", "a"),
        ("two", "a"),
        ("two", "b"),
    ]
    assert all(e.outcome is Outcome.COMPLETE for e in ended)


def test_a_job_requeued_again_and_again_without_progress_fails_saying_why(run: RunDir) -> None:
    backend = FakeBackend(sequence(Scripted(exit_code=EXIT_REQUEUE)))  # never trains a batch
    ended = run_pool(backend, run, ["a"])
    assert ended["a"].outcome is Outcome.FAILED and "raise --time-limit" in ended["a"].reason
    assert sum(backend.submissions.values()) == 4


def test_requeues_that_make_progress_go_on(run: RunDir) -> None:
    def trains_a_batch(request: JobRequest) -> None:
        files = JobFiles(Path(request.key))
        done = (files.progress() or {}).get("batches_done", 0)
        files.path.mkdir(parents=True, exist_ok=True)
        (files.path / "progress.json").write_text(json.dumps({"batches_done": done + 1}))

    requeue = Scripted(exit_code=EXIT_REQUEUE, effect=trains_a_batch)
    backend = FakeBackend(sequence(*[requeue] * 6, Scripted(effect=completes)))
    assert run_pool(backend, run, ["a"])["a"].outcome is Outcome.COMPLETE
