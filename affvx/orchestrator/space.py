"""Tuning settings and the search space: `[tune]` and `[tune.space]` of experiment.toml.

    [tune]
    trials = 20              # finished trials per study (COMPLETE + PRUNED + FAILED)
    parallel = 2             # trials in flight per study
    pruner = "wilcoxon"      # wilcoxon | median | none
    wilcoxon_p = 0.3         # the Wilcoxon pruner's p-value threshold (Optuna's: 0.1)
    sampler = "tpe"          # tpe | random
    sampler_seed = 0
    study_name = "affvx"     # each cell's study: <study_name>-<emotion>-<modality set>
    storage = "sqlite:///tune.db"   # default: a journal file in RUN/tuning/

    [tune.space]
    lr = {low = 1e-5, high = 1e-2, log = true}
    dropout = {low = 0.0, high = 0.5}
    channels = {choices = [32, 64, 128]}

A parameter is a field of [training] or [model] (affvx.trainers.spec), named as there. An
empty space means the model's default space (DEFAULT_SPACES); a given space replaces it as a
whole. A range whose bounds are both integers, for an integer field, is searched over
integers. When `window` is searched and `hop` is not, a trial's hop is 2/3 of its window (the
default 300 / 200), so the windows still cover every frame.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from affvx.orchestrator.errors import ConfigError
from affvx.trainers.spec import TRAINING_FIELDS, ModelConfig

PRUNERS = ("wilcoxon", "median", "none")
SAMPLERS = ("tpe", "random")
MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("name", "leader")
)
TUNABLE = (*TRAINING_FIELDS, *MODEL_FIELDS)
INT_FIELDS = ("max_epochs", "patience", "lr_patience", "window", "hop", "batch_size")
INT_FIELDS += tuple(f.name for f in dataclasses.fields(ModelConfig) if f.type in (int, "int"))
EXECUTION_KEYS = ("trials", "parallel")  # may change between launches of a tuning run

_COMMON_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "window": {"choices": [150, 300, 450]},
}
DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "tcn": {**_COMMON_SPACE, "channels": {"choices": [32, 64, 128]}},
    "lfan": {**_COMMON_SPACE, "channels": {"choices": [32, 64, 128]}},
    "gru": {**_COMMON_SPACE, "gru_hidden": {"choices": [32, 64, 128]}},
}


@dataclass(frozen=True)
class TuneConfig:
    """How `affvx tune` searches: trial budget and concurrency per study, pruner, sampler,
    storage and the space (see the module docstring). `space` maps a parameter name to
    {low, high[, log]} or {choices}; empty means the model's default space."""

    trials: int = 20
    parallel: int = 2
    pruner: str = "wilcoxon"
    # Optuna's default 0.1 cannot prune before fold 4 (the exact test's smallest p on m folds
    # is 1/2^m); 0.3 can after 2, and kept the best trial in benchmarks/tune_pruning.py
    wilcoxon_p: float = 0.3
    sampler: str = "tpe"
    sampler_seed: int = 0
    study_name: str = "affvx"
    storage: str | None = None
    space: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolved_tune(tune: TuneConfig, model: str) -> TuneConfig:
    """`tune` with its space filled in (the model's default when empty), checked."""
    if not isinstance(tune.space, dict):
        raise ConfigError(
            f"[tune] space = {tune.space!r}: write a table, [tune.space] with lines such as "
            "lr = {low = 1e-5, high = 1e-2, log = true}"
        )
    for name, spec in tune.space.items():
        check_parameter(name, spec)
    space = tune.space or DEFAULT_SPACES.get(model, DEFAULT_SPACES["tcn"])
    tune = dataclasses.replace(tune, space={name: dict(spec) for name, spec in space.items()})
    check_tune(tune)
    return tune


def check_tune(tune: TuneConfig) -> None:
    """ConfigError naming the setting and the fix for anything `affvx tune` cannot use."""
    if tune.trials < 1:
        raise ConfigError(f"--trials {tune.trials}: give at least 1 trial, e.g. --trials 20")
    if tune.parallel < 1:
        raise ConfigError(f"--parallel {tune.parallel}: give at least 1 trial in flight")
    if tune.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {tune.pruner}: choose from {', '.join(PRUNERS)}")
    if tune.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {tune.sampler}: choose from {', '.join(SAMPLERS)}")
    if not 0 < tune.wilcoxon_p <= 1:
        raise ConfigError(f"[tune] wilcoxon_p = {tune.wilcoxon_p}: give a p-value in (0, 1]")
    if not tune.study_name or any(c.isspace() or c == "/" for c in tune.study_name):
        raise ConfigError(f"--study-name {tune.study_name!r}: use a name without spaces or /")
    for name, spec in tune.space.items():
        check_parameter(name, spec)


def check_parameter(name: str, spec: Any) -> None:
    where = f"[tune.space] {name}"
    if name not in TUNABLE:
        raise ConfigError(f"{where}: unknown parameter; tunable: {', '.join(TUNABLE)}")
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where} = {spec!r}: write {{low = .., high = ..}} or {{choices = [..]}}"
        )
    if "choices" in spec:
        _check_choices(name, spec, where)
        return
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(
            f"{where}: give low and high (and optionally log = true), or choices = [..]"
        )
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not all(_is_number(v) for v in (low, high)) or not isinstance(log, bool):
        raise ConfigError(f"{where}: low and high must be numbers and log true or false")
    if not low < high:
        raise ConfigError(f"{where}: low = {low} must be below high = {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got low = {low})")
    if name in INT_FIELDS and not (_is_int(low) and _is_int(high)):
        raise ConfigError(f"{where}: {name} is an integer; give integer low and high")
    for bound in (low, high):
        _check_value(name, bound, where)


def _check_choices(name: str, spec: dict[str, Any], where: str) -> None:
    choices = spec["choices"]
    if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, alone, e.g. [32, 64]")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: a choice is given twice")
    for choice in choices:
        if name in INT_FIELDS and not _is_int(choice):
            raise ConfigError(f"{where}: {name} is an integer; {choice!r} is not")
        _check_value(name, choice, where)


def _check_value(name: str, value: Any, where: str) -> None:
    """Refuse a value the trainer would refuse (negative sizes, dropout of 1, ...)."""
    if not _is_number(value):
        raise ConfigError(f"{where}: {value!r} is not a number")
    smallest = {"window": 2, "lr": 0, "dropout": 0, "weight_decay": 0, "lr_factor": 0}
    if name == "dropout" and not 0 <= value < 1:
        raise ConfigError(f"{where}: dropout must be in [0, 1) (got {value})")
    if name in ("lr", "min_lr", "lr_factor") and value <= 0:
        raise ConfigError(f"{where}: {name} must be > 0 (got {value})")
    if value < smallest.get(name, 1 if name in INT_FIELDS else 0):
        raise ConfigError(f"{where}: {name} = {value} is too small")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# -- sampling and applying ----------------------------------------------------------------------


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ask an Optuna trial for every parameter of `space`; the parameters, by name."""
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif name in INT_FIELDS:
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], log=spec.get("log", False)
            )
        else:
            params[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=spec.get("log", False)
            )
    return params


def sections_of(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameters as experiment.toml sections ({"training": {...}, "model": {...}}), with the
    hop that follows a searched window."""
    sections: dict[str, dict[str, Any]] = {"training": {}, "model": {}}
    for name, value in params.items():
        sections["model" if name in MODEL_FIELDS else "training"][name] = value
    training = sections["training"]
    if "window" in training and "hop" not in training:
        training["hop"] = max(1, int(training["window"]) * 2 // 3)
    return {name: values for name, values in sections.items() if values}
