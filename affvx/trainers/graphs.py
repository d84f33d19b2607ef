"""The training step without host waits, and its capture as one CUDA graph.

On a GPU a small model's step is bound by kernel launches, not by arithmetic: replayed as one
CUDA graph the TCN step at batch 8 ran 7.6x faster on an H100 (research/gpu.md). What a graph
needs, and what these classes provide:

- fixed shapes: every batch has `batch_size` windows; the last, short one is padded with
  windows whose masks are 0, which changes neither the loss nor the gradients (the CCC loss
  skips windows with fewer than two valid frames);
- no host synchronisation inside the step: each batch's loss is added to a float64
  accumulator on the device, which the trainer reads (and checks for NaN) when it needs it;
- an optimizer that runs inside a graph: AdamW(capturable=True), its learning rate a device
  tensor that a scheduler changes in place;
- static input tensors that every batch is copied into before the graph is replayed.

`EagerStep` runs the step op by op, `CapturedStep` records it once and replays it, and
`make_step` chooses, falling back to eager steps (one warning) when capture fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from affvx.trainers.ccc import ccc_loss
from affvx.trainers.windows import Batch

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS set-up, lazy state)

log = logging.getLogger(__name__)
_capture_failure_logged = False

Autocast = Callable[[], contextlib.AbstractContextManager]  # type: ignore[type-arg]


def batch_loss(model: torch.nn.Module, batch: Batch, autocast: Autocast) -> torch.Tensor:
    """The CCC loss of `model` on `batch`: forward under `autocast`, loss in float32."""
    with autocast():
        output = model(batch.inputs)
    return ccc_loss(output.float(), batch.labels, batch.label_mask)


class EagerStep:
    """One training step run op by op: forward, CCC loss, backward, optimizer step.

    Calling it with a batch updates the model and the optimizer and adds the batch's loss to
    `loss_sum` (a float64 tensor on the model's device); nothing is read back to the host.
    Batches may have any number of windows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        autocast: Autocast,
        loss_sum: torch.Tensor,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.autocast = autocast
        self.loss_sum = loss_sum

    def __call__(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(self.model, batch, self.autocast)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach().double())


class TrainingStateSnapshot:
    """A copy of everything a training step changes: parameters and buffers, the optimizer's
    state, the CPU and CUDA random number generators.

    `restore()` writes the copy back into the same tensors, so that anything recorded against
    them (a CUDA graph) stays valid. Optimizer state that did not exist when the snapshot was
    taken is zeroed, which is the state AdamW starts from.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.tensors = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers())]
        self.optimizer_state = {
            param: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
            for param, state in optimizer.state.items()
        }
        self.device = self.tensors[0][0].device
        self.rng = _rng_state(self.device)

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, saved in self.tensors:
                tensor.copy_(saved)
            for param, state in self.optimizer.state.items():
                saved_state = self.optimizer_state.get(param)
                for key, value in state.items():
                    if not isinstance(value, torch.Tensor):
                        continue  # AdamW keeps only tensors (its step too)
                    if saved_state is None:
                        value.zero_()
                    else:
                        value.copy_(saved_state[key])
        self.optimizer.zero_grad(set_to_none=True)
        _set_rng_state(self.device, self.rng)


def _cuda_generator(device: torch.device) -> Any:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.default_generators[index]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, Any]:
    if device.type != "cuda":
        return torch.get_rng_state(), None
    generator = _cuda_generator(device)
    if hasattr(generator, "get_offset"):
        return torch.get_rng_state(), generator.get_offset()
    return torch.get_rng_state(), torch.cuda.get_rng_state(device)


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, Any]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if device.type != "cuda":
        return
    if isinstance(cuda, int):
        # Only the offset moves during warm-up. Setting the whole state would also reseed,
        # which makes cuDNN's RNN draw a new dropout seed (a host read) inside the capture.
        _cuda_generator(device).set_offset(cuda)
    else:
        torch.cuda.set_rng_state(cuda, device)


class CapturedStep:
    """The whole training step -- forward, CCC loss, backward, AdamW step, adding the loss to
    `loss_sum` -- recorded once as a CUDA graph and replayed for every batch.

    Contract:
    - construction captures it with batches shaped like `example` (pad short batches to that
      shape; the padding must be masked). Before capture it runs WARMUP_STEPS eager steps on
      a side stream (PyTorch's whole-network recipe) and then restores the model, optimizer
      and RNG states exactly, so capturing changes no result. A failure raises; the states
      are restored first.
    - calling it with a batch copies the batch into the graph's static input tensors and
      replays the graph: the model and optimizer are updated in place, the loss added to
      `loss_sum`, and nothing is read back to the host.
    - the optimizer must be AdamW(capturable=True) with its learning rate a tensor on the
      device (`make_optimizer`): a new learning rate reaches the graph only by filling that
      tensor in place. Loading optimizer state replaces its state tensors, so a step
      captured before a load must be captured again.
    - dropout draws from the default CUDA generator, which graphs advance on every replay
      (graph-safe): each step gets new masks, and the generator's state, checkpointed as
      usual, says where the next step's masks come from.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        example: Batch,
        autocast: Autocast,
        loss_sum: torch.Tensor,
    ) -> None:
        self.static = Batch(
            {m: x.clone() for m, x in example.inputs.items()},
            example.labels.clone(),
            example.label_mask.clone(),
            example.frame_mask.clone(),
            example.windows,
        )
        snapshot = TrainingStateSnapshot(model, optimizer)
        try:
            self._warm_up(model, optimizer, autocast)
            snapshot.restore()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                loss = batch_loss(model, self.static, autocast)
                loss.backward()
                optimizer.step()
                loss_sum.add_(loss.detach().double())
        except BaseException:
            snapshot.restore()  # drops the gradients allocated for the graph, rewinds the RNG
            raise

    def _warm_up(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast: Autocast
    ) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    batch_loss(model, self.static, autocast).backward()
                    optimizer.step()
        finally:
            torch.cuda.current_stream().wait_stream(side)

    def __call__(self, batch: Batch) -> None:
        for modality, tensor in self.static.inputs.items():
            tensor.copy_(batch.inputs[modality], non_blocking=True)
        self.static.labels.copy_(batch.labels, non_blocking=True)
        self.static.label_mask.copy_(batch.label_mask, non_blocking=True)
        self.graph.replay()


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    example: Batch,
    autocast: Autocast,
    loss_sum: torch.Tensor,
    *,
    capture: bool,
) -> EagerStep | CapturedStep:
    """The training step for batches like `example`: captured as a CUDA graph when `capture`
    (then `optimizer` must come from make_optimizer(capturable=True)), else eager. A capture
    that fails leaves every state as it was and gives an eager step, with one warning line
    per process."""
    if capture:
        try:
            return CapturedStep(model, optimizer, example, autocast, loss_sum)
        except Exception as error:
            _log_capture_failure(error)
    return EagerStep(model, optimizer, autocast, loss_sum)


def _log_capture_failure(error: Exception) -> None:
    global _capture_failure_logged
    if _capture_failure_logged:
        return
    _capture_failure_logged = True
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    log.warning(
        "CUDA graph capture of the training step failed (%s); training with eager steps "
        "(--cuda-graphs off skips the attempt)",
        reason,
    )


# -- the optimizer ----------------------------------------------------------------------------


def make_optimizer(
    model: torch.nn.Module, *, lr: float, weight_decay: float, capturable: bool
) -> torch.optim.AdamW:
    """AdamW over the model's parameters; `capturable` makes one that runs inside a CUDA
    graph: state on the device and the learning rate a device tensor (filled in place by the
    scheduler, so every replay reads the current rate)."""
    if not capturable:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    return torch.optim.AdamW(
        model.parameters(),
        lr=torch.tensor(lr, dtype=torch.float32, device=device),
        weight_decay=weight_decay,
        capturable=True,
    )


def learning_rate_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor | None]:
    """Each parameter group's learning-rate tensor (None where it is a float)."""
    return [g["lr"] if isinstance(g["lr"], torch.Tensor) else None for g in optimizer.param_groups]


def keep_learning_rate_tensors(
    optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor | None]
) -> None:
    """Make `tensors` the groups' learning rates again, holding their current values.

    Schedulers of recent PyTorch fill a tensor rate in place; older ones, and loading a
    state dict, put a float in its place, which a captured graph would never see.
    """
    for group, tensor in zip(optimizer.param_groups, tensors):
        if tensor is not None and group["lr"] is not tensor:
            tensor.fill_(float(group["lr"]))
            group["lr"] = tensor


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with plain float learning rates, so that a checkpoint loads
    into a captured step's optimizer and into an eager one alike."""
    state = optimizer.state_dict()
    state["param_groups"] = [dict(g, lr=float(g["lr"])) for g in state["param_groups"]]
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, keeping how this optimizer runs: its own
    `capturable` (which decides where AdamW's step counts live) and its learning-rate
    tensors, filled with the checkpoint's rates."""
    tensors = learning_rate_tensors(optimizer)
    groups = [
        dict(saved, capturable=own.get("capturable", False), lr=float(saved["lr"]))
        for saved, own in zip(state["param_groups"], optimizer.param_groups)
    ]
    optimizer.load_state_dict({**state, "param_groups": groups})
    keep_learning_rate_tensors(optimizer, tensors)


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A learning-rate scheduler's state_dict() with plain float rates (see optimizer_state)."""
    state = scheduler.state_dict()
    if "_last_lr" in state:
        state["_last_lr"] = [float(lr) for lr in state["_last_lr"]]
    return state
