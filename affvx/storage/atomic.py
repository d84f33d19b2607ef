"""Atomic, durable file and directory writes.

A reader (on this node or, after close-to-open, on another NFS client) sees either the old
content or the new one, never a torn file: data goes to a temporary file in the same
directory, is flushed and fsynced, and is renamed over the target; the directory is fsynced so
that the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (making a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the block exits without error.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically and durably."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Replace `path` with `obj` as indented JSON, atomically and durably."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
