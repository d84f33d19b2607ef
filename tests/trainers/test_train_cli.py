"""`affvx train`: one job in the foreground; bad settings give one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affvx.storage.writer import ModalitySpec, StoreWriter

FAST = ("--epochs", "2")


def test_train_both_emotions_writes_every_output(small_store: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "job"
    result = cli(
        "train",
        small_store,
        "--fold",
        "1",
        "--emotion",
        "both",
        "--modalities",
        "visual,vggish",
        "--model",
        "gru",
        "--out",
        out,
        *FAST,
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads((out / "result.json").read_text())
    assert (
        data["fold"] == 1 and data["model"] == "gru" and data["modalities"] == ["visual", "vggish"]
    )
    assert set(data["val_ccc"]) == {"valence", "arousal"} and data["epochs_run"] == 2
    assert 0 <= data["best_epoch"] < 2
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_ccc_valence",
        "val_ccc_arousal",
        "val_ccc_mean",
        "lr",
        "seconds",
    ]
    assert "valence" in result.stdout and "arousal" in result.stdout
    import pyarrow.parquet as pq

    predictions = pq.read_table(out / "predictions.parquet").to_pandas()
    assert set(predictions["partition"]) == {"Validation", "Test"}
    assert {"valence", "arousal", "valence_label", "arousal_label"} <= set(predictions.columns)


def test_time_limit_exits_with_the_requeue_status(small_store: Path, tmp_path: Path, cli) -> None:
    args = (
        "train",
        small_store,
        "--fold",
        "0",
        "--emotion",
        "valence",
        "--modalities",
        "visual",
        "--out",
        tmp_path / "job",
        "--epochs",
        "3",
        "--time-limit",
        "0.5s",
    )
    result = cli(*args)
    assert result.exit_code == 75
    assert "run the same command to resume" in result.stderr
    assert (tmp_path / "job" / "checkpoint.pt").exists() and not (
        tmp_path / "job" / "result.json"
    ).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "transformer"), "unknown model 'transformer'"),
        (("--modalities", "visual,faces"), "unknown modality 'faces'"),
        (("--emotion", "dominance"), "unknown emotion in dominance"),
        (("--fold", "6"), "fold 6 does not exist"),
        (("--device", "tpu"), "unknown device 'tpu'"),
    ],
)
def test_bad_settings(
    small_store: Path, tmp_path: Path, cli, args: tuple[str, ...], message: str
) -> None:
    base = {
        "--fold": "0",
        "--emotion": "valence",
        "--modalities": "visual",
        "--model": "tcn",
        "--device": "cpu",
    }
    base[args[0]] = args[1]
    flat = [item for pair in base.items() for item in pair]
    result = cli("train", small_store, *flat, "--out", tmp_path / "job", *FAST)
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "job" / "result.json").exists()


def unlabelled_training_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with StoreWriter(path, [ModalitySpec("visual", 4)]) as writer:
        for i in range(8):
            partition = "Validation_Set" if i >= 6 else "Train_Set"
            labels = rng.uniform(-1, 1, (80, 2)).astype(np.float32)
            if partition == "Train_Set":
                labels[:] = np.nan
            writer.add_trial(
                trial=f"t{i}",
                partition=partition,
                fps=30.0,
                labels=labels,
                features={"visual": rng.normal(size=(80, 4)).astype(np.float32)},
            )
    return path


def test_no_labels_in_the_training_partition(tmp_path: Path, cli) -> None:
    store = unlabelled_training_store(tmp_path / "store")
    out = tmp_path / "job"
    result = cli(
        "train",
        store,
        "--fold",
        "0",
        "--emotion",
        "arousal",
        "--modalities",
        "visual",
        "--out",
        out,
    )
    assert result.exit_code == 2
    assert "fold 0 has no labelled arousal frames in its training trials" in result.stderr
    failure = json.loads((out / "failure.json").read_text())
    assert failure["user_error"] and "no labelled arousal frames" in failure["reason"]
    assert not (out / "result.json").exists()


def test_a_diverging_loss_fails_the_job_with_its_reason(
    small_store: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "job"
    result = cli(
        "train",
        small_store,
        "--fold",
        "0",
        "--emotion",
        "valence",
        "--modalities",
        "visual",
        "--out",
        out,
        "--lr",
        "1e12",
        *FAST,
    )
    assert result.exit_code == 2  # bad input: the same settings diverge again
    last = result.stderr.strip().splitlines()[-1]  # after the epoch progress lines
    assert last.startswith("affvx: error: the training loss became nan")
    failure = json.loads((out / "failure.json").read_text())
    assert "lower the learning rate (--lr" in failure["reason"] and failure["user_error"]
    assert not (out / "result.json").exists()


def test_train_and_launch_default_to_the_same_model() -> None:
    import inspect

    from affvx.cli.train import train_command
    from affvx.orchestrator.config import ExperimentConfig

    default = inspect.signature(train_command).parameters["model"].default.default
    assert default == ExperimentConfig(store="any").model.name == "lfan"


@pytest.mark.parametrize("given, seconds", [("2", 120.0), ("90s", 90.0), ("1h30m", 5400.0)])
def test_time_limit_takes_the_durations_of_launch(
    small_store: Path,
    tmp_path: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
    seconds: float,
) -> None:
    from affvx.orchestrator import train

    seen = []

    def capture(spec, job_dir, observer=None):  # type: ignore[no-untyped-def]
        seen.append(spec.time_limit_s)
        raise SystemExit(0)

    monkeypatch.setattr(train, "train_one", capture)
    args = ("--fold", "0", "--emotion", "valence", "--modalities", "visual")
    cli("train", small_store, *args, "--out", tmp_path / "job", "--time-limit", given)
    assert seen == [seconds]


def test_a_bad_time_limit_is_one_line(small_store: Path, tmp_path: Path, cli) -> None:
    args = ("--fold", "0", "--emotion", "valence", "--modalities", "visual")
    result = cli("train", small_store, *args, "--out", tmp_path / "job", "--time-limit", "2x")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "affvx: error: --time-limit 2x: use e.g. 90s, 45m, 2h or 1h30m (a plain number is minutes)"
    )
    assert not (tmp_path / "job").exists()
