"""A run directory moved together with its feature store resumes and collects where it lands;
a store that is not the run's own is refused in one line, before anything is written.

The grid: 2 folds x valence x visual = 2 tcn jobs of one short epoch, on copies of the small
store (tests move and replace them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.rundir import RunDir
from affvx.orchestrator.worker import run_worker
from affvx.protocol import EXIT_COMPLETE, EXIT_INPUT, EXIT_REQUEUE, TIME_LIMIT_S
from affvx.storage.format import read_fingerprint
from tests.orchestrator.test_launch_errors import assert_refused
from tests.support.runs import attempts, one_cell_run

DONE, STOPPED = "valence-visual-fold0-seed0", "valence-visual-fold1-seed0"


@pytest.fixture(scope="module")
def other_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store shaped like the small one, with other content (another seed)."""
    from affvx.storage.synth import SynthConfig, make_synthetic_store

    path = tmp_path_factory.mktemp("stores") / "other"
    return make_synthetic_store(path, SynthConfig(n_trials=24, scale=0.03, seed=8, visual_dim=16))


def new_run(store: Path, run: Path) -> RunDir:
    """The grid's run directory, created as `affvx launch` creates it; no job started."""
    return RunDir.open(one_cell_run(store, run, max_epochs=1, window=64, hop=32))


def stop_after_first_checkpoint(run: Path, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One attempt of `job_id` whose time is up at once: it checkpoints and stops."""
    with monkeypatch.context() as patch:
        patch.setenv(TIME_LIMIT_S, "1")  # this process is older than that: no time left
        assert run_worker(run, job_id) == EXIT_REQUEUE
    assert (run / "jobs" / job_id / "checkpoint.pt").exists()


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_run_moved_with_its_store_resumes_and_collects(
    small_store: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tmp_path / "scratch"
    shutil.copytree(small_store, before / "aw2-store")
    run = new_run(before / "aw2-store", before / "runs" / "r1").path
    assert run_worker(run, DONE) == EXIT_COMPLETE
    stop_after_first_checkpoint(run, STOPPED, monkeypatch)

    (tmp_path / "elsewhere").mkdir()
    after = Path(shutil.move(before, tmp_path / "elsewhere" / "scratch"))
    moved = after / "runs" / "r1"
    result = cli("launch", "--resume", "--run", moved)
    assert result.exit_code == 0, result.stderr
    assert [a["exit_reason"] for a in attempts(moved / "jobs" / DONE)] == ["completed"]
    assert [a["exit_reason"] for a in attempts(moved / "jobs" / STOPPED)] == [
        "preempted",
        "completed",
    ]
    # the checkpoint made before the move was taken up, not refused as another experiment's
    assert json.loads((moved / "jobs" / STOPPED / "progress.json").read_text())["resumed"]
    assert json.loads((moved / "store.json").read_text())["absolute"] == str(
        (after / "aw2-store").resolve()
    )
    result = cli("collect", moved)
    assert result.exit_code == 0, result.stderr
    assert (moved / "report" / "summary.csv").exists()


def test_a_replaced_store_is_refused_in_one_line_with_nothing_written(
    small_store: Path, other_store: Path, tmp_path: Path, cli
) -> None:
    store = tmp_path / "aw2-store"
    shutil.copytree(small_store, store)
    run = new_run(store, tmp_path / "runs" / "r1").path
    fingerprint, moved_copy = read_fingerprint(store), tmp_path / "elsewhere" / "aw2-store"
    shutil.copytree(store, moved_copy)
    shutil.rmtree(store)
    shutil.copytree(other_store, store)
    written = files_of(run)

    result = cli("launch", "--resume", "--run", run)
    assert_refused(result, f"fingerprint {fingerprint}", "../../aw2-store", "--store PATH")
    assert_refused(cli("launch", "--resume", "--run", run, "--store", other_store), fingerprint)
    with pytest.raises(ConfigError, match=f"fingerprint {fingerprint}"):
        RunDir.open(run).config  # noqa: B018  (what collect and the workers read)
    assert files_of(run) == written
    assert cli("status", run, "--json").exit_code == 0  # status never needs the store

    # a worker started anyway fails on bad input, without a retry, saying why
    assert run_worker(run, DONE) == EXIT_INPUT
    assert f"fingerprint {fingerprint}" in attempts(run / "jobs" / DONE)[-1]["reason"]
    # the run's own store is taken wherever it is now
    given = cli("launch", "--resume", "--run", run, "--store", moved_copy, "--dry-run")
    assert given.exit_code == 0, given.stderr


@pytest.mark.slow
def test_a_run_made_before_store_json_still_resumes(
    small_store: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = new_run(small_store, tmp_path / "runs" / "old").path
    (run / "store.json").unlink()  # as affvx wrote runs before: experiment.toml's path alone
    stop_after_first_checkpoint(run, STOPPED, monkeypatch)
    result = cli("launch", "--resume", "--run", run)
    assert result.exit_code == 0, result.stderr
    assert json.loads((run / "jobs" / STOPPED / "progress.json").read_text())["resumed"]
    assert RunDir.open(run).store_record()["fingerprint"] == read_fingerprint(small_store)
