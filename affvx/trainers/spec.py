"""What one training job is: the fold's trials, the targets, the model and its settings.

A spec is plain data (JSON round trip), so any backend can carry it to a worker. Its
`config_hash` covers everything that changes the job's result and nothing that does not
(device, CUDA graphs, threads, time limit), so a checkpoint can be resumed under a new time
limit but not under a new learning rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from affvx.protocol import CUDA_GRAPHS_CHOICES
from affvx.trainers.errors import TrainerInputError

EMOTIONS = ("valence", "arousal")
MODELS = ("tcn", "lfan", "gru")
DEVICES = ("auto", "cpu", "cuda")

# Settings that do not change what a job computes; kept out of the configuration hash.
RUNTIME_FIELDS = ("device", "cuda_graphs", "threads", "time_limit_s")
# Optimisation and windowing settings: one value for every job of a grid ([training] in
# experiment.toml, affvx.orchestrator.config.TrainingConfig, is made from these fields).
TRAINING_FIELDS = (
    "lr",
    "weight_decay",
    "max_epochs",
    "patience",
    "lr_patience",
    "lr_factor",
    "min_lr",
    "window",
    "hop",
    "batch_size",
)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: `tcn` (seed 002's TCN), `lfan` (leader-follower attentive fusion,
    seed 002) or `gru` (seed 000's multi-task recurrent model), with their sizes.

    `leader` is lfan's leader modality (None: `visual` if present, else the first modality).
    """

    name: str = "tcn"
    channels: int = 64
    levels: int = 4
    kernel_size: int = 5
    dropout: float = 0.1
    follower_channels: int = 32
    attention_dim: int = 32
    leader: str | None = None
    gru_hidden: int = 64
    gru_layers: int = 2


@dataclass(frozen=True)
class TrainSpec:
    """One job: train on `train_trials`, select the epoch on `validation_trials`, predict the
    validation and test trials. `emotions` with two entries trains both at once (summed loss).
    `store` is where the store is opened; `recorded_store`, when set, is the path that the
    job's run recorded for it (a run moved with its store): the job's hash names that path,
    so its checkpoints stay valid wherever the store is now.
    """

    store: str
    fold: int
    train_trials: tuple[str, ...]
    validation_trials: tuple[str, ...]
    emotions: tuple[str, ...]
    modalities: tuple[str, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    window: int = 300
    hop: int = 200
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    max_epochs: int = 30
    patience: int = 6
    lr_patience: int = 3
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    test_trials: tuple[str, ...] | None = None  # None: every Test_Set trial of the store
    protocol: str = "abaw2"
    device: str = "auto"
    cuda_graphs: str = "auto"  # capture the training step as a CUDA graph: auto, on, off
    threads: int | None = None
    time_limit_s: float | None = None
    recorded_store: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check everything that can be checked without opening the store."""
        if not self.emotions or any(e not in EMOTIONS for e in self.emotions):
            raise TrainerInputError(
                f"unknown emotion in {','.join(self.emotions) or '(none)'}: choose valence, "
                "arousal or both"
            )
        if len(set(self.emotions)) != len(self.emotions):
            raise TrainerInputError(f"emotion given twice: {','.join(self.emotions)}")
        if self.model.name not in MODELS:
            raise TrainerInputError(
                f"unknown model {self.model.name!r}: choose from {', '.join(MODELS)}"
            )
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise TrainerInputError("give one or more distinct modalities, e.g. visual,mfcc")
        if self.model.leader is not None and self.model.leader not in self.modalities:
            raise TrainerInputError(
                f"leader modality {self.model.leader} is not among the modalities "
                f"{','.join(self.modalities)}"
            )
        if self.device not in DEVICES:
            raise TrainerInputError(f"unknown device {self.device!r}: choose auto, cpu or cuda")
        if self.cuda_graphs not in CUDA_GRAPHS_CHOICES:
            raise TrainerInputError(
                f"unknown --cuda-graphs {self.cuda_graphs!r}: choose auto, on or off"
            )
        if self.device == "cpu":
            cuda_graphs_wanted(self.cuda_graphs, "cpu")
        for name in ("window", "hop", "batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise TrainerInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise TrainerInputError("lr must be > 0 and weight_decay >= 0")
        if not self.train_trials or not self.validation_trials:
            raise TrainerInputError(f"fold {self.fold} has no training or no validation trials")

    @property
    def leader(self) -> str:
        if self.model.leader is not None:
            return self.model.leader
        return "visual" if "visual" in self.modalities else self.modalities[0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        values = dict(data)
        values["model"] = ModelConfig(**values.get("model", {}))
        for key in ("train_trials", "validation_trials", "emotions", "modalities"):
            values[key] = tuple(values[key])
        if values.get("test_trials") is not None:
            values["test_trials"] = tuple(values["test_trials"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainerInputError(f"unknown job setting(s): {', '.join(unknown)}")
        return cls(**values)

    def result_config(self) -> dict[str, Any]:
        """Everything that changes the result (the spec minus runtime settings)."""
        config = self.to_dict()
        for name in RUNTIME_FIELDS:
            config.pop(name)
        config["store"] = config.pop("recorded_store") or config["store"]
        return config

    def config_hash(self, store_fingerprint: str = "") -> str:
        """A short, stable hash of `result_config()` plus the store's content fingerprint."""
        payload = json.dumps(
            {"config": self.result_config(), "store": store_fingerprint}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def with_runtime(self, **changes: Any) -> TrainSpec:
        """A copy with other runtime settings (device, CUDA graphs, threads, time limit)."""
        bad = set(changes) - set(RUNTIME_FIELDS)
        if bad:
            raise ValueError(f"not runtime settings: {sorted(bad)}")
        return dataclasses.replace(self, **changes)


def cuda_graphs_wanted(setting: str, device_type: str) -> bool:
    """Whether a job on `device_type` ("cpu" or "cuda") should capture its training step as a
    CUDA graph: `auto` and `on` on CUDA, never on the CPU, where `on` is a TrainerInputError."""
    if device_type == "cuda":
        return setting != "off"
    if setting == "on":
        raise TrainerInputError(
            "--cuda-graphs on needs a CUDA device, but this job runs on the CPU; use "
            "--cuda-graphs auto (or off), or run it where --device cuda finds a GPU"
        )
    return False
