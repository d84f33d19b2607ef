"""A job for the tests of packed jobs, run as `python -m tests.support.pack_member OUT EXIT`:
writes who started it and what it was told to OUT (JSON), then exits with EXIT."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    out, code = sys.argv[1:]
    names = ("AFFVX_SCHEDULER_JOB_ID", "AFFVX_CPUS", "AFFVX_GPU_MEMORY_FRACTION")
    told = {name: os.environ.get(name) for name in names}
    with open(out, "w") as handle:
        json.dump({"parent": os.getppid(), **told}, handle)
    sys.exit(int(code))
