"""Checkpoints that survive a crash at any moment and are never loaded when damaged.

A checkpoint is one `torch.save` file of plain containers and tensors under fixed keys (it
loads with `torch.load(weights_only=True)`), plus an `integrity` digest over its content. It
is written to a temporary file, fsynced and renamed over `checkpoint.pt`; the checkpoint it
replaces is kept as `checkpoint.prev.pt`. Loading tries the newest first and falls back to the
previous one (then to a fresh start) when a file is truncated or its digest does not match.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from affvx.storage.atomic import atomic_file, fsync_path
from affvx.trainers.errors import CheckpointMismatchError

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def save_checkpoint(job_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` as the latest checkpoint, keeping the one it replaces as the previous."""
    payload = dict(state, format_version=FORMAT_VERSION)
    payload["integrity"] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    latest, previous = job_dir / LATEST, job_dir / PREVIOUS
    # one directory fsync, after the last rename, makes all three renames durable
    with atomic_file(job_dir / ".checkpoint.next", "wb", sync_directory=False) as handle:
        handle.write(buffer.getbuffer())
    if latest.exists():
        os.replace(latest, previous)
    os.replace(job_dir / ".checkpoint.next", latest)
    fsync_path(job_dir)


def load_checkpoint(job_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The newest intact checkpoint of this configuration, or None for a fresh start.

    A damaged file is skipped with a warning. An intact checkpoint made under another
    configuration raises CheckpointMismatchError: resuming it would mix two experiments.
    """
    for name in (LATEST, PREVIOUS):
        path = job_dir / name
        if not path.exists():
            continue
        state = _read_intact(path)
        if state is None:
            continue
        if state.get("config_hash") != config_hash:
            raise CheckpointMismatchError(
                f"{path}: made by another configuration (hash {state.get('config_hash')}, this "
                f"job's is {config_hash}); use a new output directory or delete the checkpoint"
            )
        return state
    return None


def _read_intact(path: Path) -> dict[str, Any] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, ...: all mean "damaged"
        log.warning("%s is damaged (%s); not loading it", path, str(error).splitlines()[0][:200])
        return None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        log.warning(
            "%s is not an affvx checkpoint of format %d; not loading it", path, FORMAT_VERSION
        )
        return None
    stored = state.pop("integrity", None)
    if stored != content_digest(state):
        log.warning("%s fails its integrity check (changed on disk); not loading it", path)
        return None
    return state


def content_digest(value: Any) -> str:
    """SHA-256 over a nested structure of containers, scalars and tensors, in a fixed order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            if key == "integrity":
                continue
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())
