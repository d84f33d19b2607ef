"""PBS overhead: 1,000 trivial array tasks through affvx's pbs backend against a plain
`qsub -J` of the same tasks, on a real one-node OpenPBS started for the run.

Both run `true` as each task. Through affvx each task is a submitit subjob (a pickled
RunCommand, Python replacing the batch shell) whose child runs `true`; the plain array runs
`true` in a bash script. Time: from submission until no subjob is left. Target: affvx at most
1.5x the plain time. Needs root and OpenPBS in /opt/pbs (scripts/system-packages.sh).

    python benchmarks/pbs_overhead.py [--tasks 1000]
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

from affvx.cluster.pbs import PbsBackend  # noqa: E402
from tests.support.pbs_cluster import PbsCluster, cluster_in_use  # noqa: E402


def plain_array(cluster: PbsCluster, work: Path, n: int) -> float:
    script = work / "plain.sh"
    script.write_text(
        "#!/bin/bash\n#PBS -l select=1:ncpus=1\n#PBS -j oe\n#PBS -o /dev/null\ntrue\n"
    )
    started = time.perf_counter()
    cluster.run("qsub", "-J", f"0-{n - 1}", str(script))
    cluster.wait_idle(timeout_s=3600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, cluster_in_use() as cluster:
        plain = plain_array(cluster, Path(scratch), args.tasks)
        backend = PbsBackend(array_parallelism=args.tasks, poll_interval_s=0.5)
        affvx = trivial_tasks_through(backend, Path(scratch), args.tasks)
        version = cluster.run("qstat", "--version").stdout.strip()
    print(
        f"machine: {machine()}; one-node OpenPBS ({version}), {len(os.sched_getaffinity(0))} CPUs\n"
    )
    print(
        markdown_table(
            ["way", f"{args.tasks} tasks, seconds", "per task, ms", "vs plain"],
            [
                ["plain `qsub -J`", f"{plain:.1f}", f"{1000 * plain / args.tasks:.0f}", "1.00"],
                [
                    "affvx pbs backend (submitit plugin)",
                    f"{affvx:.1f}",
                    f"{1000 * affvx / args.tasks:.0f}",
                    f"{affvx / plain:.2f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
