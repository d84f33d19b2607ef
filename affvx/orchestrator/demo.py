"""The demo corpus: a default synthetic store, made once in the user's cache directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from affvx.storage.errors import StoreExistsError
from affvx.storage.synth import GENERATOR_VERSION, SynthConfig, make_synthetic_store


def demo_store_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "affvx" / f"demo-store-v{GENERATOR_VERSION}"


def ensure_demo_store(note: Callable[[str], None] = lambda message: None) -> Path:
    """The demo store's path, making it first if it does not exist yet."""
    path = demo_store_path()
    if not (path / "manifest.json").exists():
        note(f"making the demo corpus in {path} (first use, a few seconds)")
        try:
            make_synthetic_store(path, SynthConfig())
        except StoreExistsError:  # another launch made it at the same moment
            pass
    return path
