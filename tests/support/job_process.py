"""Run one training job in this process and print one line per event, for tests that kill it.

    python tests/support/job_process.py SPEC.json JOB_DIR [EPOCH BATCH]

Lines: `start E`, `batch E DONE TOTAL`, `epoch E`, `phase NAME`; exit status 0 (complete),
75 (checkpointed and stopped) or 1 (failed). With EPOCH BATCH the process stops itself
(SIGSTOP) right after printing `batch EPOCH BATCH ...`, so that a signal the test sends it then
lands exactly there; the test continues it with SIGCONT.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from affvx.trainers.job import run_job


class PrintingObserver:
    def __init__(self, freeze_at: tuple[int, int] | None = None) -> None:
        self.freeze_at = freeze_at

    def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None:
        print(f"start {epoch} {int(resumed)}", flush=True)

    def on_batch(self, *, epoch: int, done: int, total: int) -> None:
        print(f"batch {epoch} {done} {total}", flush=True)
        if (epoch, done) == self.freeze_at:
            os.kill(os.getpid(), signal.SIGSTOP)

    def on_epoch(self, row: dict) -> None:
        print(f"epoch {row['epoch']}", flush=True)

    def on_phase(self, phase: str) -> None:
        print(f"phase {phase}", flush=True)


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    freeze_at = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) == 5 else None
    observer = PrintingObserver(freeze_at)
    sys.exit(run_job(spec, sys.argv[2], observer=observer).exit_code)
