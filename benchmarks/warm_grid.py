"""A grid of short jobs, each job a fresh interpreter against each job a fork of a warm server
(`warm_start`, on by default: one server per launch on the local backend, one per Ray worker
on the ray backend): wall time of the whole `affvx launch`, and whether the two give the same
report byte for byte.

The grid is the demo corpus with 1-epoch TCN jobs (6 folds x valence, arousal x visual = 12
jobs, one CPU each, as many at once as CPUs), where a job's fixed cost is most of its time;
the two ways take turns, `--rounds` times. `--backend ray` runs it on a local Ray instance
that each launch starts.

    python benchmarks/warm_grid.py [--rounds 3] [--folds 6] [--backend local|ray]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import affvx_command, machine, markdown_table  # noqa: E402

from tests.support.runs import report_files  # noqa: E402

WAYS = {"fresh interpreter per job": "false", "forked from the warm server": "true"}


def grid(run: Path, folds: int, warm: str, backend: str) -> list[str]:
    return affvx_command(
        *("launch", "--run", str(run), "--folds", str(folds), "--emotions", "valence,arousal"),
        *("--modalities", "visual", "--model", "tcn", "--epochs", "1"),
        *("--backend", backend, "--backend-option", f"warm_start={warm}"),
    )


def timed_grid(
    scratch: Path, folds: int, warm: str, backend: str, round_: int
) -> tuple[float, dict]:
    """Seconds of one launch, and its report files (after `affvx collect`)."""
    run = scratch / f"{warm}-{round_}"
    started = time.perf_counter()
    subprocess.run(grid(run, folds, warm, backend), check=True, capture_output=True)
    seconds = time.perf_counter() - started
    subprocess.run(affvx_command("collect", str(run)), check=True, capture_output=True)
    return seconds, report_files(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for way, warm in WAYS.items():
                wall, reports[way] = timed_grid(
                    Path(scratch), args.folds, warm, args.backend, round_
                )
                seconds[way].append(wall)
                print(f"round {round_ + 1}/{args.rounds}: {way}: {wall:.1f} s", flush=True)
    fresh, warm = (reports[way] for way in WAYS)
    same = sum(warm.get(name) == content for name, content in fresh.items())
    baseline = statistics.median(seconds["fresh interpreter per job"])
    rows = [
        [
            way,
            ", ".join(f"{s:.1f}" for s in times),
            f"{statistics.median(times):.1f}",
            f"{statistics.median(times) / baseline:.2f}",
        ]
        for way, times in seconds.items()
    ]
    print(
        f"\nmachine: {machine()}; {args.backend} backend; {args.folds * 2} jobs (tcn, 1 epoch), "
        "one CPU each\n"
    )
    print(markdown_table(["way", "launch wall s (each round)", "median s", "vs fresh"], rows))
    print(f"\nreport files equal: {same} of {len(fresh)}")


if __name__ == "__main__":
    main()
