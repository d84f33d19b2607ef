"""Cross-validation folds by trial, never by frame.

`abaw2` reproduces the folds of the LFAN code (seed 002) exactly: the Train_Set trials, sorted
by `name + ".txt"` (the order `os.walk` gave the original), are cut into blocks of equal size
with the remainder on the last block (70/70/70/70/71 for Aff-Wild2); the Validation_Set is one
more block; fold f validates on block (n_blocks - f) mod n_folds, so fold 0 is the official
split. `kfold` pools Train_Set and Validation_Set and balances frames over k folds; trials of
one video (`_left` / `_right` faces share their audio) always stay in the same fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affvx.orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from affvx.storage.reader import FeatureStore

PROTOCOLS = ("abaw2", "kfold")
DEFAULT_FOLDS = 6


@dataclass(frozen=True)
class TrialSummary:
    """What fold construction needs to know about a trial."""

    trial: str
    partition: str
    video: str
    n_frames: int
    n_labelled: int


@dataclass(frozen=True)
class Fold:
    """One fold: the trials it trains on and the trials it validates on."""

    fold: int
    train: tuple[str, ...]
    validation: tuple[str, ...]


@dataclass(frozen=True)
class FoldTable:
    """All folds of one protocol on one store; saved in a run and never recomputed."""

    protocol: str
    seed: int
    folds: tuple[Fold, ...]

    def fold(self, index: int) -> Fold:
        if not 0 <= index < len(self.folds):
            raise ConfigError(
                f"fold {index} does not exist: this {self.protocol} table has folds "
                f"0-{len(self.folds) - 1}"
            )
        return self.folds[index]

    def to_json(self, trials: Sequence[TrialSummary] = ()) -> dict[str, Any]:
        """The JSON form; with `trials`, each fold also counts its validation frames."""
        by_name = {t.trial: t for t in trials}
        folds = []
        for fold in self.folds:
            entry: dict[str, Any] = {
                "fold": fold.fold,
                "validation": list(fold.validation),
                "train": list(fold.train),
                "n_val_trials": len(fold.validation),
            }
            if by_name:
                entry["n_val_frames"] = sum(by_name[t].n_frames for t in fold.validation)
                entry["n_val_labelled_frames"] = sum(
                    by_name[t].n_labelled for t in fold.validation
                )
            folds.append(entry)
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "n_folds": len(folds),
            "folds": folds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldTable:
        return cls(
            protocol=data["protocol"],
            seed=int(data.get("seed", 0)),
            folds=tuple(
                Fold(
                    fold=int(f["fold"]),
                    train=tuple(f["train"]),
                    validation=tuple(f["validation"]),
                )
                for f in data["folds"]
            ),
        )


def make_folds(
    trials: Sequence[TrialSummary],
    protocol: str = "abaw2",
    n_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> FoldTable:
    """Build the fold table of `protocol` over the labelled trials of a store."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if n_folds < 2:
        raise ConfigError(f"--folds {n_folds}: cross-validation needs at least 2 folds")
    if protocol == "abaw2":
        folds = _abaw2_folds(trials, n_folds)
    else:
        folds = _kfold_folds(trials, n_folds, seed)
    return FoldTable(protocol=protocol, seed=seed, folds=folds)


def _abaw2_folds(trials: Sequence[TrialSummary], n_folds: int) -> tuple[Fold, ...]:
    train = sorted(
        (t.trial for t in trials if t.partition == "Train_Set"), key=lambda n: n + ".txt"
    )
    validation = sorted(
        (t.trial for t in trials if t.partition == "Validation_Set"), key=lambda n: n + ".txt"
    )
    n_blocks = n_folds - 1
    if not validation:
        raise ConfigError("the abaw2 protocol needs Validation_Set trials; this store has none")
    if n_blocks > len(train):
        raise ConfigError(
            f"--folds {n_folds}: the abaw2 protocol cuts the {len(train)} Train_Set trials into "
            f"{n_blocks} blocks, more blocks than trials; use at most {len(train) + 1} folds"
        )
    size = len(train) // n_blocks
    blocks = [train[i * size : (i + 1) * size] for i in range(n_blocks - 1)]
    blocks.append(train[(n_blocks - 1) * size :])
    blocks.append(validation)
    folds = []
    for fold in range(n_folds):
        held_out = (n_blocks - fold) % n_folds
        folds.append(
            Fold(
                fold=fold,
                train=tuple(t for i, block in enumerate(blocks) if i != held_out for t in block),
                validation=tuple(blocks[held_out]),
            )
        )
    return tuple(folds)


def _kfold_folds(trials: Sequence[TrialSummary], n_folds: int, seed: int) -> tuple[Fold, ...]:
    pooled = [t for t in trials if t.partition in ("Train_Set", "Validation_Set")]
    groups: dict[str, list[TrialSummary]] = {}
    for trial in pooled:
        groups.setdefault(trial.video, []).append(trial)
    if n_folds > len(groups):
        raise ConfigError(
            f"--folds {n_folds}: more folds than the {len(groups)} labelled videos "
            f"({len(pooled)} trials) of the store; use at most {len(groups)} folds"
        )
    videos = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(videos))
    shuffled = [videos[i] for i in order]
    frames = {v: sum(t.n_frames for t in groups[v]) for v in videos}
    # Largest groups first (stable, so ties keep the seeded order), each to the lightest fold.
    shuffled.sort(key=lambda v: -frames[v])
    members: list[list[str]] = [[] for _ in range(n_folds)]
    load = [0] * n_folds
    for video in shuffled:
        lightest = min(range(n_folds), key=lambda f: (load[f], f))
        members[lightest].extend(t.trial for t in groups[video])
        load[lightest] += frames[video]
    all_trials = sorted(t.trial for t in pooled)
    folds = []
    for fold in range(n_folds):
        held = set(members[fold])
        folds.append(
            Fold(
                fold=fold,
                train=tuple(t for t in all_trials if t not in held),
                validation=tuple(sorted(held)),
            )
        )
    return tuple(folds)


def store_trials(store: FeatureStore) -> list[TrialSummary]:
    """The trial summaries of an opened feature store, in store order."""
    table = store.trials_table
    return [
        TrialSummary(
            trial=str(table["trial"][i]),
            partition=str(table["partition"][i]),
            video=str(table["video"][i]),
            n_frames=int(table["n_frames"][i]),
            n_labelled=int(table["n_labelled"][i]),
        )
        for i in range(len(table["trial"]))
    ]


def folds_of_store(
    store_path: Path | str, protocol: str = "abaw2", n_folds: int = DEFAULT_FOLDS, seed: int = 0
) -> tuple[FoldTable, list[TrialSummary]]:
    """Open a store and build its fold table (what `affvx folds` shows)."""
    from affvx.storage.reader import FeatureStore

    trials = store_trials(FeatureStore(store_path))
    return make_folds(trials, protocol, n_folds, seed), trials
