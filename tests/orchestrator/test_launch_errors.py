"""Bad launches: exit code 2, one line naming the problem, nothing submitted or written."""

from __future__ import annotations

from pathlib import Path

import pytest

BASE = ("--folds", "3", "--modalities", "visual", "--epochs", "1")


def assert_refused(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("affvx: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--backend", "kubernetes"), "unknown backend 'kubernetes': choose from local"),
        (("--emotions", "valence,dominance"), "unknown emotion 'dominance'"),
        (("--modalities", "visual,faces"), "unknown modality 'faces'"),
        (("--folds", "1"), "at least 2 folds"),
        (("--folds", "500"), "--folds 500"),
        (("--model", "bert"), "unknown model 'bert'"),
        (("--seeds", "x"), "use numbers and ranges"),
    ],
)
def test_bad_flags(
    small_store: Path, tmp_path: Path, cli, args: tuple[str, ...], message: str
) -> None:
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE, *args)
    assert_refused(result, message)
    assert not run.exists()


@pytest.mark.parametrize("command", ["launch", "tune"])
@pytest.mark.parametrize(("flag", "what"), [("--gpus", "GPUs"), ("--cpus", "CPUs")])
def test_more_than_this_machine_has_is_refused_before_the_run_is_written(
    small_store: Path, tmp_path: Path, cli, command: str, flag: str, what: str
) -> None:
    """The local backend's limits are checked before anything is written (a dry run too)."""
    run = tmp_path / "run"
    for dry_run in ((), ("--dry-run",)):
        result = cli(command, "--store", small_store, "--run", run, *BASE, flag, "64", *dry_run)
        assert_refused(result, f"asks for 64 {what}", flag)
        assert not run.exists()


def test_mps_without_a_gpu_is_one_note_and_the_launch_goes_on(
    small_store: Path, tmp_path: Path, cli
) -> None:
    result = cli(
        "launch", "--store", small_store, "--run", tmp_path / "run", *BASE, "--mps", "--dry-run"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("--mps:") == 1 and "the jobs run without MPS" in result.stderr


def test_missing_store(tmp_path: Path, cli) -> None:
    result = cli("launch", "--store", tmp_path / "nowhere", "--run", tmp_path / "run", *BASE)
    assert_refused(result, "no feature store here")
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_cannot_be_written(small_store: Path, tmp_path: Path, cli) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli("launch", "--store", small_store, "--run", blocker / "run", *BASE)
    assert_refused(result, "cannot write the run directory")


def test_a_run_of_another_experiment_is_refused(small_store: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    assert cli("launch", "--store", small_store, "--run", run, *BASE, "--dry-run").exit_code == 0
    assert not run.exists()  # a dry run writes nothing
    from affvx.orchestrator.launch import prepare

    plan = prepare(
        flags={
            "store": str(small_store),
            "folds": 3,
            "modalities": (("visual",),),
            "training": {"max_epochs": 1},
        },
        config_file=None,
        run_path=run,
        resume=False,
        note=lambda m: None,
    )
    plan.run.create(plan.config, plan.folds, plan.jobs)
    before = sorted(p.name for p in run.rglob("*"))
    result = cli("launch", "--run", run, "--epochs", "5")
    assert_refused(result, "is a run of another experiment", "max_epochs: 1 -> 5")
    result = cli("launch", "--run", run, "--model", "gru")
    assert_refused(result, "is a run of another experiment", "'lfan' -> 'gru'")
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing submitted, nothing written


def test_a_directory_that_is_not_a_run(small_store: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = cli("launch", "--store", small_store, "--run", tmp_path / "run", *BASE)
    assert_refused(result, "is not an affvx run")
    result = cli("status", tmp_path / "run")
    assert_refused(result, "not an affvx run")


def test_resume_without_a_run(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(cli("launch", "--resume"), "no run under runs/")
    assert_refused(cli("status"), "no run under runs/")
    assert_refused(cli("collect"), "no run under runs/")


def test_bad_config_file(small_store: Path, tmp_path: Path, cli) -> None:
    config = tmp_path / "experiment.toml"
    config.write_text(f'store = "{small_store}"\nfolds = "six"\n')
    assert_refused(
        cli("launch", "--config", config, "--run", tmp_path / "r"),
        "folds = 'six' is not a valid value",
    )
    config.write_text(f'store = "{small_store}"\n[training]\nlearning_rate = 0.1\n')
    assert_refused(
        cli("launch", "--config", config, "--run", tmp_path / "r"),
        "unknown setting [training] 'learning_rate'",
    )
    config.write_text("store = \n")
    assert_refused(cli("launch", "--config", config, "--run", tmp_path / "r"), "not valid TOML")


def test_config_file_and_flags_resolve_in_order(small_store: Path, tmp_path: Path, cli) -> None:
    config = tmp_path / "experiment.toml"
    config.write_text(
        f'store = "{small_store}"\nfolds = 4\nemotions = ["arousal"]\nmodalities = [["visual"], ["mfcc"]]\n'
        "[training]\nmax_epochs = 7\nlr = 0.001\n"
    )
    result = cli(
        "launch", "--config", config, "--run", tmp_path / "r", "--folds", "3", "--dry-run"
    )
    assert result.exit_code == 0, result.stderr
    assert "plan: 6 jobs" in result.stdout  # 3 folds (flag beats file) x 1 emotion x 2 sets
    from affvx.orchestrator.config import resolve_config

    resolved = resolve_config(flags={"folds": 3}, config_file=config)
    assert (resolved.folds, resolved.training.max_epochs, resolved.training.lr) == (3, 7, 0.001)
    assert resolved.emotions == ("arousal",) and resolved.modalities == (("visual",), ("mfcc",))


def test_collect_before_any_job_finished_is_one_line_and_writes_nothing(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE)
    assert result.exit_code == 0, result.stderr
    for result_file in run.glob("jobs/*/result.json"):
        result_file.unlink()  # as if no job had finished yet
    result = cli("collect", run)
    assert_refused(result, "no job of this run has finished yet", "affvx status")
    assert not (run / "report").exists()
