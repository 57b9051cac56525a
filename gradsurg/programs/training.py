"""A short, ordinary training loop around Surgery: progress bar, JSONL log, LR schedule."""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn

from gradsurg.engines import local
from gradsurg.errors import ConfigError, TrainingError
from gradsurg.loggers import TrainingLog
from gradsurg.surgery import WEIGHTING_KEY, Surgery

LossFn = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


@dataclass
class Interval:
    """Running means of losses and diagnostics between two log lines."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Interval:
        interval = cls()
        interval.sums.update(state["sums"])
        interval.counts.update(state["counts"])
        return interval


@dataclass
class StageProgress:
    """How far a stage got and what it has averaged so far: enough to continue after a crash."""

    step: int = 0
    seconds: float = 0.0
    interval: Interval = field(default_factory=Interval)
    overall: Interval = field(default_factory=Interval)
    #: `weights_digest` of the trained weights when the stage began (None: not known, e.g.
    #: a checkpoint written before it was recorded).
    start_digest: str | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {"step": self.step, "seconds": self.seconds,
                 "interval": self.interval.state_dict(), "overall": self.overall.state_dict()}
        if self.start_digest is not None:
            state["start_digest"] = self.start_digest
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StageProgress:
        digest = state.get("start_digest")
        return cls(int(state["step"]), float(state["seconds"]),
                   Interval.from_state(state["interval"]), Interval.from_state(state["overall"]),
                   str(digest) if digest is not None else None)


@dataclass
class StageResult:
    name: str
    steps: int
    seconds: float
    means: dict[str, float]


def epoch_steps(batches_per_epoch: int, batches_per_step: int, *, combiner: str) -> int:
    """Optimizer steps in an epoch of `batches_per_epoch` batches: one per batch, or, for a
    combiner that takes several independent batches per step (`sdmgrad`, `modo`), one per
    `batches_per_step` consecutive batches, so an epoch has that many times fewer steps (an
    incomplete last group of batches is left out). Too few batches for one step: refused."""
    steps = batches_per_epoch // batches_per_step
    if steps < 1:
        raise ConfigError(f"combiner {combiner!r} takes {batches_per_step} batches per "
                          f"optimizer step, but an epoch has {batches_per_epoch}; lower "
                          "batch_size or train on more rows")
    return steps


def stage_steps(steps_per_epoch: int, epochs: float) -> int:
    """Optimizer steps in a stage; fractional epochs train part of the last one."""
    return max(1, math.ceil(steps_per_epoch * epochs))


def progress_bar(*, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
    )


SaveCheckpoint = Callable[[StageProgress], None]
#: `(batch, share)`: share is this process's fraction of the global batch (None: all of it).
Batches = Callable[[int, int], Iterable[tuple[Mapping[str, Tensor], float | None]]]


def train_stage(
    *,
    name: str,
    model: nn.Module,
    batches: Batches,
    steps_per_epoch: int,
    epochs: float,
    loss_fn: LossFn,
    surgery: Surgery,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    log: TrainingLog,
    log_every: int,
    progress: Progress,
    resume: StageProgress | None = None,
    save_checkpoint: SaveCheckpoint | None = None,
    checkpoint_every: int | None = None,
    stop_after: int | None = None,
) -> StageResult:
    """Run `ceil(steps_per_epoch * epochs)` optimizer steps (the first `stop_after` of them,
    when given: the LR schedule stays the whole stage's, so they are the stage's first steps).

    `batches(epoch, skip)` yields an epoch's `(batch, share)` pairs from the `skip`-th on (the
    order depends on the epoch only, so a resumed stage sees exactly the batches it missed).
    A combiner with `batches_per_step` b > 1 gets b consecutive batches per step (then
    `steps_per_epoch` is `epoch_steps(...)`, a b-th of the batches). With
    `save_checkpoint`, it is called every `checkpoint_every` steps and after each epoch.
    The surgery's weighting (if any) updates in the optimizer's step and ends its epochs here,
    before the log line and the checkpoint, so its state is saved with the step.
    """
    total = stage_steps(steps_per_epoch, epochs)
    if stop_after is not None:
        if not 1 <= stop_after <= total:
            raise TrainingError(f"stage {name!r}: stop_after must be 1..{total} (its steps), "
                                f"got {stop_after}")
        total = stop_after
    state = resume or StageProgress()
    trained = trained_parameters(model, surgery)
    if resume is None:
        state.start_digest = weights_digest(trained)
    task = progress.add_task(name, total=total, completed=state.step, status="", rate="")
    session_start = time.perf_counter()
    start = session_start - state.seconds  # wall time of earlier sessions counts too
    resumed_at = state.step
    model.train()
    per_step = surgery.combiner.batches_per_step
    for epoch in range(state.step // steps_per_epoch, math.ceil(epochs)):
        if state.step >= total:
            break
        skip = (state.step - epoch * steps_per_epoch) * per_step
        for group in step_groups(batches(epoch, skip), per_step):
            if per_step == 1:
                batch, share = group[0]
                surgery.backward(loss_fn(batch), share=share,
                                 recompute=lambda batch=batch: loss_fn(batch))
            else:  # independent batches: no weighting (Surgery refuses it), no recompute
                shares = [share for _, share in group]
                surgery.backward([loss_fn(batch) for batch, _ in group],
                                 share=None if shares[0] is None else shares)
            optimizer.step()  # the weighting (if any) updates here, unless the step was skipped
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            step = state.step
            values = surgery.log_values()  # global batch; raw and weighted with a weighting
            values.update({key: value for key, value in surgery.diagnostics.items()
                           if key != "nonfinite/skipped"})  # counted in `skipped_steps`
            state.interval.add(values)
            state.overall.add(values)
            rate = (step - resumed_at) / (time.perf_counter() - session_start)
            shown = " ".join(f"{k[5:]}={v:.3f}" for k, v in values.items() if k.startswith("loss/"))
            progress.update(task, advance=1, status=shown, rate=f"{rate:.2f} it/s")
            if step % log_every == 0 or step == total:
                log.write({"stage": name, "step": step, "epoch": epoch + 1,
                           "lr": scheduler.get_last_lr()[0],
                           "skipped_steps": surgery.skipped_steps, **state.interval.means()})
                state.interval = Interval()
            epoch_done = step % steps_per_epoch == 0 or step == total
            if epoch_done:
                surgery.epoch_end()
            due = checkpoint_every is not None and step % checkpoint_every == 0
            if save_checkpoint is not None and (epoch_done or due):
                state.seconds = time.perf_counter() - start
                save_checkpoint(state)
            if step >= total:
                break
    check_trained(name, state, surgery, trained)
    return StageResult(name, state.step, time.perf_counter() - start, state.overall.means())


def step_groups(pairs: Iterable[tuple[Mapping[str, Tensor], float | None]], size: int
                ) -> Iterable[list[tuple[Mapping[str, Tensor], float | None]]]:
    """Consecutive groups of `size` `(batch, share)` pairs; an incomplete last one is
    dropped (a multi-batch step needs all of its batches)."""
    group: list[tuple[Mapping[str, Tensor], float | None]] = []
    for pair in pairs:
        group.append(pair)
        if len(group) == size:
            yield group
            group = []


def trained_parameters(model: nn.Module, surgery: Surgery) -> list[nn.Parameter]:
    """What the stage trains: the model's and the training parts' trainable parameters
    (learned loss terms), not the weighting's, which may move while the model does not."""
    parts = [p for name, p in surgery.training_parts.named_parameters()
             if p.requires_grad and not name.startswith(f"{WEIGHTING_KEY}.")]
    return [p for p in model.parameters() if p.requires_grad] + parts


def check_trained(name: str, state: StageProgress, surgery: Surgery,
                  trained: list[nn.Parameter]) -> None:
    """A stage that skipped every step, whose every step had an exactly zero gradient, or
    after which no trained weight differs from its start, trained nothing: an error, not a
    model to evaluate and save (the cause may be anything from a loss weighting that zeroes
    every gradient to an optimizer that steps nothing, so the weights themselves are compared
    too; weight decay alone moves them, hence the gradient count)."""
    if state.step > 0 and surgery.skipped_steps >= state.step:
        raise TrainingError(
            f"stage {name!r}: all {state.step} optimizer step(s) were skipped (a NaN/inf loss "
            "or gradient each time, fewer in a row than max_nonfinite_steps), so the model "
            "is untrained and not saved; lower the learning rate or check the data and the "
            "loss weighting")
    if state.step > 0 and surgery.nonfinite.nonzero_steps == 0:
        raise TrainingError(
            f"stage {name!r}: every one of its {state.step} optimizer step(s) had an exactly "
            "zero gradient (a loss weighting or loss that zeroes every group, or a model "
            "whose trained parameters no loss reaches), so the model is untrained and not "
            "saved; check the loss weighting's initial weights and the losses")
    if state.start_digest is None:
        return
    unchanged = torch.tensor([float(weights_digest(trained) == state.start_digest)])
    parallel = surgery.data_parallel
    if parallel.enabled:  # every rank decides alike (FSDP2: each digests its own shards)
        unchanged = parallel.all_reduce_(unchanged.to(_device(trained)), op=_min_op()).cpu()
    if bool(unchanged.item()):
        raise TrainingError(
            f"stage {name!r}: after {state.step} optimizer step(s) no trained weight differs "
            "from its starting value (every gradient exactly zero, or an optimizer that steps "
            "none of the model's parameters), so the model is untrained and not saved; check "
            "the loss weighting's initial weights, the learning rate and the optimizer")


def weights_digest(params: Iterable[Tensor]) -> str:
    """A hash of the parameters' exact bytes (equal iff no entry changed, to the bit); of
    this rank's shards under FSDP2."""
    digest = hashlib.blake2b(digest_size=16)
    for p in params:
        data = local(p.detach()).reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
        digest.update(data.tobytes())
    return digest.hexdigest()


def _device(params: list[nn.Parameter]) -> torch.device:
    return local(params[0]).device if params else torch.device("cpu")


def _min_op() -> Any:
    import torch.distributed as dist

    return dist.ReduceOp.MIN
