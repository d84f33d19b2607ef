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
    [resources]  cpus = 1, gpus = 0 (or a share, 0.25), jobs_per_gpu = 1, mem_gb,
                 time_limit_min (or time_limit = "2h"), cuda_graphs = "auto"
    [backend]    name = "local", max_retries = 2, [backend.local] max_parallel = 2

Every value has one meaning, the same as the flag of the same name:

- `emotions`: a list of emotions, or one string as for --emotions ("valence",
  "valence,arousal"). Each entry is a job of its own; "both" is one multi-task job.
- `modalities`: a list of modality SETS, each a list (["visual", "mfcc"]) or a comma-separated
  string ("visual,mfcc"); one string alone is one set (as one --modalities flag). A flat list
  of two or more single names (["visual", "mfcc"]) could mean one set or several and is
  refused: write [["visual", "mfcc"]] for one set, [["visual"], ["mfcc"]] for two.
- `seeds`: a list of seeds, or a string as for --seeds ("0-4", "0,3"). A bare number is
  refused: it could be one seed or that many.
- `time_limit_min` (minutes, as saved) or `time_limit`: a duration, "90s", "45m", "2h",
  "1h30m", "1d" (a plain number is minutes). --time-limit of `launch` and `train` take the
  same durations. The saved experiment.toml always holds time_limit_min, so older affvx
  versions read it.

Everything but [resources] and [backend] decides the results: a run refuses a launch whose
experiment part differs. [resources] and [backend] may change between launches of a run
(resume on more CPUs, on a cluster, with a longer time limit).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
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

from affvx.cluster.base import Resources, describe_options
from affvx.cluster.errors import ClusterError
from affvx.cluster.registry import backend_class, backend_names
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.folds import PROTOCOLS
from affvx.orchestrator.space import EXECUTION_KEYS, TuneConfig
from affvx.trainers.spec import EMOTIONS, MODELS, TRAINING_FIELDS, ModelConfig, TrainSpec

EMOTION_TARGETS = (*EMOTIONS, "both")
EXECUTION_SECTIONS = ("resources", "backend")


TrainingConfig = dataclasses.make_dataclass(
    "TrainingConfig",
    [
        (name, TrainSpec.__dataclass_fields__[name].type, field(default=getattr(TrainSpec, name)))
        for name in TRAINING_FIELDS
    ],
    frozen=True,
    namespace={
        "__doc__": "Optimisation and windowing settings shared by every job of the grid: the "
        "fields TRAINING_FIELDS of TrainSpec, with its defaults (defined there, once).",
        "__module__": __name__,
    },
)


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
    """A whole cross-validation grid and how to run it.

    `store` is where the feature store is opened. A run that was moved with its store
    (RunDir.config) finds it elsewhere than the path it recorded when it was made; that path
    stays in `recorded_store`, and it is the one the configuration is compared, hashed and
    saved with, so the run's jobs keep their identity.
    """

    store: str
    protocol: str = "abaw2"
    folds: int = 6
    fold_seed: int = 0
    emotions: tuple[str, ...] = ("valence", "arousal")
    modalities: tuple[tuple[str, ...], ...] = (("visual",), ("visual", "mfcc", "vggish"))
    seeds: tuple[int, ...] = (0,)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="lfan"))
    training: TrainingConfig = field(default_factory=TrainingConfig)  # type: ignore[valid-type]
    resources: Resources = field(default_factory=Resources)
    backend: BackendConfig = field(default_factory=BackendConfig)
    recorded_store: str | None = None  # None: the store is at the path it was recorded with
    tune: TuneConfig | None = None  # set for a tuning run (affvx tune)

    def experiment_part(self) -> dict[str, Any]:
        """The settings that decide results (everything but resources, backend, and the
        tuning budget and concurrency)."""
        data = to_dict(self)
        for section in EXECUTION_SECTIONS:
            data.pop(section)
        for key in EXECUTION_KEYS:
            (data.get("tune") or {}).pop(key, None)
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
        _merge(merged, _spelled_once(saved, "the saved experiment.toml"))
    if config_file is not None:
        _merge(merged, _spelled_once(read_config_file(config_file), str(config_file)))
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
    data = _spelled_once(data, source)
    _check_keys(data, ExperimentConfig, source, "", exclude=("recorded_store",))
    sections = {
        "model": ModelConfig,
        "training": TrainingConfig,
        "resources": Resources,
    }
    values: dict[str, Any] = {}
    for name, kind in sections.items():
        section = _table(data.pop(name, {}), name, source)
        _check_keys(section, kind, source, f"[{name}] ")
        if name == "model":
            section.setdefault("name", "lfan")
        values[name] = _typed(kind, section, f"[{name}]")
    backend = _table(data.pop("backend", {}), "backend", source)
    options = {k: backend.pop(k) for k in list(backend) if isinstance(backend[k], dict)}
    _check_keys(backend, BackendConfig, source, "[backend] ", exclude=("options",))
    values["backend"] = _typed(BackendConfig, {**backend, "options": options}, "[backend]")
    if data.get("tune") is not None:
        tune = _table(data.pop("tune"), "tune", source)
        _check_keys(tune, TuneConfig, source, "[tune] ")
        values["tune"] = _typed(TuneConfig, tune, "[tune]")
    if "modalities" in data:
        data["modalities"] = modality_sets(data["modalities"], source)
    if "emotions" in data:
        data["emotions"] = emotion_list(data["emotions"], source)
    if "seeds" in data:
        data["seeds"] = seed_list(data["seeds"], source)
    data["store"] = str(data["store"])
    config = _typed(ExperimentConfig, {**data, **values}, source)
    validate(config)
    check_backend_sections(config.backend.options, source)
    return config


def _table(value: Any, name: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: {name} = {_show(value)} is not a table: write its settings under [{name}]"
        )
    return dict(value)


def _spelled_once(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`[resources] time_limit = "2h"` becomes time_limit_min = 120, and `gpus = 0.25`
    becomes gpus = 1, jobs_per_gpu = 4 (the spellings saved)."""
    resources = data.get("resources")
    if not isinstance(resources, dict):
        return dict(data)
    resources = dict(resources)
    if isinstance(resources.get("gpus"), float):
        gpus, jobs_per_gpu = gpu_share(
            resources["gpus"], resources.get("jobs_per_gpu"), f"{source}: [resources] gpus ="
        )
        resources.update(gpus=gpus, jobs_per_gpu=jobs_per_gpu)
    if "time_limit" not in resources:
        return {**data, "resources": resources}
    if "time_limit_min" in resources:
        raise ConfigError(
            f"{source}: [resources] has both time_limit and time_limit_min: keep one"
        )
    resources["time_limit_min"] = parse_duration_min(
        resources.pop("time_limit"), f"{source}: [resources] time_limit"
    )
    return {**data, "resources": resources}


def modality_sets(value: Any, source: str = "configuration") -> tuple[tuple[str, ...], ...]:
    """The modality sets of `modalities` (see the module docstring for the accepted forms)."""
    example = 'e.g. modalities = [["visual"], ["visual", "mfcc"]]'
    if isinstance(value, str):
        return (_modality_set(value, source),)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: modalities = {_show(value)}: give a list of sets, {example}")
    single_names = all(isinstance(item, str) and "," not in item for item in value)
    if single_names and len(value) > 1:
        one_set, each_alone = [list(value)], [[item] for item in value]
        raise ConfigError(
            f"{source}: modalities = {json.dumps(list(value))} is ambiguous: write modalities = "
            f"{json.dumps(one_set)} for one set, or {json.dumps(each_alone)} for a set each"
        )
    return tuple(_modality_set(item, source) for item in value)


def _modality_set(value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(
        f"{source}: modality set {_show(value)} is not a list of modality names, "
        'e.g. ["visual", "mfcc"]'
    )


def emotion_list(value: Any, source: str = "configuration") -> tuple[str, ...]:
    """`emotions`: a list of names, or one string of comma-separated names (as --emotions)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(
        f'{source}: emotions = {_show(value)}: give a list, e.g. emotions = ["valence", "arousal"]'
    )


def seed_list(value: Any, source: str = "configuration") -> tuple[int, ...]:
    """`seeds`: a list of integers, or a string of numbers and ranges (as --seeds)."""
    if isinstance(value, str):
        return parse_seeds(value, f"{source}: seeds")
    if isinstance(value, (list, tuple)) and all(_is_int(item) for item in value):
        return tuple(value)
    hint = ""
    if _is_int(value):
        hint = f" (one seed or {value} seeds?)"
    raise ConfigError(
        f"{source}: seeds = {_show(value)}{hint}: give a list, e.g. seeds = [0] or [0, 1, 2], "
        'or a range, seeds = "0-2"'
    )


def parse_seeds(text: str, what: str = "--seeds") -> tuple[int, ...]:
    """Seeds from numbers and ranges: "0,1,2", "0-4", "0,3-5"."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds.extend(range(int(first), int(last) + 1) if last else [int(first)])
    except ValueError:
        raise ConfigError(f"{what} {text!r}: use numbers and ranges, e.g. 0,1,2 or 0-4") from None
    return tuple(seeds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def gpu_share(gpus: float, jobs_per_gpu: int | None, what: str = "--gpus") -> tuple[int, int]:
    """(GPUs per job, jobs per GPU) from a GPU count that may be a fraction 1/N (0.25: four
    jobs share a GPU) and an explicit jobs-per-GPU (None: not given)."""
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus):
        raise ConfigError(f"{what} {gpus!r}: give a number of GPUs, or a share such as 0.25")
    if gpus >= 1 or gpus == 0:
        if gpus != int(gpus):
            raise ConfigError(
                f"{what} {gpus:g}: a job takes whole GPUs, or one share of one GPU "
                "(0.5, 0.25, ...: 1/N, N jobs per GPU)"
            )
        return int(gpus), jobs_per_gpu or 1
    share = round(1 / gpus) if gpus > 0 else 0
    if gpus < 0 or share < 2 or abs(1 / share - gpus) > 1e-3:
        raise ConfigError(
            f"{what} {gpus:g}: a share of a GPU is 1/N (0.5, 0.25, 0.125: N jobs per GPU)"
        )
    if jobs_per_gpu not in (None, share):
        raise ConfigError(
            f"{what} {gpus:g} is {share} jobs per GPU, but {jobs_per_gpu} jobs per GPU are "
            "asked for too: give one of them"
        )
    return 1, share


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT_MIN = {"d": 24 * 60.0, "h": 60.0, "m": 1.0, "s": 1 / 60}


def parse_duration_min(value: Any, what: str = "--time-limit") -> float:
    """Minutes in a duration: "90s", "45m", "2h", "1h30m", "1d"; a plain number is minutes."""
    usage = f"{what} {value}: use e.g. 90s, 45m, 2h or 1h30m (a plain number is minutes)"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(usage)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(_NUMBER, text):
            minutes = float(text)
        elif re.fullmatch(rf"(?:{_NUMBER}[dhms])+", text):
            parts = re.findall(rf"({_NUMBER})([dhms])", text)
            minutes = sum(float(number) * _UNIT_MIN[unit] for number, unit in parts)
        else:
            raise ConfigError(usage)
    else:
        minutes = float(value)
    if not math.isfinite(minutes) or minutes <= 0:
        raise ConfigError(f"{what} {value}: a time limit must be longer than 0")
    return minutes


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


def check_backend_sections(options: dict[str, dict[str, Any]], source: str = "") -> None:
    """Every `[backend.<name>]` names a backend and only options it declares, with values of
    their types (affvx.cluster.base.BackendOption); errors name `source` (a file)."""
    where = f"{source}: " if source else ""
    for name, values in options.items():
        if name not in backend_names():
            raise ConfigError(
                f"{where}[backend.{name}]: no such backend; choose from "
                f"{', '.join(backend_names())}"
            )
        declared = {option.name: option for option in backend_class(name).options}
        for key, value in values.items():
            if key not in declared:
                raise ConfigError(
                    not_an_option(f"{where}[backend.{name}] {key}", name, list(declared.values()))
                )
            try:
                declared[key].check(value, f"{where}[backend.{name}] {key}")
            except ClusterError as error:
                raise ConfigError(str(error)) from None


def not_an_option(what: str, backend: str, declared: list[Any]) -> str:
    return (
        f"{what} is not an option of the {backend} backend; its options: "
        f"{describe_options(declared)}"
    )


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
    """The configuration as saved: its store named by the path the run recorded."""
    data = dataclasses.asdict(config)
    data["store"] = data.pop("recorded_store") or data["store"]
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
