"""A job for the tests of packed jobs, run as `python -m tests.support.pack_member OUT EXIT`:
writes who started it (its parent's pid and command line) and what it was told to OUT (JSON),
then exits with EXIT. Other tests use it for any job whose parent matters."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    out, code = sys.argv[1:]
    names = ("AFFVX_SCHEDULER_JOB_ID", "AFFVX_CPUS", "AFFVX_GPU_MEMORY_FRACTION")
    told = {name: os.environ.get(name) for name in names}
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as cmdline:
        parent_command = cmdline.read().replace(b"\0", b" ").decode().strip()
    with open(out, "w") as handle:
        json.dump({"parent": os.getppid(), "parent_command": parent_command, **told}, handle)
    sys.exit(int(code))
