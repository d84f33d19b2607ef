"""Bad input: exit code 2, one line on stderr naming the file and the problem, no store."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import VA_TRIALS, leftovers

TRAIN = "annotations/VA_Set/Train_Set"
VALID = "annotations/VA_Set/Validation_Set"


def make_tree(root: Path) -> Path:
    """A small valid tree: 2 train trials, 1 validation trial, 1 test trial, 2 modalities."""
    rng = np.random.default_rng(0)
    for folder, trials in ((TRAIN, ["1-30-640x360", "2-30-640x360"]), (VALID, ["3-30-640x360"])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for trial in trials:
            lines = "".join(f"{v:.3f},{a:.3f}\n" for v, a in rng.uniform(-1, 1, (40, 2)))
            (root / folder / f"{trial}.txt").write_text("valence,arousal\n" + lines)
    for modality, dim in (("visual", 4), ("mfcc", 3)):
        (root / "features" / modality).mkdir(parents=True, exist_ok=True)
        for trial in ("1-30-640x360", "2-30-640x360", "3-30-640x360", "4-30-640x360"):
            np.save(
                root / "features" / modality / f"{trial}.npy",
                rng.normal(size=(40, dim)).astype(np.float32),
            )
    return root


def _replace_annotation(text: str) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        path = root / TRAIN / "1-30-640x360.txt"
        path.write_text(text)
        return str(path)

    return mutate


def _set_line(line_no: int, line: str) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        path = root / TRAIN / "2-30-640x360.txt"
        lines = path.read_text().splitlines()
        lines[line_no - 1] = line
        path.write_text("\n".join(lines) + "\n")
        return f"{path}:{line_no}"

    return mutate


def _save_feature(modality: str, trial: str, values: np.ndarray) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        path = root / "features" / modality / f"{trial}.npy"
        np.save(path, values)
        return str(path)

    return mutate


def _duplicate_feature(root: Path) -> str:
    path = root / "features/mfcc/1-30-640x360.csv"
    path.write_text("1,2,3\n" * 40)
    return "1-30-640x360"


def _two_partitions(root: Path) -> str:
    shutil.copy(root / TRAIN / "1-30-640x360.txt", root / VALID / "1-30-640x360.txt")
    return "1-30-640x360"


def _unreadable_npy(root: Path) -> str:
    path = root / "features/visual/2-30-640x360.npy"
    path.write_bytes(b"this is not an npy file")
    return str(path)


def _directory_instead_of_file(root: Path) -> str:
    path = root / TRAIN / "2-30-640x360.txt"
    path.unlink()
    path.mkdir()
    return str(path)


def _escaping_name(root: Path) -> str:
    (root / TRAIN / "1-30-640x360.txt").rename(root / TRAIN / "bad name.txt")
    return "bad name"


INGEST_CASES = {
    "missing header": (_replace_annotation("0.1,0.2\n0.3,0.4\n"), "first line must be the header"),
    "reordered header": (_replace_annotation("arousal,valence\n0.1,0.2\n"), "'arousal,valence'"),
    "empty annotation": (_replace_annotation(""), "empty annotation file"),
    "header only": (_replace_annotation("valence,arousal\n"), "no frames after the header"),
    "non-numeric value": (_set_line(5, "0.1,abc"), "arousal 'abc' is not a number"),
    "value outside range": (_set_line(7, "1.7,0.2"), "valence 1.7 is outside [-1, 1]"),
    "three values": (_set_line(3, "0.1,0.2,0.3"), "expected 2 values"),
    "rows far fewer than frames": (
        _save_feature("visual", "1-30-640x360", np.zeros((5, 4), np.float32)),
        "cover far fewer than the trial's 40 frames",
    ),
    "nan in features": (
        _save_feature("mfcc", "2-30-640x360", np.full((40, 3), np.nan, np.float32)),
        "row 0 holds NaN or inf",
    ),
    "inf in features": (
        _save_feature(
            "mfcc",
            "3-30-640x360",
            np.where(np.arange(120).reshape(40, 3) == 61, np.inf, 0).astype(np.float32),
        ),
        "row 20 holds NaN or inf",
    ),
    "dimension differs": (
        _save_feature("visual", "3-30-640x360", np.zeros((40, 5), np.float32)),
        "5 values per row, but visual has 4",
    ),
    "duplicate trial": (_duplicate_feature, "duplicate trial 1-30-640x360"),
    "trial in two partitions": (_two_partitions, "is in both Train_Set"),
    "unreadable file": (_unreadable_npy, "cannot read"),
    "directory instead of file": (_directory_instead_of_file, "cannot read"),
    "name leaving its directory": (_escaping_name, "trial name 'bad name' is not allowed"),
}


def assert_clean_failure(result, parent: Path, store_name: str, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("affvx: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert leftovers(parent, store_name) == []


@pytest.mark.parametrize("case", INGEST_CASES)
def test_bad_ingest_input(case: str, tmp_path: Path, cli) -> None:
    mutate, message = INGEST_CASES[case]
    root = make_tree(tmp_path / "tree")
    where = mutate(root)
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert_clean_failure(result, tmp_path, "store", where, message)


def test_the_valid_tree_ingests(tmp_path: Path, cli) -> None:
    """The control for the cases above: without a mutation the same tree is accepted."""
    result = cli("data", "ingest-affwild2", make_tree(tmp_path / "tree"), tmp_path / "store")
    assert result.exit_code == 0, result.stderr


def test_unknown_modality(tmp_path: Path, cli) -> None:
    root = make_tree(tmp_path / "tree")
    result = cli(
        "data", "ingest-affwild2", root, tmp_path / "store", "--modalities", "visual,faces"
    )
    assert_clean_failure(result, tmp_path, "store", "unknown modality 'faces'", "has mfcc, visual")


def test_unknown_audio_feature(tmp_path: Path, cli) -> None:
    root = make_tree(tmp_path / "tree")
    (root / "wav").mkdir()
    result = cli(
        "data",
        "ingest-affwild2",
        root,
        tmp_path / "store",
        "--wav-dir",
        root / "wav",
        "--audio-features",
        "pitch",
    )
    assert_clean_failure(
        result, tmp_path, "store", "unknown audio feature 'pitch'", "egemaps, mfcc"
    )


def test_existing_store_path(tmp_path: Path, cli) -> None:
    root = make_tree(tmp_path / "tree")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "keep.txt").write_text("mine")
    result = cli("data", "ingest-affwild2", root, tmp_path / "store")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["keep.txt"]
    result = cli("data", "synth", tmp_path / "store", "--trials", "8", "--scale", "0.01")
    assert result.exit_code == 2 and f"{tmp_path / 'store'}: already exists" in result.stderr


def _trial_list_with(tmp_path: Path, extra_line: str) -> Path:
    lines = VA_TRIALS.read_text().splitlines()[:12] + [extra_line]
    path = tmp_path / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "extra_line, message",
    [
        ("../x,Train_Set,x,100,30.0,100", "trial name '../x' is not allowed"),
        (
            "10-60-1280x720,Train_Set,10-60-1280x720,2501,30.0,2502",
            "duplicate trial 10-60-1280x720",
        ),
        ("zz,Holdout,zz,100,30.0,100", "unknown partition 'Holdout'"),
        ("zz,Train_Set,zz,many,30.0,100", "frames 'many' is not a whole number"),
    ],
)
def test_bad_trial_list(tmp_path: Path, cli, extra_line: str, message: str) -> None:
    path = _trial_list_with(tmp_path, extra_line)
    result = cli("data", "synth", tmp_path / "store", "--from-list", path, "--scale", "0.01")
    assert_clean_failure(result, tmp_path, "store", f"{path}:13", message)


def test_trial_list_without_required_header(tmp_path: Path, cli) -> None:
    path = tmp_path / "list.csv"
    path.write_text("name,split\nx,Train_Set\n")
    result = cli("data", "synth", tmp_path / "store", "--from-list", path)
    assert_clean_failure(
        result,
        tmp_path,
        "store",
        str(path),
        "header lacks column(s) trial, partition, frames, fps",
    )


def test_more_folds_than_trials(small_store: Path, cli) -> None:
    result = cli("folds", small_store, "--protocol", "kfold", "--folds", "100")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--folds 100: more folds than the" in result.stderr
    result = cli("folds", small_store, "--protocol", "abaw2", "--folds", "40")
    assert result.exit_code == 2 and "more blocks than trials" in result.stderr
    result = cli("folds", small_store, "--folds", "1")
    assert result.exit_code == 2 and "at least 2 folds" in result.stderr


def test_damaged_store_file(small_store: Path, tmp_path: Path, cli) -> None:
    copy = shutil.copytree(small_store, tmp_path / "copy")
    labels = copy / "labels.arrow"
    labels.write_bytes(labels.read_bytes()[:100])
    for command in (["data", "info", copy], ["folds", copy]):
        result = cli(*command)
        assert result.exit_code == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert f"{labels}: damaged" in result.stderr and "Traceback" not in result.stderr


def test_missing_store(tmp_path: Path, cli) -> None:
    result = cli("data", "info", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "no feature store here" in result.stderr and "affvx data synth" in result.stderr


def test_usage_errors_are_one_line(cli, small_store: Path) -> None:
    result = cli("folds", small_store, "--protocol", "loso")
    assert result.exit_code == 2 and "unknown protocol 'loso'" in result.stderr
    result = cli("data", "info")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Missing argument" in result.stderr and "affvx data info --help" in result.stderr
    result = cli("data", "ingest-affwild2", "x", "y", "--rate", "mfcc")
    assert result.exit_code == 2 and "use MODALITY=HZ" in result.stderr
