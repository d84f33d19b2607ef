"""A job for the warm starter's tests: `python -m tests.support.warm_job report|sleep [EXIT]`.

report: print how the process looks from inside (argv, cwd, environment, blocked signals,
session, open descriptors, /proc cmdline) as one JSON line, a line on stderr, exit EXIT.
sleep: print its pid, unblock the stop signals (default actions) and sleep until killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from affvx.protocol import STOP_SIGNALS


def blocked_signals() -> list[int]:
    with open("/proc/self/status") as status:
        mask = int(next(line for line in status if line.startswith("SigBlk:")).split()[1], 16)
    return [n for n in range(1, 65) if mask & (1 << (n - 1))]


def report() -> dict:
    with open("/proc/self/cmdline", "rb") as handle:
        cmdline = [part.decode() for part in handle.read().split(b"\0") if part]
    return {
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "mark": os.environ.get("WARM_TEST_MARK"),
        "blocked": blocked_signals(),
        "session_leader": os.getsid(0) == os.getpid(),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "cmdline": cmdline,
        "handlers_default": all(signal.getsignal(s) is signal.SIG_DFL for s in STOP_SIGNALS[:2]),
        "main": __name__,
    }


if __name__ == "__main__":
    if sys.argv[1] == "report":
        print(json.dumps(report()), flush=True)
        print("to stderr", file=sys.stderr)
        sys.exit(int(sys.argv[2]))
    print(os.getpid(), flush=True)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    time.sleep(600)
