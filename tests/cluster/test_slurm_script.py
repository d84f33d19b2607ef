"""The sbatch script the slurm backend submits, pinned by a golden file (no cluster needed).

Names with spaces, quotes and $(...) must reach sbatch as data, never as shell code. To
re-record after an intended change: AFFVX_RECORD_GOLDEN=1 pytest tests/cluster/test_slurm_script.py
"""

from __future__ import annotations

import os
from pathlib import Path

from affvx.cluster.base import JobRequest, JobStatus, Resources
from affvx.cluster.slurm import SlurmBackend, _directive, _expand, _state

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sbatch_weird_names.txt"
WEIRD_RUN = Path("/runs/grid of 'Ann' $(rm -rf ~)")


def weird_requests(n: int) -> list[JobRequest]:
    return [
        JobRequest(
            key=f"valence-visual-fold{i}-seed0",
            command=(
                "/usr/bin/python3",
                "-m",
                "affvx.orchestrator.worker",
                str(WEIRD_RUN),
                f"valence-visual-fold{i}-seed0",
            ),
            workdir=WEIRD_RUN,
            log_dir=WEIRD_RUN / "jobs" / f"valence-visual-fold{i}-seed0" / "log",
            resources=Resources(cpus=4, gpus=1, mem_gb=16, time_limit_min=90),
            env=(("AFFVX_BACKEND", "slurm"),),
        )
        for i in range(n)
    ]


def weird_backend() -> SlurmBackend:
    return SlurmBackend(
        partition="gpu queue",
        account="lab's $(whoami)",
        qos="normal",
        constraint="a100|h100",
        extra_directives=["mail-type=END", "--exclusive"],
        setup=["module load cuda/12.4", "source '/opt/my env/bin/activate'"],
        array_parallelism=4,
        signal_grace_s=300,
        python="/usr/bin/python3",
    )


def test_the_script_matches_the_golden_file() -> None:
    [script] = weird_backend().render(weird_requests(6))
    if os.environ.get("AFFVX_RECORD_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), (
        f"the sbatch script changed; if intended, re-record {GOLDEN.name}"
    )


def test_the_script_asks_for_what_the_jobs_need() -> None:
    [script] = weird_backend().render(weird_requests(6))
    lines = script.splitlines()
    for expected in (
        "#SBATCH --array=0-5%4",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=16384MB",
        "#SBATCH --time=90",
        "#SBATCH --signal=B:USR2@300",
        "#SBATCH --requeue",
        "#SBATCH --partition='gpu queue'",
        "#SBATCH --mail-type=END",
        "#SBATCH --exclusive",
        "module load cuda/12.4",
    ):
        assert expected in lines, expected
    # the batch shell becomes Python, so B: signals reach the task itself
    assert lines[-1].startswith("exec /usr/bin/python3 -u -m submitit.core._submit ")


def test_weird_names_are_quoted_not_run() -> None:
    [script] = weird_backend().render(weird_requests(2))
    assert "#SBATCH --account='lab'\"'\"'s $(whoami)'" in script
    assert "'/runs/grid of '\"'\"'Ann'\"'\"' $(rm -rf ~)/slurm'" in script
    unquoted = [line for line in script.splitlines() if "$(" in line and "'" not in line]
    assert unquoted == []


def test_large_batches_are_split_into_arrays_of_the_max_size() -> None:
    backend = weird_backend()
    backend._max_array_size = 1001
    scripts = backend.render(weird_requests(2500))
    arrays = [
        next(line for line in s.splitlines() if line.startswith("#SBATCH --array"))
        for s in scripts
    ]
    assert arrays == [
        "#SBATCH --array=0-1000%4",
        "#SBATCH --array=0-1000%4",
        "#SBATCH --array=0-497%4",
    ]


def test_state_words_and_array_ids_are_understood() -> None:
    assert _expand("123_[0-2,7%4]") == ["123_0", "123_1", "123_2", "123_7"]
    assert _expand("123_4") == ["123_4"] and _expand("99") == ["99"]
    assert _state("COMPLETED", "0:0", "n1").exit_code == 0
    assert _state("FAILED", "3:0", "n1").exit_code == 3
    assert _state("CANCELLED by 0", "0:15", "n1").status is JobStatus.CANCELLED
    assert _state("TIMEOUT", "0:9", "").exit_code == -9
    assert _state("PENDING", "0:0", "None assigned").status is JobStatus.PENDING
    assert _directive("#SBATCH --mail-user=a@b.c") == ("mail-user", "a@b.c")
    assert _directive("exclusive") == ("exclusive", True)


def test_a_machine_without_sacct_falls_back_to_squeue(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM command on it
    assert SlurmBackend(accounting="auto")._use_sacct() is False
