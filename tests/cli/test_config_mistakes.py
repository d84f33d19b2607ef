"""Configuration mistakes (issue 9 §4): each is one line on stderr and exit status 2 with
nothing written, or is accepted with the one meaning that the config module documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from affvx.protocol import EXIT_INPUT

BASE = ("--folds", "2", "--epochs", "1")


def assert_refused(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("affvx: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def experiment_file(tmp_path: Path, store: Path, body: str) -> Path:
    path = tmp_path / "experiment.toml"
    path.write_text(f'store = "{store}"\n{body}\n')
    return path


def launch_with(cli, tmp_path: Path, store: Path, body: str, *flags: str):  # type: ignore[no-untyped-def]
    config = experiment_file(tmp_path, store, body)
    return cli("launch", "--config", config, "--run", tmp_path / "run", *BASE, *flags)


@pytest.mark.parametrize(
    "body, needles",
    [
        ("seeds = 3", ("seeds = 3 (one seed or 3 seeds?)", "seeds = [0] or [0, 1, 2]", '"0-2"')),
        ("emotions = 3", ("emotions = 3", 'emotions = ["valence", "arousal"]')),
        ("modalities = 3", ("modalities = 3", "give a list of sets")),
        ("modalities = [[1, 2]]", ("modality set [1, 2] is not a list of modality names",)),
        ('model = "lfan"', ("model = 'lfan' is not a table", "[model]")),
        ("seeds = [0.5]", ("seeds = [0.5]",)),
        ('[resources]\ntime_limit = "2x"', ("time_limit 2x: use e.g. 90s, 45m, 2h",)),
        (
            '[resources]\ntime_limit = "2h"\ntime_limit_min = 30',
            ("both time_limit and time_limit_min",),
        ),
        (
            "[backend.local]\nmax_parallel = 0",
            ("[backend.local] max_parallel = 0: give at least 1",),
        ),
    ],
)
def test_a_wrong_value_in_the_file_is_one_line(
    small_store: Path, tmp_path: Path, cli, body: str, needles: tuple[str, ...]
) -> None:
    result = launch_with(cli, tmp_path, small_store, body)
    assert_refused(result, "experiment.toml", *needles)
    assert not (tmp_path / "run").exists()


def test_a_flat_list_of_modalities_is_refused_with_both_spellings(
    small_store: Path, tmp_path: Path, cli
) -> None:
    result = launch_with(cli, tmp_path, small_store, 'modalities = ["visual", "mfcc"]')
    assert_refused(
        result,
        'modalities = ["visual", "mfcc"] is ambiguous',
        '[["visual", "mfcc"]] for one set',
        '[["visual"], ["mfcc"]] for a set each',
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "body, cells",
    [
        (
            'modalities = [["visual", "mfcc"]]',
            {("valence", "visual+mfcc"), ("arousal", "visual+mfcc")},
        ),
        ('modalities = ["visual,mfcc"]', {("valence", "visual+mfcc"), ("arousal", "visual+mfcc")}),
        ('modalities = "visual,mfcc"', {("valence", "visual+mfcc"), ("arousal", "visual+mfcc")}),
        ('modalities = ["visual"]', {("valence", "visual"), ("arousal", "visual")}),
        (
            'modalities = ["visual", "visual,mfcc"]',
            {
                ("valence", "visual"),
                ("arousal", "visual"),
                ("valence", "visual+mfcc"),
                ("arousal", "visual+mfcc"),
            },
        ),
        ('emotions = "valence"\nmodalities = [["visual"]]', {("valence", "visual")}),
        (
            'emotions = "valence,arousal"\nmodalities = [["mfcc"]]',
            {("valence", "mfcc"), ("arousal", "mfcc")},
        ),
    ],
)
def test_the_documented_spellings_plan_the_cells_they_say(
    small_store: Path, tmp_path: Path, body: str, cells: set[tuple[str, str]]
) -> None:
    from affvx.orchestrator.launch import prepare

    config = experiment_file(tmp_path, small_store, body)
    jobs = prepare(
        flags={"folds": 2},
        config_file=config,
        run_path=tmp_path / "run",
        resume=False,
        note=lambda m: None,
    ).jobs
    assert {(job.emotion, job.modality_set) for job in jobs} == cells
    assert len(jobs) == 2 * len(cells)


def test_seeds_as_a_range_string_like_the_flag(small_store: Path, tmp_path: Path) -> None:
    from affvx.orchestrator.config import resolve_config

    config = experiment_file(tmp_path, small_store, 'seeds = "0-2"')
    assert resolve_config(flags={}, config_file=config).seeds == (0, 1, 2)


def test_max_parallel_zero_is_refused_before_anything_is_written(
    small_store: Path, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE, "--max-parallel", "0")
    assert_refused(result, "--max-parallel 0: give at least 1")
    assert not run.exists()


def test_bare_affvx_prints_its_help_and_exits_0(cli) -> None:
    result = cli()
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: affvx")
    assert "Commands:" in result.stdout and len(result.stdout.splitlines()) > 10
    result = cli("data")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: affvx data") and "ingest-affwild2" in result.stdout


def test_ctrl_c_on_launch_says_how_to_continue(
    small_store: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affvx.orchestrator import launch

    def interrupted(*args):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "follow", interrupted)
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE, "--modalities", "visual")
    assert result.exit_code == 130
    last = result.stderr.strip().splitlines()[-1]
    assert f"continue with `affvx launch --resume --run {run}`" in last, result.stderr
    assert (run / "experiment.toml").exists()


def test_ctrl_c_before_the_run_exists_says_only_interrupted(
    small_store: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affvx.orchestrator import launch

    def interrupted(**kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "prepare", interrupted)
    result = cli("launch", "--store", small_store, "--run", tmp_path / "run", *BASE)
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted before the run was written: nothing to continue"
    assert not (tmp_path / "run").exists()


def test_a_diverging_job_is_not_retried(small_store: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    result = cli(
        "launch",
        "--store",
        small_store,
        "--run",
        run,
        "--folds",
        "2",
        "--emotions",
        "valence",
        "--modalities",
        "visual",
        "--epochs",
        "2",
        "--lr",
        "1e12",
        "--max-retries",
        "2",
    )
    assert result.exit_code == 1, result.stderr
    for job_dir in (run / "jobs").iterdir():
        attempts = (job_dir / "attempts.jsonl").read_text().splitlines()
        state = json.loads((job_dir / "state.json").read_text())
        assert len(attempts) == 1, attempts  # deterministic: a retry would diverge again
        assert json.loads(attempts[0])["exit_code"] == EXIT_INPUT  # the job's own word
        assert state["state"] == "FAILED" and "lower the learning rate (--lr" in state["reason"]
    assert "lower the learning rate (--lr, or lr under [training]" in result.stderr


def test_a_bad_time_limit_on_launch_is_one_line(small_store: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE, "--time-limit", "2x")
    assert_refused(result, "--time-limit 2x: use e.g. 90s, 45m, 2h or 1h30m")
    assert not run.exists()


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("90s", 1.5),
        ("45m", 45.0),
        ("2h", 120.0),
        ("1h30m", 90.0),
        ("1.5h", 90.0),
        ("1d", 1440.0),
        ("120", 120.0),
        (120, 120.0),
    ],
)
def test_durations_and_plain_numbers_are_minutes(text: object, minutes: float) -> None:
    from affvx.orchestrator.config import parse_duration_min

    assert parse_duration_min(text) == minutes


@pytest.mark.parametrize("text", ["2x", "h", "-3", "0", "1e3", "", "2h-5m"])
def test_a_bad_duration_says_how_to_write_one(text: str) -> None:
    from affvx.orchestrator.config import parse_duration_min
    from affvx.orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--time-limit {re.escape(text)}: "):
        parse_duration_min(text)


def test_a_duration_in_the_file_is_saved_as_minutes(small_store: Path, tmp_path: Path) -> None:
    from affvx.orchestrator.config import build_config, resolve_config, to_toml

    config = experiment_file(tmp_path, small_store, '[resources]\ntime_limit = "1h30m"')
    resolved = resolve_config(flags={}, config_file=config)
    assert resolved.resources.time_limit_min == 90.0
    saved = to_toml(resolved)
    assert "time_limit_min = 90.0" in saved and "time_limit =" not in saved
    from affvx.orchestrator.config import tomllib

    assert build_config(tomllib.loads(saved)).resources == resolved.resources
    # a saved run (minutes) resumed with a --config that spells a duration: the later one wins
    again = resolve_config(
        flags={}, config_file=config, saved={"resources": {"time_limit_min": 5}}
    )
    assert again.resources.time_limit_min == 90.0


@pytest.mark.parametrize(
    "body, needles",
    [
        ('[backend.ray]\nresources = ["oops"]', ("resources 'oops': write NAME=AMOUNT",)),
        ('[backend.ray]\nruntime_env = "x"', ("runtime_env = 'x'", "expected a table")),
        ("[backend.ray]\nnum_gpus = -0.5", ("num_gpus = -0.5: give at least 0",)),
    ],
)
def test_a_wrong_ray_setting_is_one_line(
    small_store: Path, tmp_path: Path, cli, body: str, needles: tuple[str, ...]
) -> None:
    result = launch_with(cli, tmp_path, small_store, body, "--backend", "ray")
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists()


def test_a_runtime_env_flag_that_is_no_json_object_is_one_line(
    small_store: Path, tmp_path: Path, cli
) -> None:
    result = launch_with(
        cli, tmp_path, small_store, "", "--backend", "ray", "--backend-option", "runtime_env=[1]"
    )
    assert_refused(result, "runtime_env='[1]': expected a JSON object")


@pytest.mark.parametrize(
    "flags, needles",
    [
        (("--gpus", "1.5"), ("--gpus 1.5: a job takes whole GPUs, or one share of one GPU",)),
        (("--gpus", "0.3"), ("--gpus 0.3: a share of a GPU is 1/N",)),
        (("--gpus", "0.5", "--jobs-per-gpu", "4"), ("--gpus 0.5 is 2 jobs per GPU", "give one")),
        (("--jobs-per-gpu", "0"), ("--jobs-per-gpu 0: give at least 1",)),
        (("--gpus", "2", "--jobs-per-gpu", "2"), ("shares one GPU among jobs of one GPU each",)),
        (("--cuda-graphs", "maybe"), ("--cuda-graphs maybe: choose auto, on, off",)),
        (("--gpus", "0.25"), ("asks for 1 GPUs; this machine has 0",)),  # no GPU here
    ],
)
def test_a_wrong_gpu_request_is_one_line_before_anything_is_written(
    small_store: Path, tmp_path: Path, cli, flags: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    run = tmp_path / "run"
    result = cli("launch", "--store", small_store, "--run", run, *BASE, *flags)
    assert_refused(result, *needles)
    assert not run.exists()


def test_a_share_of_a_gpu_in_the_file_is_saved_as_jobs_per_gpu(
    small_store: Path, tmp_path: Path
) -> None:
    from affvx.orchestrator.config import build_config, resolve_config, to_toml, tomllib

    config = experiment_file(tmp_path, small_store, "[resources]\ngpus = 0.25")
    resolved = resolve_config(flags={}, config_file=config)
    assert (resolved.resources.gpus, resolved.resources.jobs_per_gpu) == (1, 4)
    assert resolved.resources.shares_gpu
    assert build_config(tomllib.loads(to_toml(resolved))).resources == resolved.resources
