"""The pipelined training step of CUDA jobs, checked on the CPU where it can be, and on CUDA
where there is one (the CUDA tests are skipped without a GPU).

On the CPU a job (--cuda-graphs auto) trains exactly as before. The pipelined step pads the
last short batch with masked windows, reads the loss once per epoch, and still gives the same
loss and gradients; the batch stream hands out the same batches as filling them one by one.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path

import pytest
import torch

from affvx.orchestrator.train import single_job_spec
from affvx.protocol import CUDA_GRAPHS, JobEnvironment
from affvx.storage.reader import FeatureStore
from affvx.trainers.ccc import ccc_loss
from affvx.trainers.errors import DivergenceError, TrainerInputError
from affvx.trainers.graphs import (
    EagerStep,
    TrainingStateSnapshot,
    batch_loss,
    keep_learning_rate_tensors,
    learning_rate_tensors,
    load_optimizer_state,
    optimizer_state,
)
from affvx.trainers.loop import StopRequested, Trainer, TrainingObserver
from affvx.trainers.spec import ModelConfig, TrainSpec
from affvx.trainers.windows import BatchStream
from tests.support.runs import one_cell_run

BATCH = 5  # the small store's fold 0 has 42 training windows: 8 full batches and one of 2
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def job_spec(store: Path, model: str = "tcn", dropout: float = 0.1, **settings) -> TrainSpec:
    spec = single_job_spec(
        store,
        fold=0,
        emotion="both",
        modalities=("visual", "mfcc"),
        model=model,
        window=64,
        hop=32,
        batch_size=BATCH,
        max_epochs=3,
        patience=10,
        threads=1,
        **settings,
    )
    return dataclasses.replace(spec, model=ModelConfig(name=model, dropout=dropout))


def make_trainer(
    spec: TrainSpec,
    *,
    device: str = "cpu",
    pipelined: bool | None = None,
    observer: TrainingObserver | None = None,
    must_stop=lambda upcoming_s: False,  # type: ignore[no-untyped-def]
    saved: list | None = None,
) -> Trainer:
    torch.manual_seed(spec.seed)
    return Trainer(
        spec,
        FeatureStore(spec.store),
        device=torch.device(device),
        config_hash="test",
        save=lambda state: (saved if saved is not None else []).append(through_file(state)),
        must_stop=must_stop,
        observer=observer or TrainingObserver(),
        pipelined=pipelined,
    )


def through_file(state: dict) -> dict:
    """A checkpoint as load_checkpoint would return it (saved, then loaded onto the CPU)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in trainer.model.parameters()]


def assert_bitwise_equal(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


# -- the CPU keeps its plain step -------------------------------------------------------------


def test_auto_on_the_cpu_trains_exactly_as_the_plain_eager_loop(small_store: Path) -> None:
    """One epoch of the trainer against the loop it always ran, written out here: batch by
    batch, short last batch as it is, loss read after every step."""
    spec = job_spec(small_store)
    trainer = make_trainer(spec)
    assert not trainer.pipelined and not trainer.capture_graphs
    reference = make_trainer(spec)
    rng = torch.get_rng_state()  # both start the epoch from here (dropout)
    expected_loss_sum = 0.0
    order = torch.randperm(len(reference.windows), generator=epoch_generator(spec, 0)).tolist()
    reference.model.train()
    for first in range(0, len(order), BATCH):
        batch = reference.reader.batch(
            [reference.windows[i] for i in order[first : first + BATCH]]
        )
        reference.optimizer.zero_grad(set_to_none=True)
        loss = ccc_loss(reference.model(batch.inputs).float(), batch.labels, batch.label_mask)
        expected_loss_sum += float(loss.detach())
        loss.backward()
        reference.optimizer.step()
    torch.set_rng_state(rng)
    trainer._train_epoch(time.perf_counter())
    assert trainer.progress.epoch_loss_sum == expected_loss_sum
    assert_bitwise_equal(parameters(trainer), parameters(reference))


def epoch_generator(spec: TrainSpec, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(spec.seed * 1_000_003 + epoch)


def test_cuda_graphs_is_a_runtime_setting(small_store: Path) -> None:
    specs = [job_spec(small_store, cuda_graphs=value) for value in ("auto", "off")]
    specs.append(dataclasses.replace(specs[0], device="cuda", cuda_graphs="on"))
    assert len({spec.config_hash("store") for spec in specs}) == 1
    assert "cuda_graphs" not in specs[0].result_config()
    assert TrainSpec.from_dict(specs[2].to_dict()).cuda_graphs == "on"


def test_cuda_graphs_on_without_cuda_is_a_bad_setting(small_store: Path) -> None:
    with pytest.raises(TrainerInputError, match="--cuda-graphs on needs a CUDA device"):
        job_spec(small_store, device="cpu", cuda_graphs="on")
    spec = job_spec(small_store, device="auto", cuda_graphs="on")  # the device is known later
    with pytest.raises(TrainerInputError, match="--cuda-graphs on needs a CUDA device"):
        make_trainer(spec, device="cpu")
    with pytest.raises(TrainerInputError, match="unknown --cuda-graphs 'sometimes'"):
        job_spec(small_store, cuda_graphs="sometimes")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--device", "cpu", "--cuda-graphs", "on"), "--cuda-graphs on needs a CUDA device"),
        (("--cuda-graphs", "always"), "unknown --cuda-graphs 'always': choose auto, on or off"),
    ],
)
def test_train_cli_cuda_graphs_mistakes_are_one_line(
    small_store: Path, tmp_path: Path, cli, args: tuple[str, ...], message: str
) -> None:
    base = ("--fold", "0", "--emotion", "valence", "--modalities", "visual", "--model", "tcn")
    result = cli("train", small_store, *base, *args, "--out", tmp_path / "job", "--epochs", "1")
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto finds a GPU here")
def test_cuda_graphs_on_with_auto_device_on_a_cpu_machine_is_one_line(
    small_store: Path, tmp_path: Path, cli
) -> None:
    base = ("--fold", "0", "--emotion", "valence", "--modalities", "visual", "--model", "tcn")
    result = cli("train", small_store, *base, "--cuda-graphs", "on", "--out", tmp_path / "job")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        (
            "affvx: error: --cuda-graphs on needs a CUDA device, but this job runs on the CPU; "
            "use --cuda-graphs auto (or off), or run it where --device cuda finds a GPU"
        )
    ]


# -- the pipelined step, on the CPU -----------------------------------------------------------


@pytest.mark.parametrize("model", ["tcn", "lfan", "gru"])
def test_a_padded_batch_gives_the_loss_and_gradients_of_the_short_batch(
    small_store: Path, model: str
) -> None:
    # without dropout: its masks depend on how many windows a batch has
    trainer = make_trainer(job_spec(small_store, model, dropout=0.0))
    windows = trainer.windows[:2]
    short = trainer.reader.batch(windows)
    results = []
    for batch in (short, trainer.reader.copy(BATCH).batch(windows, pad_to=BATCH)):
        trainer.model.zero_grad(set_to_none=True)
        loss = batch_loss(trainer.model, batch, trainer._autocast)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    (short_loss, short_grads), (padded_loss, padded_grads) = results
    assert padded_loss.item() == short_loss.item()
    if model == "tcn":
        assert_bitwise_equal(padded_grads, short_grads)
    else:  # matrix products sum over batch x frames in blocks that depend on the batch's size
        for a, b in zip(padded_grads, short_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_padding_is_empty_masked_windows(small_store: Path) -> None:
    trainer = make_trainer(job_spec(small_store))
    reader, windows = trainer.reader, trainer.windows[:2]
    reader.batch(trainer.windows[10:15])  # leaves data in every row
    batch = reader.batch(windows, pad_to=BATCH)
    assert batch.labels.shape[0] == BATCH and batch.windows == windows
    for tensor in (*batch.inputs.values(), batch.labels, batch.label_mask, batch.frame_mask):
        assert tensor.shape[0] == BATCH and not tensor[2:].any()
    assert batch.label_mask[:2].any()


@pytest.mark.parametrize("model", ["tcn", "lfan"])
def test_a_pipelined_epoch_trains_like_the_plain_one(small_store: Path, model: str) -> None:
    """Bit for bit for the TCN; LFAN's linear layers sum their gradients over batch x frames
    in blocks that depend on the batch's size, so a padded batch is only as close as that."""
    spec = job_spec(small_store, model, dropout=0.0)
    plain, pipelined = make_trainer(spec), make_trainer(spec, pipelined=True)
    assert len(plain.windows) % BATCH != 0  # so the last batch is padded
    for trainer in (plain, pipelined):
        torch.manual_seed(1)
        trainer._train_epoch(time.perf_counter())
    if model == "tcn":
        assert pipelined.progress.epoch_loss_sum == plain.progress.epoch_loss_sum
        assert_bitwise_equal(parameters(pipelined), parameters(plain))
        return
    assert pipelined.progress.epoch_loss_sum == pytest.approx(plain.progress.epoch_loss_sum)
    for a, b in zip(parameters(pipelined), parameters(plain)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_pipelined_step_reads_the_loss_once_per_epoch(
    small_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    original = Trainer._read_loss_sum

    def counted(self: Trainer) -> None:
        reads.append(self.progress.batches_done)
        original(self)

    monkeypatch.setattr(Trainer, "_read_loss_sum", counted)
    spec = job_spec(small_store)
    n_batches = math.ceil(len(make_trainer(spec).windows) / BATCH)
    make_trainer(spec, pipelined=True)._train_epoch(time.perf_counter())
    assert reads == [n_batches]
    reads.clear()
    make_trainer(spec, pipelined=False)._train_epoch(time.perf_counter())
    assert reads == [*range(1, n_batches + 1), n_batches]


class BatchCounter(TrainingObserver):
    def __init__(self) -> None:
        self.done: list[tuple[int, int]] = []

    def on_batch(self, *, epoch: int, done: int, total: int) -> None:
        self.done.append((done, total))


def test_a_diverging_pipelined_job_fails_at_the_end_of_the_epoch(small_store: Path) -> None:
    counter = BatchCounter()
    trainer = make_trainer(job_spec(small_store, lr=1e12), pipelined=True, observer=counter)
    with pytest.raises(DivergenceError) as raised:
        trainer._train_epoch(time.perf_counter())
    assert str(raised.value).startswith("the training loss became nan in epoch 0 (learning rate")
    assert "lower the learning rate (--lr" in str(raised.value)
    done, total = counter.done[-1]
    assert done == total  # every batch ran: the loss was read once, at the end
    counter.done.clear()
    plain = make_trainer(job_spec(small_store, lr=1e12), observer=counter)
    with pytest.raises(DivergenceError, match="the training loss became nan in epoch 0"):
        plain._train_epoch(time.perf_counter())
    assert len(counter.done) < total  # read after every step: it stopped at once


def test_a_pipelined_job_stopped_mid_epoch_resumes_exactly(small_store: Path) -> None:
    spec = job_spec(small_store)  # with dropout: the RNG state must round-trip too
    straight = make_trainer(spec, pipelined=True)
    straight.fit(resumed=False)
    checks = iter(range(10_000))
    saved: list[dict] = []
    stopped = make_trainer(
        spec, pipelined=True, must_stop=lambda upcoming_s: next(checks) == 13, saved=saved
    )
    with pytest.raises(StopRequested):
        stopped.fit(resumed=False)
    assert 0 < saved[-1]["progress"]["batches_done"]  # stopped inside an epoch
    resumed = make_trainer(spec, pipelined=True)
    resumed.load_state_dict(saved[-1])
    resumed.fit(resumed=True)
    assert_bitwise_equal(parameters(resumed), parameters(straight))
    assert resumed.progress.history == [
        dict(row, seconds=ours["seconds"])
        for row, ours in zip(straight.progress.history, resumed.progress.history)
    ]


# -- the batch stream -------------------------------------------------------------------------


@pytest.mark.parametrize("n_readers", [1, 2])
def test_the_batch_stream_gives_the_batches_of_the_plain_reader_in_order(
    small_store: Path, n_readers: int
) -> None:
    trainer = make_trainer(job_spec(small_store))
    chosen = [trainer.windows[i : i + BATCH] for i in range(0, len(trainer.windows), BATCH)]
    readers = [trainer.reader.copy(BATCH) for _ in range(n_readers)]
    stream = BatchStream(readers, torch.device("cpu"), pad_to=BATCH)
    fresh = trainer.reader.copy(BATCH)
    previous = None
    for windows, batch in zip(chosen, stream.batches(chosen), strict=True):
        expected = fresh.batch(windows, pad_to=BATCH)
        assert batch.windows == windows
        assert torch.equal(batch.labels, expected.labels)
        assert torch.equal(batch.label_mask, expected.label_mask)
        for modality, tensor in batch.inputs.items():
            assert torch.equal(tensor, expected.inputs[modality])
        if n_readers == 2 and previous is not None:
            # double buffering: the batch before is intact while this one is in use
            previous_windows, previous_labels = previous
            assert torch.equal(fresh.batch(previous_windows, BATCH).labels, previous_labels)
        previous = (windows, batch.labels)


# -- the optimizer's learning-rate tensor ------------------------------------------------------


def tensor_rate_optimizer(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.AdamW:
    """AdamW with its learning rate in a tensor, as a captured step's (not capturable: CPU)."""
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr), weight_decay=1e-4)


def test_the_scheduler_changes_the_learning_rate_tensor_in_place() -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = tensor_rate_optimizer(model)
    tensors = learning_rate_tensors(optimizer)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=0
    )
    for score in (1.0, 0.5, 0.25):
        scheduler.step(score)
        keep_learning_rate_tensors(optimizer, tensors)
    assert optimizer.param_groups[0]["lr"] is tensors[0]
    assert tensors[0].item() == pytest.approx(2.5e-3)
    optimizer.param_groups[0]["lr"] = 1e-4  # what an older scheduler does
    keep_learning_rate_tensors(optimizer, tensors)
    assert optimizer.param_groups[0]["lr"] is tensors[0] and tensors[0].item() == pytest.approx(
        1e-4
    )


def test_optimizer_state_round_trips_between_tensor_and_float_rates() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = tensor_rate_optimizer(model, lr=0.25)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = through_file(optimizer_state(optimizer))
    assert state["param_groups"][0]["lr"] == 0.25  # a float in the checkpoint
    other = tensor_rate_optimizer(model, lr=1.0)
    kept = learning_rate_tensors(other)[0]
    load_optimizer_state(other, state)
    assert other.param_groups[0]["lr"] is kept and kept.item() == 0.25
    assert torch.equal(
        other.state[model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"]
    )
    plain = torch.optim.AdamW(model.parameters(), lr=1.0)
    load_optimizer_state(plain, state)
    assert plain.param_groups[0]["lr"] == 0.25 and not plain.param_groups[0]["capturable"]


def test_a_snapshot_undoes_warm_up_steps_exactly(small_store: Path) -> None:
    """What CapturedStep relies on to warm up without changing the job's results."""
    spec = job_spec(small_store)  # with dropout: the RNG must be restored too
    warmed, untouched = make_trainer(spec), make_trainer(spec)
    rng = torch.get_rng_state()
    sums = []
    for trainer, warm_up_steps in ((warmed, 3), (untouched, 0)):
        torch.set_rng_state(rng)
        trainer.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        step = EagerStep(trainer.model, trainer.optimizer, trainer._autocast, loss_sum)
        batch = trainer.reader.batch(trainer.windows[:BATCH])
        snapshot = TrainingStateSnapshot(trainer.model, trainer.optimizer)
        for _ in range(warm_up_steps):
            step(batch)
        snapshot.restore()
        loss_sum.zero_()
        step(batch)
        step(batch)
        sums.append(loss_sum.item())
    assert sums[0] == sums[1]
    assert_bitwise_equal(parameters(warmed), parameters(untouched))


# -- the job environment ------------------------------------------------------------------------


def test_the_cuda_graphs_variable_reaches_the_job_spec(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affvx.trainers.job as job_module
    from affvx.orchestrator.worker import run_worker
    from affvx.trainers.job import JobOutcome, JobResult

    assert JobEnvironment.from_environ({}).cuda_graphs == "auto"
    environment = JobEnvironment.from_environ({CUDA_GRAPHS: "off"})
    assert environment.cuda_graphs == "off"
    assert JobEnvironment.from_environ(environment.to_environ()) == environment
    assert CUDA_GRAPHS not in JobEnvironment().to_environ()

    run = one_cell_run(small_store, tmp_path / "run")
    seen: list[TrainSpec] = []

    def record(spec: TrainSpec, job_dir: Path, **_: object) -> JobResult:
        seen.append(spec)
        return JobResult(JobOutcome.COMPLETE, {})

    monkeypatch.setattr(job_module, "run_job", record)
    monkeypatch.setenv(CUDA_GRAPHS, "off")
    assert run_worker(run, "valence-visual-fold0-seed0") == 0
    assert seen[0].cuda_graphs == "off"
    monkeypatch.setenv(CUDA_GRAPHS, "on")
    run_worker(run, "valence-visual-fold1-seed0")
    assert seen[1].cuda_graphs == "on"


# -- on CUDA -----------------------------------------------------------------------------------


@CUDA
def test_the_captured_step_trains_like_the_eager_one_and_sees_a_new_learning_rate(
    small_store: Path,
) -> None:
    from affvx.trainers.graphs import CapturedStep

    spec = job_spec(small_store, dropout=0.0)
    runs = []
    for capture in (False, True):
        trainer = make_trainer(spec, device="cuda")  # a capturable optimizer: auto on CUDA
        loss_sum = torch.zeros((), dtype=torch.float64, device="cuda")
        chosen = [trainer.windows[i : i + BATCH] for i in range(0, 40, BATCH)]
        batches = list(trainer.batches.batches(chosen))
        trainer.model.train()
        model, optimizer, autocast = trainer.model, trainer.optimizer, trainer._autocast
        if capture:
            step = CapturedStep(model, optimizer, batches[0], autocast, loss_sum)
        else:
            step = EagerStep(model, optimizer, autocast, loss_sum)
        for batch in batches:
            step(batch)
        runs.append((parameters(trainer), loss_sum.item()))
        if capture:  # a learning rate of 0 (no decay either) leaves the weights as they are
            trainer.optimizer.param_groups[0]["lr"].fill_(0.0)
            before = parameters(trainer)
            step(batches[0])
            assert_bitwise_equal(parameters(trainer), before)
    (eager, eager_loss), (captured, captured_loss) = runs
    assert captured_loss == pytest.approx(eager_loss, rel=1e-4)
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@CUDA
def test_a_captured_job_stopped_mid_epoch_resumes_exactly(small_store: Path) -> None:
    from affvx.trainers.graphs import CapturedStep
    from affvx.trainers.job import configure_torch

    spec = job_spec(small_store, device="cuda", cuda_graphs="on")
    configure_torch(spec, torch.device("cuda"))
    straight = make_trainer(spec, device="cuda")
    straight.fit(resumed=False)
    assert isinstance(straight._step, CapturedStep)
    checks = iter(range(10_000))
    saved: list[dict] = []
    stopped = make_trainer(
        spec, device="cuda", must_stop=lambda upcoming_s: next(checks) == 13, saved=saved
    )
    with pytest.raises(StopRequested):
        stopped.fit(resumed=False)
    resumed = make_trainer(spec, device="cuda")
    resumed.load_state_dict(saved[-1])
    resumed.fit(resumed=True)
    assert isinstance(resumed._step, CapturedStep)
    assert_bitwise_equal(parameters(resumed), parameters(straight))
