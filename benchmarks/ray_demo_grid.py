"""The README's main job (the demo grid: 24 LFAN jobs) on the ray backend (a local Ray
instance started by the launch), against the same grid run on the local backend: wall time,
and whether `affvx collect` gives the same tables and submission files byte for byte (it
should: one CPU per job on both).

    affvx launch --folds 6 --emotions valence,arousal --run runs/local   # the local run
    python benchmarks/ray_demo_grid.py runs/local
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import demo_grid_against_local, demo_grid_table, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("local_run", type=Path, help="the demo grid run on the local backend")
    args = parser.parse_args()
    launch_s, same, total, summary = demo_grid_against_local(["--backend", "ray"], args.local_run)
    print(f"machine: {machine()}; a local Ray instance, one CPU per job\n")
    print(demo_grid_table("ray", launch_s, same, total))
    print("\n" + summary)


if __name__ == "__main__":
    main()
