"""This machine's CPUs and GPUs, claimed across processes.

Each slot (a CPU number, a GPU id) has a lock file; a job holds the flock of each of its slots
while it runs, so two launches on one machine share its CPUs and GPUs instead of each
claiming all of them. A GPU shared by several jobs (`claim_share`) is held with a shared
lock, which a whole claim (an exclusive lock) excludes, plus one of its share files, so that
at most N jobs run on it. A lock goes with the process that holds it: a launcher that dies frees
its slots at once. The locks are per user, under AFFVX_SLOT_DIR or the system's temporary
directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SLOT_DIR_VARIABLE = "AFFVX_SLOT_DIR"


def default_slot_dir() -> Path:
    configured = os.environ.get(SLOT_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"affvx-slots-{os.getuid()}"


class MachineSlots:
    """Claims slots of one kind ("cpu", "gpu") by flock on `directory`/<kind>-<slot>.lock.

    `claim(kind, candidates, wanted)` returns `wanted` of the candidates, each with the file
    descriptor that holds its lock, or None (holding nothing) when fewer are free;
    `claim_share(kind, candidates, shares)` returns one candidate that fewer than `shares`
    jobs hold, with its descriptors, or None; `release` lets them go.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_slot_dir()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def claim(self, kind: str, candidates: Sequence[T], wanted: int) -> dict[T, int] | None:
        held: dict[T, int] = {}
        for slot in candidates:
            if len(held) == wanted:
                break
            fd = self._try_lock(kind, slot)
            if fd is not None:
                held[slot] = fd
        if len(held) < wanted:
            self.release(held.values())
            return None
        return held

    def claim_share(
        self, kind: str, candidates: Sequence[T], shares: int
    ) -> tuple[T, list[int]] | None:
        """One of `shares` places on one of `candidates`, in order (put the least used
        first, so that jobs spread over the slots before they double up)."""
        for share in range(shares):
            for slot in candidates:
                whole = self._try_lock(kind, slot, shared=True)
                if whole is None:  # held whole by a job of its own
                    continue
                place = self._try_lock(f"{kind}-share", f"{slot}.{share}")
                if place is not None:
                    return slot, [whole, place]
                os.close(whole)
        return None

    @staticmethod
    def release(fds: Iterable[int]) -> None:
        for fd in fds:
            os.close(fd)  # closing the descriptor drops its flock

    def _try_lock(self, kind: str, slot: object, *, shared: bool = False) -> int | None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(slot))
        path = self.directory / f"{kind}-{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd
