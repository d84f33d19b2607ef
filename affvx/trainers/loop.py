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

On the CPU each step's loss is read and checked as it comes. On CUDA the host never waits for
a step (the step is *pipelined*): batches keep one shape (the last one padded and masked), the
next batch is filled while the GPU runs the current step, the loss is summed on the device and
read once per epoch (and at every checkpoint), and the step is captured as one CUDA graph
unless --cuda-graphs off (affvx.trainers.graphs).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from affvx.protocol import GPU_MEMORY_FRACTION
from affvx.storage.reader import FeatureStore
from affvx.trainers.errors import DivergenceError, TrainerInputError
from affvx.trainers.evaluate import Interrupted, partition_ccc, predict_trials
from affvx.trainers.graphs import (
    CapturedStep,
    EagerStep,
    keep_learning_rate_tensors,
    learning_rate_tensors,
    load_optimizer_state,
    make_optimizer,
    make_step,
    optimizer_state,
    scheduler_state,
)
from affvx.trainers.models import build_model
from affvx.trainers.spec import TrainSpec, cuda_graphs_wanted
from affvx.trainers.windows import (
    Batch,
    BatchStream,
    WindowReader,
    epoch_order,
    has_labels,
    trial_windows,
)

EVAL_BATCH_FACTOR = 4  # inference needs no gradients, so it takes bigger batches
# On a GPU bigger still (fewer launches per window), within a share of the free memory.
CUDA_EVAL_BATCH_FACTOR = 16
EVAL_MEMORY_SHARE = 0.25


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
    `pipelined` (None: on CUDA) trains with the pipelined step of the module docstring; on
    the CPU it gives the same loss and gradients as the plain step (tests use it there).
    Training raises TrainerInputError for --cuda-graphs on without CUDA.
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
        pipelined: bool | None = None,
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
        self.capture_graphs = cuda_graphs_wanted(spec.cuda_graphs, device.type)
        self.pipelined = self.capture_graphs or (
            device.type == "cuda" if pipelined is None else pipelined
        )
        self.eval_batch_size = eval_batch_size(spec, store, device)
        normalisation = {
            m: store.normalisation(list(spec.train_trials), m) for m in spec.modalities
        }
        self.reader = WindowReader(
            store,
            modalities=spec.modalities,
            emotions=spec.emotions,
            normalisation=normalisation,
            length=spec.window,
            batch_size=max(spec.batch_size, self.eval_batch_size),
            pin_memory=device.type == "cuda",
        )
        # on CUDA two pinned buffers take turns, so that one is filled while the other's
        # batch is copied to the GPU
        training_readers = (
            [self.reader.copy(spec.batch_size) for _ in range(2)]
            if device.type == "cuda"
            else [self.reader]
        )
        self.batches = BatchStream(
            training_readers, device, pad_to=spec.batch_size if self.pipelined else None
        )
        self.windows = [
            w
            for w in trial_windows(store, spec.train_trials, spec.window, spec.hop)
            if has_labels(store, w, spec.window, spec.emotions)
        ]
        dims = {m: store.modalities[m] for m in spec.modalities}
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model, dims, len(spec.emotions), spec.leader).to(device)
        self.optimizer = make_optimizer(
            self.model,
            lr=spec.lr,
            weight_decay=spec.weight_decay,
            capturable=self.capture_graphs,
        )
        self._learning_rate_tensors = learning_rate_tensors(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="max",
            factor=spec.lr_factor,
            patience=spec.lr_patience,
            min_lr=spec.min_lr,
        )
        self.best_weights: dict[str, torch.Tensor] | None = None
        # the validation predictions of best_weights, when the best epoch ran in this process
        self._best_validation: dict[str, np.ndarray] | None = None
        # the epoch's loss so far, on the device: always equal to progress.epoch_loss_sum
        # once read (_read_loss_sum)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._step: EagerStep | CapturedStep | None = None  # made at the first batch of fit()
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
            "optimizer": optimizer_state(self.optimizer),
            "scheduler": scheduler_state(self.scheduler),
            "best_model": self.best_weights,
            "progress": progress,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # copies into the same parameters
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_weights = state["best_model"]
        self._best_validation = None
        self.progress = Progress(**state["progress"])
        self._loss_sum.fill_(self.progress.epoch_loss_sum)
        self._step = None  # the optimizer's state tensors are new ones: capture again
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def checkpoint(self) -> None:
        self._read_loss_sum()
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
        filled = self.batches.batches(
            [self.windows[i] for i in batch] for batch in batches[progress.batches_done :]
        )
        self.model.train()
        while progress.batches_done < len(batches):
            self._stop_if_asked(self._timing["batch"], epoch_started)
            started = time.perf_counter()
            self._train_step(next(filled))
            progress.batches_done += 1
            if not self.pipelined:
                self._read_loss_sum()
            self._timing["batch"] = max(0.8 * self._timing["batch"], time.perf_counter() - started)
            self.observer.on_batch(
                epoch=progress.epoch, done=progress.batches_done, total=len(batches)
            )
        self._read_loss_sum()

    def _train_step(self, batch: Batch) -> None:
        if self._step is None:
            self._step = make_step(
                self.model,
                self.optimizer,
                batch,
                self._autocast,
                self._loss_sum,
                capture=self.capture_graphs,
            )
        self._step(batch)

    def _read_loss_sum(self) -> None:
        """Bring the epoch's loss sum from the device into progress (a host wait on CUDA),
        and stop the job if it is no longer finite: the learning rate is too high."""
        value = float(self._loss_sum)
        if not math.isfinite(value):
            raise DivergenceError(
                f"the training loss became {value} in epoch {self.progress.epoch} (learning rate "
                f"{float(self.optimizer.param_groups[0]['lr']):g}); lower the learning rate "
                "(--lr, or lr under [training] in experiment.toml)"
            )
        self.progress.epoch_loss_sum = value

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
            "lr": float(self.optimizer.param_groups[0]["lr"]),
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
            self._best_validation = predictions
        else:
            progress.bad_epochs += 1
        self.scheduler.step(score)
        keep_learning_rate_tensors(self.optimizer, self._learning_rate_tensors)
        progress.history.append(row)
        progress.epoch += 1
        progress.batches_done, progress.epoch_loss_sum, progress.epoch_seconds = 0, 0.0, 0.0
        self._loss_sum.zero_()
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

    def validation_predictions(self) -> dict[str, np.ndarray]:
        """`predict(spec.validation_trials)`, without predicting them again when the best
        epoch was validated in this process (the same weights: the same predictions)."""
        if self._best_validation is not None:
            return self._best_validation
        return self.predict(self.spec.validation_trials)

    def _predict(self, trials: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
        return predict_trials(
            self.model,
            self.reader,
            trials,
            hop=self.spec.hop,
            batch_size=self.eval_batch_size,
            device=self.device,
            autocast=self._autocast,
            should_stop=lambda: self.must_stop(0.0),
        )

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.device.type == "cuda":
            # no cache of cast weights: a CUDA graph must recast them on every replay
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False):
                yield
        else:
            yield


def eval_batch_size(spec: TrainSpec, store: FeatureStore, device: torch.device) -> int:
    """Windows per inference batch: EVAL_BATCH_FACTOR training batches on the CPU; on CUDA up
    to CUDA_EVAL_BATCH_FACTOR, as many as fit in EVAL_MEMORY_SHARE of the memory this job may
    use (the free memory, or its share of a shared GPU)."""
    smallest = spec.batch_size * EVAL_BATCH_FACTOR
    if device.type != "cuda":
        return smallest
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    share = os.environ.get(GPU_MEMORY_FRACTION)
    if share:
        free_bytes = min(free_bytes, int(float(share) * total_bytes))
    # a window's inputs plus a generous 32 activations per frame of the model's widest layer,
    # in float32 (the models keep a few tensors of that width per level)
    widest = max(spec.model.channels, 2 * spec.model.gru_hidden, spec.model.attention_dim)
    inputs = sum(store.modalities[m] for m in spec.modalities)
    window_bytes = spec.window * (inputs + 32 * widest) * 4
    fits = int(EVAL_MEMORY_SHARE * free_bytes) // window_bytes
    return max(smallest, min(spec.batch_size * CUDA_EVAL_BATCH_FACTOR, fits))
