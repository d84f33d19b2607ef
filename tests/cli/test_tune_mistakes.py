"""`affvx tune` mistakes: each is one line on stderr naming the problem and the fix, exit
status 2, and nothing written. And the dry run's plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_config_mistakes import assert_refused

BASE = ("--folds", "2", "--epochs", "1", "--emotions", "valence", "--modalities", "visual")


def tune_with(cli, tmp_path: Path, store: Path, body: str, *flags: object):  # type: ignore[no-untyped-def]
    config = tmp_path / "experiment.toml"
    config.write_text(f'store = "{store}"\n{body}\n')
    return cli("tune", "--config", config, "--run", tmp_path / "run", *BASE, *flags)


@pytest.mark.parametrize(
    "body, needles",
    [
        (
            "[tune.space]\nlearning_rate = {low = 1e-4, high = 1e-2}",
            ("[tune.space] learning_rate: unknown parameter", "tunable: lr, weight_decay"),
        ),
        (
            "[tune.space]\nlr = {low = 1e-2, high = 1e-4, log = true}",
            ("[tune.space] lr: low = 0.01 must be below high = 0.0001",),
        ),
        (
            "[tune.space]\nlr = {low = 1e-3, high = 1e-3}",
            ("[tune.space] lr: low = 0.001 must be below high = 0.001",),
        ),
        (
            "[tune.space]\nweight_decay = {low = 0.0, high = 0.1, log = true}",
            ("[tune.space] weight_decay: a log range needs low > 0",),
        ),
        ("[tune.space]\nwindow = {low = 100.5, high = 300}", ("window is an integer",)),
        ("[tune.space]\nchannels = {choices = []}", ("choices must be a non-empty list",)),
        ('[tune]\npruner = "hyperband"', ("--pruner hyperband: choose from wilcoxon",)),
        ("[tune]\nspace = 3", ("[tune] space = 3: write a table, [tune.space]",)),
    ],
)
def test_a_bad_search_space_is_one_line_and_writes_nothing(
    small_store: Path, tmp_path: Path, cli, body: str, needles: tuple[str, ...]
) -> None:
    result = tune_with(cli, tmp_path, small_store, body)
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, needles",
    [
        (("--trials", "0"), ("--trials 0: give at least 1 trial",)),
        (("--parallel", "0"), ("--parallel 0",)),
        (("--sampler", "grid"), ("--sampler grid: choose from tpe, random",)),
        (
            ("--storage", "sqlite:////no/such/directory/tune.db"),
            ("--storage sqlite:////no/such/directory/tune.db: cannot open it", "sqlite:///"),
        ),
        (
            ("--storage", "nosuchdb://user@host/db"),
            ("--storage nosuchdb://user@host/db: cannot open it",),
        ),
        (("--storage", "/no/such/directory/journal.log"), ("no directory /no/such/directory",)),
    ],
)
def test_a_bad_tune_flag_is_one_line_and_writes_nothing(
    small_store: Path, tmp_path: Path, cli, flags: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    result = tune_with(cli, tmp_path, small_store, "", *flags)
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists()


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_resume_with_other_grid_options_is_refused_and_writes_nothing(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    args = ("--store", small_store, "--run", run, *BASE, "--model", "tcn", "--trials", "1")
    made = cli("tune", *args)
    assert made.exit_code == 0, made.stderr
    before = tree(run)
    assert_refused(
        cli("tune", "--resume", "--run", run, "--folds", "3"),
        "is a run of another experiment (folds: 2 -> 3)",
        "--run NEW_DIR",
    )
    assert_refused(
        cli("tune", "--resume", "--run", run, "--pruner", "median"),
        "tune.pruner: 'wilcoxon' -> 'median'",
    )
    assert_refused(
        cli("launch", "--resume", "--run", run), "is a tuning run", "affvx tune --resume"
    )
    assert tree(run) == before
    # the budget is not part of the experiment: more trials continue the same study
    more = cli("tune", "--resume", "--run", run, "--trials", "2")
    assert more.exit_code == 0, more.stderr
    assert len(list((run / "tuning" / "candidates").iterdir())) == 2


def test_tune_resume_on_a_launch_run_is_refused(reference_run: Path, cli) -> None:
    assert_refused(
        cli("tune", "--resume", "--run", reference_run),
        "is a run of `affvx launch`, not a tuning run",
    )


def test_the_dry_run_prints_every_study_and_the_space_and_writes_nothing(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli(
        "tune",
        "--store",
        small_store,
        "--run",
        run,
        "--trials",
        "200",
        "--folds",
        "6",
        "--dry-run",
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for study in ("affvx-valence-visual", "affvx-arousal-visual+mfcc+vggish"):
        assert study in out
    assert out.count("1200") == 4  # 200 trials x 6 folds, in each of the 4 studies
    for name in ("lr", "weight_decay", "dropout", "window", "channels"):
        assert f"│ {name} " in out
    assert "valence-visual-fold0-seed0-cand0" in out
    assert not run.exists()
