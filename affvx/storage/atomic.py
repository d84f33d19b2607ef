"""Atomic, durable file and directory writes.

A reader (on this node or, after close-to-open, on another NFS client) sees either the old
content or the new one, never a torn file: data goes to a temporary file in the same
directory, is flushed and fsynced, and is renamed over the target; the directory is fsynced so
that the rename itself survives a crash.

`tempfile` creates its files 0600 and its directories 0700 (private until renamed); every
function here ends with the modes a plain open() / mkdir() would have given under the process's
umask, so that other users of a shared cluster can read stores, runs and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK_PROBE_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask now, read without changing it where the kernel allows.

    Read at each call (not once at import) so that a umask the program sets later is obeyed, as
    open() obeys it. Linux (4.7+) reports it in /proc/self/status, which is thread-safe and
    changes nothing. Elsewhere os.umask() must set it to read it: it is set to 0o777 for that
    instant, so a file another thread creates meanwhile is stricter than meant, never looser,
    and the lock keeps two probes from restoring each other's value.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_PROBE_LOCK:
        umask = os.umask(0o777)
        os.umask(umask)
    return umask


def plain_file_mode() -> int:
    """The mode open(path, "w") gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def plain_directory_mode() -> int:
    """The mode mkdir() gives a new directory: 0777 less the umask."""
    return 0o777 & ~current_umask()


def _make_plain_directory(path: Path) -> None:
    # chmod() sets every bit, so keep the setgid bit mkdir() inherited from a group directory
    inherited = stat.S_IMODE(path.stat().st_mode) & stat.S_ISGID
    os.chmod(path, plain_directory_mode() | inherited)


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (making a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: Path | str, mode: str = "wb", *, durable: bool = True, sync_directory: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the block exits without error.

    On an exception the temporary file is removed and `path` is left as it was. `durable`
    False skips the fsyncs (still atomic for readers; after a crash the file may hold the old
    or no content): for files that are only a hint. `sync_directory` False leaves the
    directory's fsync to a caller that renames more in it and fsyncs it once at the end.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            os.fchmod(handle.fileno(), plain_file_mode())
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_directory:
        fsync_path(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str, *, durable: bool = True) -> None:
    """Replace `path` with `text` (UTF-8) atomically (and durably unless told not to)."""
    with atomic_file(path, "w", durable=durable) as handle:
        handle.write(text)


def atomic_write_json(path: Path | str, obj: Any, *, durable: bool = True) -> None:
    """Replace `path` with `obj` as indented JSON, atomically (and durably unless told not
    to: see atomic_file)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", durable=durable)


def create_exclusive_bytes(path: Path | str, data: bytes) -> bool:
    """Write `path` only if it does not exist yet; return False if it already did.

    The content is complete before the name appears (written under a temporary name and
    hard-linked into place), so a reader never sees a partial file and two writers racing for
    the same path cannot both win. Used for files that must never be overwritten.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), plain_file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        fsync_path(path.parent)
        return True
    finally:
        os.unlink(tmp_name)


@contextlib.contextmanager
def staged_directory(final: Path | str) -> Iterator[Path]:
    """Build a directory under a hidden sibling name and rename it to `final` on success.

    Raises FileExistsError if `final` exists before or appears during the build. On any
    exception the staging directory is removed, so a failed build leaves nothing behind.
    """
    final = Path(final)
    if final.exists() or final.is_symlink():
        raise FileExistsError(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.incomplete-", dir=final.parent))
    try:
        _make_plain_directory(staging)
        yield staging
        for child in staging.iterdir():
            if child.is_file():
                fsync_path(child)
        fsync_path(staging)
        if final.exists() or final.is_symlink():
            raise FileExistsError(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(final.parent)
