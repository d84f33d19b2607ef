"""The training loop of one job, with exact resume.

    epoch loop:  train batches (from where the checkpoint left off)
                 -> validate -> schedule the learning rate -> keep the best weights
                 -> checkpoint -> rewrite metrics.csv
    then:        predict the validation and test trials with the best weights

Everything that decides what happens next is in the checkpoint: weights, optimizer, scheduler,
the best weights and score, the early-stopping counter, the epoch and how many of its batches
are done, the epoch's running loss, the metrics history and the torch RNG states. The window
order of an epoch is a pure function of (seed, epoch), so the checkpoint needs no sampler
state beyond the batch count. A resumed job therefore computes exactly what the uninterrupted
one would have (on the same device and thread count).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from affvx.storage.reader import FeatureStore
from affvx.trainers.ccc import ccc_loss
from affvx.trainers.errors import DivergenceError, TrainerInputError
from affvx.trainers.evaluate import Interrupted, partition_ccc, predict_trials
from affvx.trainers.models import build_model
from affvx.trainers.spec import TrainSpec
from affvx.trainers.windows import Window, WindowReader, epoch_order, has_labels, trial_windows

EVAL_BATCH_FACTOR = 4  # inference needs no gradients, so it takes bigger batches


class TrainingObserver:
    """Hooks for progress display or progress files; every method is optional."""

    def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None: ...

    def on_batch(self, *, epoch: int, done: int, total: int) -> None: ...

    def on_epoch(self, row: dict[str, Any]) -> None: ...

    def on_phase(self, phase: str) -> None: ...


class StopRequested(Exception):
    """The job checkpointed because it was asked to stop (signal or time limit)."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batches_done: int = 0
    training_done: bool = False
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    epoch_loss_sum: float = 0.0
    epoch_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains one job's model; `fit()` runs or resumes training, `predict()` the outputs.

    `must_stop(upcoming_s)` is asked before each unit of work with the seconds that unit is
    expected to take; when it answers True the trainer checkpoints and raises StopRequested.
    """

    def __init__(
        self,
        spec: TrainSpec,
        store: FeatureStore,
        *,
        device: torch.device,
        config_hash: str,
        save: Any,
        must_stop: Any,
        observer: TrainingObserver,
    ) -> None:
        self.spec = spec
        self.store = store
        self.device = device
        self.config_hash = config_hash
        self._save = save
        self.must_stop = must_stop
        self.observer = observer
        self.progress = Progress()
        self._check_data()
        normalisation = {
            m: store.normalisation(list(spec.train_trials), m) for m in spec.modalities
        }
        self.reader = WindowReader(
            store,
            modalities=spec.modalities,
            emotions=spec.emotions,
            normalisation=normalisation,
            length=spec.window,
            batch_size=spec.batch_size * EVAL_BATCH_FACTOR,
            pin_memory=device.type == "cuda",
        )
        self.windows = [
            w
            for w in trial_windows(store, spec.train_trials, spec.window, spec.hop)
            if has_labels(store, w, spec.window, spec.emotions)
        ]
        dims = {m: store.modalities[m] for m in spec.modalities}
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model, dims, len(spec.emotions), spec.leader).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="max",
            factor=spec.lr_factor,
            patience=spec.lr_patience,
            min_lr=spec.min_lr,
        )
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._timing = {"batch": 0.0, "validate": 0.0, "checkpoint": 0.0}

    # -- set-up checks ------------------------------------------------------------------------

    def _check_data(self) -> None:
        spec, store = self.spec, self.store
        missing = [m for m in spec.modalities if m not in store.modalities]
        if missing:
            raise TrainerInputError(
                f"unknown modality {missing[0]!r}: the store {store.path} has "
                f"{', '.join(store.modalities)}"
            )
        known = set(store.trial_names)
        for trial in (*spec.train_trials, *spec.validation_trials, *(spec.test_trials or ())):
            if trial not in known:
                raise TrainerInputError(
                    f"trial {trial} of fold {spec.fold} is not in the store {store.path}"
                )
        for emotion in spec.emotions:
            column = f"n_valid_{emotion}"
            index = [store.trial_index(t) for t in spec.train_trials]
            if store.trials_table[column][index].sum() == 0:
                raise TrainerInputError(
                    f"fold {spec.fold} has no labelled {emotion} frames in its training trials; "
                    "the store's Train_Set/Validation_Set need annotations"
                )
            index = [store.trial_index(t) for t in spec.validation_trials]
            if store.trials_table[column][index].sum() < 2:
                raise TrainerInputError(
                    f"fold {spec.fold} has no labelled {emotion} frames to validate on"
                )

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        progress = dict(self.progress.__dict__)
        return {
            "config_hash": self.config_hash,
            "config": self.spec.result_config(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_model": self.best_weights,
            "progress": progress,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_weights = state["best_model"]
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def checkpoint(self) -> None:
        started = time.perf_counter()
        self._save(self.state_dict())
        self._timing["checkpoint"] = max(self._timing["checkpoint"], time.perf_counter() - started)

    # -- training -----------------------------------------------------------------------------

    def fit(self, resumed: bool) -> None:
        spec, progress = self.spec, self.progress
        self.observer.on_start(epoch=progress.epoch, max_epochs=spec.max_epochs, resumed=resumed)
        while not progress.training_done:
            epoch_started = time.perf_counter() - progress.epoch_seconds
            self._train_epoch(epoch_started)
            self._stop_if_asked(self._timing["validate"], epoch_started)
            self.observer.on_phase("validating")
            started = time.perf_counter()
            try:
                predictions = self._predict(spec.validation_trials)
            except Interrupted:
                self._stop(epoch_started)
            self._timing["validate"] = time.perf_counter() - started
            self._end_epoch(predictions, time.perf_counter() - epoch_started)
            self.checkpoint()

    def _train_epoch(self, epoch_started: float) -> None:
        spec, progress = self.spec, self.progress
        order = epoch_order(len(self.windows), spec.seed, progress.epoch)
        batches = [order[i : i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
        self.model.train()
        while progress.batches_done < len(batches):
            self._stop_if_asked(self._timing["batch"], epoch_started)
            started = time.perf_counter()
            chosen = [self.windows[i] for i in batches[progress.batches_done]]
            loss = self._step(chosen)
            progress.epoch_loss_sum += loss
            progress.batches_done += 1
            self._timing["batch"] = max(0.8 * self._timing["batch"], time.perf_counter() - started)
            self.observer.on_batch(
                epoch=progress.epoch, done=progress.batches_done, total=len(batches)
            )

    def _step(self, windows: list[Window]) -> float:
        batch = self.reader.batch(windows).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.model(batch.inputs)
        loss = ccc_loss(output.float(), batch.labels, batch.label_mask)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(
                f"the training loss became {value} in epoch {self.progress.epoch} (learning rate "
                f"{self.optimizer.param_groups[0]['lr']:g}); lower the learning rate (--lr, or "
                "lr under [training] in experiment.toml)"
            )
        loss.backward()
        self.optimizer.step()
        return value

    def _end_epoch(self, predictions: dict[str, np.ndarray], seconds: float) -> None:
        spec, progress = self.spec, self.progress
        val_ccc = partition_ccc(self.store, predictions, spec.emotions)
        if not all(math.isfinite(v) for v in val_ccc.values()):
            raise DivergenceError(
                f"validation CCC became {val_ccc} in epoch {progress.epoch}; lower the learning "
                "rate (--lr, or lr under [training] in experiment.toml)"
            )
        score = float(np.mean(list(val_ccc.values())))
        n_batches = math.ceil(len(self.windows) / spec.batch_size)
        row: dict[str, Any] = {
            "epoch": progress.epoch,
            "train_loss": progress.epoch_loss_sum / n_batches,
            "val_loss": float(sum(1.0 - v for v in val_ccc.values())),
            **{f"val_ccc_{e}": v for e, v in val_ccc.items()},
            "val_ccc_mean": score,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
        }
        if score > progress.best_score:
            progress.best_score, progress.best_epoch, progress.bad_epochs = (
                score,
                progress.epoch,
                0,
            )
            self.best_weights = {
                k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()
            }
        else:
            progress.bad_epochs += 1
        self.scheduler.step(score)
        progress.history.append(row)
        progress.epoch += 1
        progress.batches_done, progress.epoch_loss_sum, progress.epoch_seconds = 0, 0.0, 0.0
        progress.training_done = (
            progress.epoch >= spec.max_epochs or progress.bad_epochs >= spec.patience
        )
        self.observer.on_epoch(row)

    def _stop_if_asked(self, upcoming_s: float, epoch_started: float | None = None) -> None:
        if self.must_stop(upcoming_s + self._timing["checkpoint"]):
            self._stop(epoch_started)

    def _stop(self, epoch_started: float | None) -> None:
        if epoch_started is not None:
            self.progress.epoch_seconds = time.perf_counter() - epoch_started
        self.checkpoint()
        raise StopRequested

    # -- outputs ------------------------------------------------------------------------------

    def predict(self, trials: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
        """Predictions of the best weights for `trials` (StopRequested if asked to stop)."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        try:
            return self._predict(trials)
        except Interrupted:
            raise StopRequested from None

    def _predict(self, trials: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
        return predict_trials(
            self.model,
            self.reader,
            trials,
            hop=self.spec.hop,
            batch_size=self.spec.batch_size * EVAL_BATCH_FACTOR,
            device=self.device,
            autocast=self._autocast,
            should_stop=lambda: self.must_stop(0.0),
        )

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
