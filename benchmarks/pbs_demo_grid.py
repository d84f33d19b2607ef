"""The README's main job (the demo grid: 24 LFAN jobs) on a real one-node OpenPBS, against
the same grid run on the local backend: wall time, and whether `affvx collect` gives the same
tables and submission files byte for byte (it should: one CPU per job on both).

    affvx launch --folds 6 --emotions valence,arousal --run runs/local   # the local run
    python benchmarks/pbs_demo_grid.py runs/local

Needs root and OpenPBS in /opt/pbs (scripts/system-packages.sh); starts its own server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import demo_grid_against_local, demo_grid_table, machine  # noqa: E402

from tests.support.pbs_cluster import cluster_in_use  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("local_run", type=Path, help="the demo grid run on the local backend")
    args = parser.parse_args()
    with cluster_in_use():
        backend = ["--backend", "pbs", "--backend-option", "poll_interval_s=2"]
        launch_s, same, total, summary = demo_grid_against_local(backend, args.local_run)
    print(f"machine: {machine()}; one-node OpenPBS, one CPU per job\n")
    print(demo_grid_table("pbs", launch_s, same, total))
    print("\n" + summary)


if __name__ == "__main__":
    main()
