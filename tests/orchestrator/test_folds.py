"""Folds: abaw2 reproduces seed 002 exactly; kfold balances frames and keeps videos together."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from affvx.orchestrator.folds import FoldTable, TrialSummary, make_folds
from affvx.storage.synth import SynthConfig, make_synthetic_store
from tests.conftest import VA_TRIALS


def real_trials() -> list[TrialSummary]:
    with open(VA_TRIALS) as handle:
        return [
            TrialSummary(
                r["trial"], r["partition"], r["video"], int(r["frames"]), int(r["labelled_frames"])
            )
            for r in csv.DictReader(handle)
        ]


# Seed 002's folds on the real list (research/seeds.md, "Fold sizes under that order"):
# validation block, its first and last trial, and its decoded video frames.
SEED_002 = [
    (0, 71, "1-30-1280x720", "video96", 346_229),
    (1, 71, "406", "99-30-720x720", 358_451),
    (2, 70, "312", "403", 285_063),
    (3, 70, "235", "31-30-1920x1080", 221_250),
    (4, 70, "155", "234", 285_171),
    (5, 70, "10-60-1280x720", "154", 472_198),
]


def test_abaw2_reproduces_the_seed_002_folds() -> None:
    trials = real_trials()
    frames = {t.trial: t.n_frames for t in trials}
    table = make_folds(trials, "abaw2", 6)
    official = sorted(t.trial for t in trials if t.partition == "Validation_Set")
    assert sorted(table.folds[0].validation) == official
    for fold, (index, size, first, last, n_frames) in zip(table.folds, SEED_002):
        assert fold.fold == index
        assert (len(fold.validation), fold.validation[0], fold.validation[-1]) == (
            size,
            first,
            last,
        )
        assert sum(frames[t] for t in fold.validation) == n_frames
        assert len(fold.train) == 422 - size and not set(fold.train) & set(fold.validation)
    # '-' sorts before '.', so `106-30-720x1280` precedes `106` as in seed 002's os.walk order
    block = table.folds[5].validation
    assert block.index("106-30-720x1280") < block.index("106")


def test_folds_json_on_a_store_from_the_real_list(tmp_path: Path, cli) -> None:
    store = make_synthetic_store(
        tmp_path / "s", SynthConfig(trial_list=VA_TRIALS, scale=0.005, visual_dim=2)
    )
    result = cli("folds", store, "--protocol", "abaw2", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["protocol"] == "abaw2" and len(data["folds"]) == 6
    assert [f["n_val_trials"] for f in data["folds"]] == [71, 71, 70, 70, 70, 70]
    fold0 = data["folds"][0]
    assert set(fold0) >= {
        "fold",
        "validation",
        "train",
        "n_val_trials",
        "n_val_frames",
        "n_val_labelled_frames",
    }
    with open(VA_TRIALS) as handle:
        official = sorted(
            r["trial"] for r in csv.DictReader(handle) if r["partition"] == "Validation_Set"
        )
    assert sorted(fold0["validation"]) == official
    assert 0 < fold0["n_val_labelled_frames"] <= fold0["n_val_frames"]
    assert FoldTable.from_json(data).folds[3].validation == tuple(data["folds"][3]["validation"])


def test_abaw2_on_other_sizes_puts_the_remainder_on_the_last_block() -> None:
    trials = [TrialSummary(f"t{i:02d}", "Train_Set", f"t{i:02d}", 10, 10) for i in range(23)]
    trials += [TrialSummary("v", "Validation_Set", "v", 10, 10)]
    table = make_folds(trials, "abaw2", 6)
    assert [len(f.validation) for f in table.folds] == [1, 7, 4, 4, 4, 4]


def test_kfold_keeps_videos_together_balances_frames_and_is_seeded() -> None:
    trials = real_trials()
    table = make_folds(trials, "kfold", 5, seed=1)
    pooled = {t.trial: t for t in trials if t.partition != "Test_Set"}
    held = [t for f in table.folds for t in f.validation]
    assert sorted(held) == sorted(pooled)  # every labelled trial validated exactly once
    fold_of = {t: f.fold for f in table.folds for t in f.validation}
    for trial in pooled.values():
        for other in pooled.values():
            if other.video == trial.video:
                assert fold_of[other.trial] == fold_of[trial.trial]
    loads = [sum(pooled[t].n_frames for t in f.validation) for f in table.folds]
    assert max(loads) - min(loads) < 0.02 * sum(loads) / len(loads)
    assert make_folds(trials, "kfold", 5, seed=1) == table
    assert make_folds(trials, "kfold", 5, seed=2) != table


def test_unknown_protocol_and_too_few_folds() -> None:
    from affvx.orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown protocol"):
        make_folds(real_trials(), "loso")
    with pytest.raises(ConfigError, match="at least 2 folds"):
        make_folds(real_trials(), "kfold", 1)
