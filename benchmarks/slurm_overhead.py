"""SLURM overhead: 1,000 trivial array tasks through affvx's slurm backend against a plain
`sbatch --array` of the same tasks, on a real one-node cluster started for the run.

Both run `true` as each task. Through affvx each task is a submitit array task (a pickled
RunCommand, Python as the batch shell) whose child runs `true`; the plain array runs `true`
in a bash batch script. Time: from submission until squeue is empty. Target: affvx at most
1.5x the plain time.

    python benchmarks/slurm_overhead.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, markdown_table, trivial_tasks_through  # noqa: E402

from affvx.cluster.slurm import SlurmBackend  # noqa: E402
from tests.support.slurm_cluster import SlurmCluster, cluster_in_use  # noqa: E402


def wait_empty(cluster: SlurmCluster) -> None:
    while cluster.run("squeue", "-h", check=False).stdout.strip():
        time.sleep(0.5)


def plain_array(cluster: SlurmCluster, work: Path, n: int) -> float:
    script = work / "plain.sh"
    script.write_text("#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --cpus-per-task=1\ntrue\n")
    started = time.perf_counter()
    cluster.run("sbatch", "--parsable", f"--array=0-{n - 1}", str(script))
    wait_empty(cluster)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        with cluster_in_use(Path(scratch) / "cluster") as cluster:
            plain = plain_array(cluster, Path(scratch), args.tasks)
            cluster.wait_idle()
            backend = SlurmBackend(array_parallelism=args.tasks, poll_interval_s=0.5)
            affvx = trivial_tasks_through(backend, Path(scratch), args.tasks)
    print(
        f"machine: {machine()}; one-node SLURM 22.05 cluster, {len(os.sched_getaffinity(0))} CPUs\n"
    )
    print(
        markdown_table(
            ["way", f"{args.tasks} tasks, seconds", "per task, ms", "vs plain"],
            [
                [
                    "plain `sbatch --array`",
                    f"{plain:.1f}",
                    f"{1000 * plain / args.tasks:.0f}",
                    "1.00",
                ],
                [
                    "affvx slurm backend (submitit)",
                    f"{affvx:.1f}",
                    f"{1000 * affvx / args.tasks:.0f}",
                    f"{affvx / plain:.2f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
