"""The lean in-job entry of affvx's PBS tasks reads and writes submitit's own files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from submitit.core.utils import DelayedSubmission, JobPaths


def run_entry(folder: Path, job_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *extra, "-m", "affvx.cluster.pbs_entry", str(folder)],
        env={**os.environ, "PBS_JOBID": job_id},
        capture_output=True,
        text=True,
        check=False,
    )


def submit(folder: Path, job_id: str, function: object, *args: object) -> JobPaths:
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    DelayedSubmission(function, *args).dump(paths.submitted_pickle)
    return paths


def test_a_subjob_runs_and_leaves_submitits_result_file(tmp_path: Path) -> None:
    paths = submit(tmp_path, "12[3].server", sum, [1, 2])
    done = run_entry(tmp_path, "12[3].server")
    assert done.returncode == 0, done.stderr
    assert pickle.loads(paths.result_pickle.read_bytes()) == ("success", 3)


def test_a_failing_subjob_leaves_its_traceback_and_fails(tmp_path: Path) -> None:
    paths = submit(tmp_path, "13.server", int, "not a number")
    done = run_entry(tmp_path, "13.server")
    assert done.returncode != 0
    status, text = pickle.loads(paths.result_pickle.read_bytes())
    assert status == "error" and "ValueError" in text


def test_the_entry_imports_neither_numpy_nor_submitits_executors(tmp_path: Path) -> None:
    submit(tmp_path, "14.server", sum, [1])
    done = run_entry(tmp_path, "14.server", "-X", "importtime")
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "submitit.core.utils" in imported
    assert not {"numpy", "submitit.auto.auto", "submitit.slurm.slurm", "asyncio"} & imported
