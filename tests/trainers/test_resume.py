"""Exact resume: a job stopped at a random moment and started again computes exactly what an
uninterrupted run computes (metrics and predictions, on the CPU with the same thread count).

The `seconds` column of metrics.csv is wall time and differs between any two runs; every
other value must be bit-identical.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from affvx.orchestrator.train import single_job_spec
from affvx.trainers.job import EXIT_REQUEUE, STOP_SIGNALS, JobOutcome, run_job
from tests.support.runs import process_state, wait_until

RUNNER = Path(__file__).resolve().parents[1] / "support" / "job_process.py"


@pytest.fixture(scope="module")
def spec_file(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = single_job_spec(
        small_store,
        fold=0,
        emotion="both",
        modalities=("visual", "mfcc"),
        model="lfan",
        window=64,
        hop=32,
        batch_size=4,
        max_epochs=4,
        patience=10,
        threads=1,
    )
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    return path


def start(spec_file: Path, job_dir: Path, *freeze_at: int) -> subprocess.Popen[str]:
    """Run the job in a process; with `freeze_at` (epoch, batch) it stops itself there."""
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(spec_file), str(job_dir), *map(str, freeze_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_end(spec_file: Path, job_dir: Path) -> list[str]:
    process = start(spec_file, job_dir)
    out, err = process.communicate()
    assert process.returncode == 0, err
    return out.splitlines()


@pytest.fixture(scope="module")
def reference(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    job_dir = tmp_path_factory.mktemp("reference") / "job"
    lines = run_to_end(spec_file, job_dir)
    assert sum(line.startswith("batch 1 ") for line in lines) >= 4  # enough batches to cut into
    return job_dir


def deterministic_metrics(job_dir: Path) -> list[dict[str, str]]:
    with open(job_dir / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_same_outputs(job_dir: Path, reference: Path) -> None:
    assert deterministic_metrics(job_dir) == deterministic_metrics(reference)
    ours, theirs = (pq.read_table(d / "predictions.parquet") for d in (job_dir, reference))
    assert ours.schema == theirs.schema and ours.num_rows == theirs.num_rows
    for name in ours.column_names:
        a, b = ours.column(name).to_numpy(), theirs.column(name).to_numpy()
        if a.dtype.kind == "f":  # bit for bit, NaN included
            a, b = a.view(np.uint32), b.view(np.uint32)
        assert np.array_equal(a, b), name
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (job_dir, reference))
    for key in ("best_epoch", "epochs_run", "val_ccc", "config_hash"):
        assert ours[key] == theirs[key]


def interrupt_at_random_batch(spec_file: Path, job_dir: Path, sig: int, rng: random.Random) -> int:
    """Send `sig` to the job at a random batch after its first checkpoint.

    The job stops itself (SIGSTOP) after that batch, so the signal lands exactly there however
    fast the job runs; it is continued (SIGCONT) once the signal is pending.
    """
    epoch, batch = rng.randint(1, 3), rng.randint(1, 4)
    process = start(spec_file, job_dir, epoch, batch)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(f"batch {epoch} {batch} "):
            wait_until(lambda: process_state(process.pid) == "T", what="the job to stop itself")
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
            break
    process.communicate()
    assert (job_dir / "checkpoint.pt").exists()
    return process.returncode


def _start_with_usr2_pending() -> None:
    """As a scheduler starts a job that was warned before it could listen (preexec_fn)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.kill(os.getpid(), signal.SIGUSR2)


def test_a_stop_signal_during_start_up_is_held_until_the_job_can_checkpoint(
    spec_file: Path, reference: Path, tmp_path: Path
) -> None:
    job_dir = tmp_path / "job"
    process = subprocess.Popen(
        [sys.executable, str(RUNNER), str(spec_file), str(job_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_start_with_usr2_pending,
    )
    out, err = process.communicate()
    assert process.returncode == EXIT_REQUEUE, err  # not killed by the signal, not ignoring it
    assert not (job_dir / "result.json").exists()
    run_to_end(spec_file, job_dir)
    assert_same_outputs(job_dir, reference)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_moment_then_resume(
    spec_file: Path, reference: Path, tmp_path: Path, seed: int
) -> None:
    job_dir = tmp_path / "job"
    code = interrupt_at_random_batch(spec_file, job_dir, signal.SIGKILL, random.Random(seed))
    assert code == -signal.SIGKILL and not (job_dir / "result.json").exists()
    lines = run_to_end(spec_file, job_dir)
    assert lines[0].startswith("start ") and lines[0].endswith(" 1")  # it resumed, not restarted
    assert_same_outputs(job_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_stop_signal_checkpoints_mid_epoch_and_exits_with_requeue_status(
    spec_file: Path, reference: Path, tmp_path: Path, sig: int
) -> None:
    job_dir = tmp_path / "job"
    code = interrupt_at_random_batch(spec_file, job_dir, sig, random.Random(sig))
    assert code == EXIT_REQUEUE
    lines = run_to_end(spec_file, job_dir)
    first_batch = next(line for line in lines if line.startswith("batch "))
    assert first_batch.split()[2] != "1"  # continued inside the epoch it was stopped in
    assert_same_outputs(job_dir, reference)


class BatchClock:
    """The job's clock for the time-limit test: every training batch takes BATCH_S seconds and
    nothing else takes any time, so how far an attempt gets does not depend on the machine."""

    BATCH_S = 1000.0

    def __init__(self) -> None:
        self.now = 0.0
        self.batches = 0

    def monotonic(self) -> float:
        return self.now

    def on_batch(self, **_: object) -> None:
        self.now += self.BATCH_S
        self.batches += 1

    def on_start(self, **_: object) -> None: ...
    def on_epoch(self, row: dict) -> None: ...
    def on_phase(self, phase: str) -> None: ...


def test_time_limit_makes_the_job_stop_and_resume_until_done(
    spec_file: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affvx.trainers.job as job_module

    spec = json.loads(spec_file.read_text())
    # 4 batches fit before the limit (less the 2 s safety margin), a 5th would not: a job of
    # 4 epochs of at least 4 batches has to stop several times, and every attempt gets on
    spec["time_limit_s"] = 3.5 * BatchClock.BATCH_S
    job_dir = tmp_path / "job"
    batches_per_attempt = []
    while True:
        clock = BatchClock()
        monkeypatch.setattr(job_module, "time", clock)
        outcome = run_job(spec, job_dir, observer=clock).outcome
        batches_per_attempt.append(clock.batches)
        if outcome is JobOutcome.COMPLETE:
            break
        assert len(batches_per_attempt) < 50
    assert len(batches_per_attempt) >= 4 and max(batches_per_attempt) == 4, batches_per_attempt
    assert_same_outputs(job_dir, reference)


def test_damaged_checkpoint_falls_back_to_the_previous_one(
    spec_file: Path, reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_dir = tmp_path / "job"
    code = interrupt_at_random_batch(spec_file, job_dir, signal.SIGTERM, random.Random(7))
    assert code == EXIT_REQUEUE and (job_dir / "checkpoint.prev.pt").exists()
    latest = job_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    outcome = run_job(json.loads(spec_file.read_text()), job_dir)
    assert outcome.outcome is JobOutcome.COMPLETE
    assert "checkpoint.pt is damaged" in caplog.text
    assert_same_outputs(job_dir, reference)


def test_flipped_bytes_in_both_checkpoints_mean_a_fresh_start(
    spec_file: Path, reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_dir = tmp_path / "job"
    interrupt_at_random_batch(spec_file, job_dir, signal.SIGTERM, random.Random(8))
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = job_dir / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40  # inside tensor data: the zip stays readable
        path.write_bytes(bytes(data))
    lines: list[str] = []

    class Watch:
        def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None:
            lines.append(f"start {epoch} {int(resumed)}")

        def on_batch(self, **_: object) -> None: ...
        def on_epoch(self, row: dict) -> None: ...
        def on_phase(self, phase: str) -> None: ...

    run_job(json.loads(spec_file.read_text()), job_dir, observer=Watch())
    assert lines == ["start 0 0"]
    assert "fails its integrity check" in caplog.text or "is damaged" in caplog.text
    assert_same_outputs(job_dir, reference)


def test_a_checkpoint_of_another_configuration_is_refused(spec_file: Path, tmp_path: Path) -> None:
    from affvx.trainers.errors import CheckpointMismatchError

    job_dir = tmp_path / "job"
    interrupt_at_random_batch(spec_file, job_dir, signal.SIGTERM, random.Random(9))
    spec = json.loads(spec_file.read_text())
    spec["lr"] = spec["lr"] / 10
    with pytest.raises(CheckpointMismatchError, match="made by another configuration"):
        run_job(spec, job_dir)
    assert "another configuration" in json.loads((job_dir / "failure.json").read_text())["reason"]


def test_a_complete_job_is_never_run_again(
    spec_file: Path, reference: Path, tmp_path: Path
) -> None:
    job_dir = tmp_path / "job"
    shutil.copytree(reference, job_dir)
    before = {p.name: p.stat().st_mtime_ns for p in job_dir.iterdir()}
    lines = run_to_end(spec_file, job_dir)
    assert lines == []
    assert {p.name: p.stat().st_mtime_ns for p in job_dir.iterdir()} == before
