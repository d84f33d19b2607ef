"""The experiment configuration: resolved once (defaults < --config file < flags), saved as
RUN/experiment.toml, and compared on every later launch of the run.

    store = "demo-store"              # feature store (default: the demo corpus)
    protocol = "abaw2"                # abaw2 | kfold
    folds = 6
    emotions = ["valence", "arousal"] # "both" = one multi-task job per cell
    modalities = [["visual"], ["visual", "mfcc", "vggish"]]
    seeds = [0]

    [model]      name = "lfan", channels = 64, ...        (affvx.trainers.spec.ModelConfig)
    [training]   lr = 3e-4, max_epochs = 30, ...          (affvx.trainers.spec.TrainSpec)
    [resources]  cpus = 1, gpus = 0, mem_gb, time_limit_min
    [backend]    name = "local", max_retries = 2, [backend.local] max_parallel = 2

Everything but [resources] and [backend] decides the results: a run refuses a launch whose
experiment part differs. [resources] and [backend] may change between launches of a run
(resume on more CPUs, on a cluster, with a longer time limit).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from affvx.cluster.registry import backend_names
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.folds import PROTOCOLS
from affvx.trainers.spec import EMOTIONS, MODELS, ModelConfig, TrainSpec

EMOTION_TARGETS = (*EMOTIONS, "both")
EXECUTION_SECTIONS = ("resources", "backend")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and windowing settings shared by every job of the grid (the trainers'
    own defaults unless the experiment says otherwise)."""

    lr: float = TrainSpec.lr
    weight_decay: float = TrainSpec.weight_decay
    max_epochs: int = TrainSpec.max_epochs
    patience: int = TrainSpec.patience
    lr_patience: int = TrainSpec.lr_patience
    lr_factor: float = TrainSpec.lr_factor
    min_lr: float = TrainSpec.min_lr
    window: int = TrainSpec.window
    hop: int = TrainSpec.hop
    batch_size: int = TrainSpec.batch_size


@dataclass(frozen=True)
class ResourcesConfig:
    """What each job asks its backend for."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    time_limit_min: float | None = None


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs the jobs, how often a failed job is retried, backend options."""

    name: str = "local"
    max_retries: int = 2
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options_for(self, name: str | None = None) -> dict[str, Any]:
        return dict(self.options.get(name or self.name, {}))


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole cross-validation grid and how to run it."""

    store: str
    protocol: str = "abaw2"
    folds: int = 6
    fold_seed: int = 0
    emotions: tuple[str, ...] = ("valence", "arousal")
    modalities: tuple[tuple[str, ...], ...] = (("visual",), ("visual", "mfcc", "vggish"))
    seeds: tuple[int, ...] = (0,)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="lfan"))
    training: TrainingConfig = field(default_factory=TrainingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)

    def experiment_part(self) -> dict[str, Any]:
        """The settings that decide results (everything but resources and backend)."""
        data = to_dict(self)
        for section in EXECUTION_SECTIONS:
            data.pop(section)
        return data


# -- resolution --------------------------------------------------------------------------------


def resolve_config(
    *,
    flags: dict[str, Any],
    config_file: Path | None = None,
    saved: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Defaults, then a saved run's configuration, then the --config file, then the flags.

    `flags` uses the same nested keys as the file ({"training": {"lr": ...}}); None values
    mean "not given".
    """
    merged: dict[str, Any] = {}
    if saved:
        _merge(merged, saved)
    if config_file is not None:
        _merge(merged, read_config_file(config_file))
    _merge(merged, _drop_none(flags))
    if "store" not in merged:
        raise ConfigError("no feature store: pass --store or set store in the config file")
    return build_config(merged, source=str(config_file) if config_file else "the flags")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def build_config(data: dict[str, Any], source: str = "configuration") -> ExperimentConfig:
    """An ExperimentConfig from nested plain data; unknown keys and bad values raise."""
    data = dict(data)
    _check_keys(data, ExperimentConfig, source, "")
    sections = {
        "model": ModelConfig,
        "training": TrainingConfig,
        "resources": ResourcesConfig,
    }
    values: dict[str, Any] = {}
    for name, kind in sections.items():
        section = dict(data.pop(name, {}))
        _check_keys(section, kind, source, f"[{name}] ")
        if name == "model":
            section.setdefault("name", "lfan")
        values[name] = _typed(kind, section, f"[{name}]")
    backend = dict(data.pop("backend", {}))
    options = {k: backend.pop(k) for k in list(backend) if isinstance(backend[k], dict)}
    _check_keys(backend, BackendConfig, source, "[backend] ", exclude=("options",))
    values["backend"] = _typed(BackendConfig, {**backend, "options": options}, "[backend]")
    if "modalities" in data:
        data["modalities"] = tuple(_modality_set(m) for m in data["modalities"])
    for key in ("emotions", "seeds"):
        if key in data:
            data[key] = tuple(data[key])
    data["store"] = str(data["store"])
    config = _typed(ExperimentConfig, {**data, **values}, source)
    validate(config)
    return config


def _modality_set(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def validate(config: ExperimentConfig) -> None:
    """Everything checkable without the store; raises ConfigError naming the setting."""
    if config.protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol {config.protocol!r}: choose from {', '.join(PROTOCOLS)}"
        )
    if config.folds < 2:
        raise ConfigError(f"--folds {config.folds}: cross-validation needs at least 2 folds")
    for emotion in config.emotions:
        if emotion not in EMOTION_TARGETS:
            raise ConfigError(
                f"unknown emotion {emotion!r}: choose from {', '.join(EMOTION_TARGETS)}"
            )
    if not config.emotions or len(set(config.emotions)) != len(config.emotions):
        raise ConfigError("--emotions: give one or more distinct emotions, e.g. valence,arousal")
    if not config.modalities or any(not m for m in config.modalities):
        raise ConfigError("--modalities: give at least one modality set, e.g. visual,mfcc")
    if len(set(config.modalities)) != len(config.modalities):
        raise ConfigError("--modalities: a modality set is given twice")
    if config.model.name not in MODELS:
        raise ConfigError(f"unknown model {config.model.name!r}: choose from {', '.join(MODELS)}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ConfigError("--seeds: give one or more distinct seeds")
    if config.backend.name not in backend_names():
        raise ConfigError(
            f"unknown backend {config.backend.name!r}: choose from {', '.join(backend_names())}"
        )
    if config.backend.max_retries < 0:
        raise ConfigError("[backend] max_retries must be >= 0")
    training = config.training
    if training.lr <= 0 or training.max_epochs < 1 or training.window < 2 or training.hop < 1:
        raise ConfigError(
            "[training]: lr > 0, max_epochs >= 1, window >= 2 and hop >= 1 are required"
        )
    resources = config.resources
    if resources.cpus < 1 or resources.gpus < 0:
        raise ConfigError("[resources]: cpus must be >= 1 and gpus >= 0")
    if resources.time_limit_min is not None and resources.time_limit_min <= 0:
        raise ConfigError("[resources] time_limit_min must be > 0")


def differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(saved) | set(new))
    out = []
    for key in keys:
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{prefix}{key}."))
        elif _normalise(a) != _normalise(b):
            out.append(f"{prefix}{key}: {_show(a)} -> {_show(b)}")
    return out


# -- (de)serialisation -------------------------------------------------------------------------


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    backend = data.pop("backend")
    options = backend.pop("options")
    data["backend"] = {**backend, **options}
    return data


def to_toml(config: ExperimentConfig) -> str:
    return tomli_w.dumps(_drop_none(_lists(to_dict(config))))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _normalise(value: Any) -> Any:
    return _lists(value)


def _show(value: Any) -> str:
    return "(unset)" if value is None else repr(_lists(value))


def _merge(target: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def _check_keys(
    data: dict[str, Any], kind: type, source: str, section: str, exclude: tuple[str, ...] = ()
) -> None:
    known = [f.name for f in dataclasses.fields(kind) if f.name not in exclude]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting {section}{unknown[0]!r}; known: {', '.join(known)}"
        )


def _typed(kind: type, values: dict[str, Any], where: str) -> Any:
    try:
        instance = kind(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None
    check_types(instance, where)
    return instance


def check_types(instance: Any, where: str) -> None:
    """Raise ConfigError for a field whose value is not of its annotated (simple) type."""
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            continue
        if not _fits(value, hints[item.name]):
            raise ConfigError(f"{where} {item.name} = {_show(value)} is not a valid value")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        item_hint = args[0]
        return all(_fits(v, item_hint) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True
