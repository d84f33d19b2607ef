"""The README's main job (the demo grid: 24 LFAN jobs) on a real one-node OpenPBS, against
the same grid run on the local backend: wall time, and whether `affvx collect` gives the same
tables and submission files byte for byte (it should: one CPU per job on both).

    affvx launch --folds 6 --emotions valence,arousal --run runs/local   # the local run
    python benchmarks/pbs_demo_grid.py runs/local

Needs root and OpenPBS in /opt/pbs (scripts/system-packages.sh); starts its own server.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import affvx_command, machine, markdown_table  # noqa: E402

from tests.support.pbs_cluster import cluster_in_use  # noqa: E402
from tests.support.runs import report_files  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("local_run", type=Path, help="the demo grid run on the local backend")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, cluster_in_use():
        run = Path(scratch) / "pbs-run"
        started = time.perf_counter()
        subprocess.run(
            affvx_command(
                "launch",
                "--folds",
                "6",
                "--emotions",
                "valence,arousal",
                "--run",
                str(run),
                "--backend",
                "pbs",
                "--backend-option",
                "poll_interval_s=2",
            ),
            check=True,
        )
        launch_s = time.perf_counter() - started
        summary = subprocess.run(
            affvx_command("collect", str(run)), check=True, capture_output=True, text=True
        ).stdout
        if not (args.local_run / "report").exists():
            subprocess.run(affvx_command("collect", str(args.local_run)), check=True)
        pbs_files, local_files = report_files(run), report_files(args.local_run)
    same = [name for name in local_files if pbs_files.get(name) == local_files[name]]
    print(f"machine: {machine()}; one-node OpenPBS, one CPU per job\n")
    print(
        markdown_table(
            ["backend", "`affvx launch` wall time", "report files equal to the local run's"],
            [
                [
                    "pbs",
                    f"{launch_s / 60:.0f} min {launch_s % 60:.0f} s",
                    f"{len(same)} of {len(local_files)}",
                ]
            ],
        )
    )
    print("\n" + summary)


if __name__ == "__main__":
    main()
