"""Run one training job in this process and print one line per event, for tests that kill it.

    python tests/support/job_process.py SPEC.json JOB_DIR

Lines: `start E`, `batch E DONE TOTAL`, `epoch E`, `phase NAME`; exit status 0 (complete),
75 (checkpointed and stopped) or 1 (failed).
"""

from __future__ import annotations

import json
import sys

from affvx.trainers.job import run_job


class PrintingObserver:
    def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None:
        print(f"start {epoch} {int(resumed)}", flush=True)

    def on_batch(self, *, epoch: int, done: int, total: int) -> None:
        print(f"batch {epoch} {done} {total}", flush=True)

    def on_epoch(self, row: dict) -> None:
        print(f"epoch {row['epoch']}", flush=True)

    def on_phase(self, phase: str) -> None:
        print(f"phase {phase}", flush=True)


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    sys.exit(run_job(spec, sys.argv[2], observer=PrintingObserver()).exit_code)
