"""Shared fixtures: small synthetic stores and an in-process CLI runner."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("COLUMNS", "120")  # a fixed terminal width for rendered tables
# the local backend's machine-wide CPU claims: the test session's own, so that jobs of other
# processes on this machine (another test session, a real launch) do not change what tests see
os.environ.setdefault("AFFVX_SLOT_DIR", tempfile.mkdtemp(prefix="affvx-test-slots-"))

REPO = Path(__file__).resolve().parents[1]
VA_TRIALS = REPO / "affvx" / "storage" / "data" / "va_trials.csv"


@dataclass
class CliResult:
    """What one `affvx` invocation did."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run `affvx ARGS...` in this process and return its exit code and output."""
    from affvx.cli.main import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-trial synthetic store with short trials (read-only: tests must not change it)."""
    from affvx.storage.synth import SynthConfig, make_synthetic_store

    path = tmp_path_factory.mktemp("stores") / "small"
    return make_synthetic_store(path, SynthConfig(n_trials=24, scale=0.03, seed=7, visual_dim=16))


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic store (what the demo uses), built once per session."""
    from affvx.storage.synth import SynthConfig, make_synthetic_store

    path = tmp_path_factory.mktemp("stores") / "demo"
    return make_synthetic_store(path, SynthConfig())


@pytest.fixture(scope="session")
def reference_run(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test grid (tests/support/runs.py) run uninterrupted on the local backend and
    collected, under <tmp>/runs/ so that it is the newest run there."""
    import subprocess
    import sys

    from tests.support.runs import grid

    run = tmp_path_factory.mktemp("work") / "runs" / "reference"
    launch = subprocess.run(
        [sys.executable, "-m", "affvx", *grid(small_store, run, "--max-parallel", "2")],
        capture_output=True,
        text=True,
    )
    assert launch.returncode == 0, launch.stderr
    collect = subprocess.run(
        [sys.executable, "-m", "affvx", "collect", str(run)], capture_output=True, text=True
    )
    assert collect.returncode == 0, collect.stderr
    return run


def leftovers(parent: Path, name: str) -> list[Path]:
    """Anything a failed build of `parent / name` left behind (the store or a staging dir)."""
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
