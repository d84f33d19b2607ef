"""Orchestration at scale: status, collect and dry-run planning of 10,000-job runs, and the
parallel efficiency of the local backend.

1. A run of 10,000 complete jobs (10 folds x 2 emotions x 5 modality sets x 100 seeds) is
   written directly (plan, results, states, attempts, predictions); then `affvx status
   --json` (target <= 1 s), `affvx collect` (target <= 10 s) and `affvx launch --dry-run`
   of a fresh 10,000-job grid (target <= 2 s) are timed as the CLI runs them.
2. 24 equal jobs (kfold 2 folds x 2 emotions x 6 seeds, tcn, 3 epochs each) on 2 workers:
   the launch's wall time against the sum of the jobs' own times / 2 (target <= 1.15).

    python benchmarks/run_scale.py [--skip-efficiency]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, affvx_command, machine, markdown_table  # noqa: E402

from affvx.orchestrator.launch import prepare  # noqa: E402
from affvx.storage.reader import FeatureStore  # noqa: E402
from affvx.storage.synth import SynthConfig, make_synthetic_store  # noqa: E402

MODALITY_SETS = (
    ("visual",),
    ("mfcc",),
    ("vggish",),
    ("visual", "mfcc"),
    ("visual", "mfcc", "vggish"),
)


def small_store() -> Path:
    path = OUT / "scale-store"
    if not (path / "manifest.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        make_synthetic_store(path, SynthConfig(n_trials=24, scale=0.03, seed=7, visual_dim=16))
    return path


def grid_flags(store: Path) -> dict:
    return {
        "store": str(store),
        "protocol": "kfold",
        "folds": 10,
        "emotions": ("valence", "arousal"),
        "modalities": MODALITY_SETS,
        "seeds": tuple(range(100)),
        "model": {"name": "tcn"},
    }


def write_big_run(store_path: Path, run_path: Path) -> int:
    """A complete 10,000-job run, written file by file as workers would have written it."""
    shutil.rmtree(run_path, ignore_errors=True)
    plan = prepare(
        flags=grid_flags(store_path),
        config_file=None,
        run_path=run_path,
        resume=False,
        note=lambda m: None,
    )
    run, jobs = plan.run, plan.jobs
    run.create(plan.config, plan.folds, jobs)
    store = FeatureStore(store_path)
    rng = np.random.default_rng(0)
    test = store.trials_in("Test_Set")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    for job in jobs:
        job_dir = run.job_dir(job.job_id)
        job_dir.mkdir(parents=True)
        fold = plan.folds.fold(job.fold)
        ccc = float(rng.uniform(0.3, 0.8))
        (job_dir / "result.json").write_text(
            json.dumps(
                {
                    "fold": job.fold,
                    "emotions": [job.emotion],
                    "modalities": list(job.modalities),
                    "model": "tcn",
                    "seed": job.seed,
                    "best_epoch": 3,
                    "epochs_run": 10,
                    "val_ccc": {job.emotion: ccc},
                    "val_ccc_mean": ccc,
                    "train_seconds": 60.0,
                    "provenance": {
                        "attempt": 1,
                        "backend": "local",
                        "scheduler_id": f"local-1-{job.job_id}",
                        "node": "bench",
                    },
                }
            )
        )
        state = {
            "attempt": 1,
            "state": "COMPLETE",
            "backend": "local",
            "scheduler_id": f"local-1-{job.job_id}",
            "node": "bench",
            "pid": 1,
            "started_utc": stamp,
            "ended_utc": stamp,
            "exit_reason": "completed",
        }
        (job_dir / "state.json").write_text(json.dumps(state))
        (job_dir / "submission.json").write_text(
            json.dumps(
                {
                    "attempt": 1,
                    "backend": "local",
                    "scheduler_id": state["scheduler_id"],
                    "submitted_utc": stamp,
                    "cancelled_utc": None,
                }
            )
        )
        (job_dir / "attempts.jsonl").write_text(
            json.dumps({"attempt": 1, "exit_reason": "completed"}) + "\n"
        )
        trials = [*fold.validation, *test]
        lengths = [store.n_frames(t) for t in trials]
        n = sum(lengths)
        pq.write_table(
            pa.table(
                {
                    "trial": pa.array(np.repeat(trials, lengths)).dictionary_encode(),
                    "partition": pa.array(
                        np.repeat(
                            ["Validation"] * len(fold.validation) + ["Test"] * len(test), lengths
                        )
                    ).dictionary_encode(),
                    "frame": np.concatenate([np.arange(k, dtype=np.int32) for k in lengths]),
                    job.emotion: rng.uniform(-1, 1, n).astype(np.float32),
                    f"{job.emotion}_label": rng.uniform(-1, 1, n).astype(np.float32),
                }
            ),
            job_dir / "predictions.parquet",
        )
    return len(jobs)


def timed(command: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


def efficiency(store_path: Path) -> tuple[float, float, float]:
    """Wall time of a whole launch against the sum of its job processes' run times / 2."""
    from affvx.orchestrator.launch import launch

    run = OUT / "efficiency-run"
    shutil.rmtree(run, ignore_errors=True)
    flags = {
        "store": str(store_path),
        "protocol": "kfold",
        "folds": 2,
        "emotions": ("valence", "arousal"),
        "modalities": (("visual",),),
        "seeds": tuple(range(6)),
        "model": {"name": "tcn"},
        "training": {"max_epochs": 3},
    }
    started = time.perf_counter()
    outcome = launch(flags=flags, run_path=run, backend_flags={"--max-parallel": 2})
    wall = time.perf_counter() - started
    assert outcome.exit_code == 0 and len(outcome.runtime_s) == 24
    total = sum(outcome.runtime_s.values())
    return wall, total, wall / (total / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-efficiency", action="store_true")
    args = parser.parse_args()
    store = small_store()
    big_run = OUT / "big-run"
    started = time.perf_counter()
    n_jobs = write_big_run(store, big_run)
    setup = time.perf_counter() - started
    (big_run / ".status-cache.json").unlink(missing_ok=True)
    status_first_s = timed(affvx_command("status", str(big_run), "--json"), repeats=1)
    status_s = timed(affvx_command("status", str(big_run), "--json"))
    collect_s = timed(affvx_command("collect", str(big_run)), repeats=2)
    flags = grid_flags(store)
    dry_command = affvx_command(
        "launch",
        "--store",
        flags["store"],
        "--run",
        str(OUT / "dry-run-never-written"),
        "--protocol",
        "kfold",
        "--folds",
        "10",
        "--emotions",
        "valence,arousal",
        "--model",
        "tcn",
        "--seeds",
        "0-99",
        *[arg for modalities in MODALITY_SETS for arg in ("--modalities", ",".join(modalities))],
        "--dry-run",
    )
    dry_s = timed(dry_command)
    print(f"machine: {machine()}")
    print(f"run of {n_jobs:,} complete jobs written in {setup:.0f} s\n")
    rows = [
        [
            f"`affvx status --json` ({n_jobs:,} jobs), first call: reads every job",
            f"{status_first_s:.2f}",
            "1",
        ],
        [
            f"`affvx status --json` ({n_jobs:,} jobs), later calls: complete jobs cached",
            f"{status_s:.2f}",
            "1",
        ],
        [f"`affvx collect` ({n_jobs:,} jobs, submission from 2,000)", f"{collect_s:.2f}", "10"],
        [f"`affvx launch --dry-run` ({n_jobs:,}-job grid)", f"{dry_s:.2f}", "2"],
    ]
    print(markdown_table(["command", "seconds (best)", "target"], rows))
    if not args.skip_efficiency:
        wall, total, ratio = efficiency(store)
        print(
            f"\n24 equal jobs on 2 workers: wall {wall:.1f} s, sum of job times {total:.1f} s, "
            f"wall / (sum / 2) = {ratio:.3f} (target <= 1.15)"
        )


if __name__ == "__main__":
    main()
