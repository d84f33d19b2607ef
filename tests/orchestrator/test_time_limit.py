"""A launched job keeps its own clock: with the local backend's warning signal turned off it
still stops itself with a checkpoint before its time limit, and resumes exactly.

The limit is set from a measured uninterrupted run of the same job, and shortened until the
job cannot finish in one attempt, so the test holds whatever the machine's speed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from affvx.orchestrator.launch import launch
from tests.support.runs import attempts, metrics_without_seconds

pytestmark = pytest.mark.slow

JOB = "valence-visual-fold0-seed0"
EPOCHS = 100


def flags(store: Path, epochs: int, time_limit_min: float | None = None) -> dict:
    return {
        "store": str(store),
        "folds": 2,
        "emotions": ("valence",),
        "modalities": (("visual",),),
        "model": {"name": "tcn"},
        "training": {"max_epochs": epochs, "patience": epochs},
        "resources": {"time_limit_min": time_limit_min},
    }


def duration_s(attempt: dict) -> float:
    start, end = (dt.datetime.fromisoformat(attempt[k]) for k in ("start_utc", "end_utc"))
    return (end - start).total_seconds()


def test_without_a_warning_signal_the_job_stops_itself_before_its_limit(
    small_store: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    assert launch(flags=flags(small_store, EPOCHS), run_path=reference).exit_code == 0
    [uninterrupted] = attempts(reference / "jobs" / JOB)
    limit_s = 0.7 * duration_s(uninterrupted)
    for tries in range(4):  # a shorter limit until the job cannot finish in one attempt
        run = tmp_path / f"limited-{tries}"
        outcome = launch(
            flags=flags(small_store, EPOCHS, time_limit_min=limit_s / 60),
            run_path=run,
            backend_option_texts=["signal_grace_s=0"],
        )
        assert outcome.exit_code == 0
        lines = attempts(run / "jobs" / JOB)
        if len(lines) >= 2:
            break
        limit_s *= 0.6
    assert len(lines) >= 2 and lines[-1]["exit_reason"] == "completed"
    for line in lines[:-1]:  # every stop was the job's own, before the limit
        assert (line["exit_reason"], line["reason"]) == ("preempted", "stopped by time limit")
        assert duration_s(line) < limit_s
    assert metrics_without_seconds(run / "jobs" / JOB) == metrics_without_seconds(
        reference / "jobs" / JOB
    )
