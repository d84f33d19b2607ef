"""PBS overhead: 1,000 trivial array tasks through affvx's pbs backend against a plain
`qsub -J` of the same tasks, on a real one-node OpenPBS started for the run.

Both run `true` as each task. Through affvx each task is a submitit subjob (a pickled
RunCommand, Python replacing the batch shell) whose child runs `true`; the plain array runs
`true` in a bash script. Time: from just before submission until the array's end as PBS
records it (`obittime` in the job history, to the second), so neither side's polling cadence
counts; affvx's side is watched by the backend at its default poll interval, as a run is.
Target: affvx at most 1.5x the plain time. Needs root and OpenPBS in /opt/pbs
(scripts/system-packages.sh).

    python benchmarks/pbs_overhead.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, markdown_table, trivial_requests  # noqa: E402

from affvx.cluster import pbs_qstat  # noqa: E402
from affvx.cluster.pbs import PbsBackend  # noqa: E402
from tests.support.pbs_cluster import PbsCluster, cluster_in_use  # noqa: E402


def ended_at(cluster: PbsCluster, job_ids: list[str]) -> float:
    """The latest end (epoch seconds) PBS recorded for the arrays of `job_ids`."""
    parents = sorted({pbs_qstat.array_parent(i) for i in job_ids})
    ends = []
    for parent in parents:
        answer = json.loads(cluster.run("qstat", "-x", "-f", "-F", "json", parent).stdout)
        obittime = answer["Jobs"][parent]["obittime"]
        ends.append(time.mktime(time.strptime(obittime, "%a %b %d %H:%M:%S %Y")))
    return max(ends)


def plain_array(cluster: PbsCluster, work: Path, n: int) -> tuple[float, float]:
    """(seconds until PBS ended the array, seconds until `qstat` no longer lists it)."""
    script = work / "plain.sh"
    script.write_text(
        "#!/bin/bash\n#PBS -l select=1:ncpus=1\n#PBS -j oe\n#PBS -o /dev/null\ntrue\n"
    )
    started, clock = time.time(), time.perf_counter()
    job_id = cluster.run("qsub", "-J", f"0-{n - 1}", str(script)).stdout.strip()
    cluster.wait_idle(timeout_s=3600)
    return ended_at(cluster, [job_id]) - started, time.perf_counter() - clock


def through_affvx(cluster: PbsCluster, work: Path, n: int) -> tuple[float, float]:
    """The same through the backend, watched as a run watches it."""
    backend = PbsBackend(array_parallelism=n)
    requests = trivial_requests(work, n)
    started, clock = time.time(), time.perf_counter()
    ids = backend.submit(requests)
    while any(s.status.is_active() for s in backend.poll(ids).values()):
        time.sleep(backend.poll_interval_s)
    return ended_at(cluster, ids) - started, time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, cluster_in_use() as cluster:
        plain, plain_seen = plain_array(cluster, Path(scratch), args.tasks)
        affvx, affvx_seen = through_affvx(cluster, Path(scratch), args.tasks)
        version = cluster.run("qstat", "--version").stdout.strip()
    print(
        f"machine: {machine()}; one-node OpenPBS ({version}), {len(os.sched_getaffinity(0))} CPUs\n"
    )
    n = args.tasks
    print(
        markdown_table(
            ["way", f"{n} tasks, s (PBS's end)", "per task, ms", "vs plain", "seen ended, s"],
            [
                [
                    "plain `qsub -J`",
                    f"{plain:.0f}",
                    f"{1000 * plain / n:.0f}",
                    "1.00",
                    f"{plain_seen:.1f}",
                ],
                [
                    "affvx pbs backend (submitit plugin)",
                    f"{affvx:.0f}",
                    f"{1000 * affvx / n:.0f}",
                    f"{affvx / plain:.2f}",
                    f"{affvx_seen:.1f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
