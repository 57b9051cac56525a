"""A short, ordinary training loop around Surgery: progress bar, JSONL log, LR schedule."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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

from gradsurg.surgery import Surgery

LossFn = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


class JsonlLog:
    """Appends one JSON object per line, flushed at once so a crash loses nothing logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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


@dataclass
class StageResult:
    name: str
    steps: int
    seconds: float
    means: dict[str, float]


def stage_steps(steps_per_epoch: int, epochs: float) -> int:
    """Optimizer steps in a stage; fractional epochs train part of the last one."""
    return max(1, math.ceil(steps_per_epoch * epochs))


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def train_stage(
    *,
    name: str,
    model: nn.Module,
    batches: Callable[[int], Iterable[Mapping[str, Tensor]]],
    steps_per_epoch: int,
    epochs: float,
    loss_fn: LossFn,
    surgery: Surgery,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    log: JsonlLog,
    log_every: int,
    progress: Progress,
) -> StageResult:
    """Run `ceil(steps_per_epoch * epochs)` optimizer steps; `batches(epoch)` yields batches."""
    total = stage_steps(steps_per_epoch, epochs)
    task = progress.add_task(name, total=total, status="", rate="")
    interval, overall = Interval(), Interval()
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(math.ceil(epochs)):
        for batch in batches(epoch):
            losses = loss_fn(batch)
            surgery.backward(losses)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            values = {f"loss/{k}": v.item() for k, v in losses.items()}
            values.update(surgery.diagnostics)
            values.pop("nonfinite/skipped", None)  # counted in `skipped_steps` instead
            interval.add(values)
            overall.add(values)
            rate = step / (time.perf_counter() - start)
            shown = " ".join(f"{k[5:]}={v:.3f}" for k, v in values.items() if k.startswith("loss/"))
            progress.update(task, advance=1, status=shown, rate=f"{rate:.2f} it/s")
            if step % log_every == 0 or step == total:
                log.write({"stage": name, "step": step, "epoch": epoch + 1,
                           "lr": scheduler.get_last_lr()[0],
                           "skipped_steps": surgery.skipped_steps, **interval.means()})
                interval = Interval()
            if step >= total:
                break
        if step >= total:
            break
    return StageResult(name, step, time.perf_counter() - start, overall.means())
