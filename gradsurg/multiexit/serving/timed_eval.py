"""Timed GLUE evaluation of a saved model under an exit policy, for ``gradsurg eval``.

The passes go through :class:`~gradsurg.multiexit.exit_loop.EarlyExitRunner`, so the time
reported is the time the early exit really takes; quality and cost are scored by
:mod:`gradsurg.multiexit.evaluation.outcomes`, as the offline sweeps score theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradsurg.data.glue import TaskSpec
from gradsurg.devices import to_device
from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.outcomes import score_exits
from gradsurg.multiexit.exit_loop import EarlyExitRunner
from gradsurg.multiexit.policies import ExitPolicy, FixedPolicy
from gradsurg.multiexit.serving.loaded_model import LoadedModel
from gradsurg.multiexit.serving.timing import RunnerTimer

__all__ = ["EvalReport", "evaluate_split"]


@dataclass
class EvalReport:
    """What ``gradsurg eval`` prints: quality, predicted cost and measured cost."""

    task: str
    split: str
    policy: str
    examples: int
    metric: dict[str, float]
    time_percent: float
    seconds: float
    exit_counts: list[int]
    full_depth_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_speedup(self) -> float:
        return 100.0 / self.time_percent

    @property
    def measured_speedup(self) -> float | None:
        if self.full_depth_seconds is None:
            return None
        return self.full_depth_seconds / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "split": self.split, "policy": self.policy,
                "examples": self.examples, **self.metric, "time_percent": self.time_percent,
                "seconds": self.seconds, "examples_per_second": self.examples / self.seconds,
                "exit_counts": self.exit_counts, "predicted_speedup": self.predicted_speedup,
                "full_depth_seconds": self.full_depth_seconds,
                "measured_speedup": self.measured_speedup, **self.extra}


def _timed_pass(loaded: LoadedModel, policy: ExitPolicy, loader: Iterable[Mapping[str, Tensor]]
                ) -> tuple[Tensor, Tensor, Tensor, float]:
    runner = EarlyExitRunner(loaded.model, policy)
    timer = RunnerTimer(loaded.device)
    logits, exits, labels = [], [], []
    for batch in loader:
        out = timer.run(runner, to_device(batch, loaded.device))
        logits.append(out.logits.float().cpu())
        exits.append(out.exit_layers.cpu())
        labels.append(batch["labels"])
    return torch.cat(logits), torch.cat(exits), torch.cat(labels), timer.seconds


def evaluate_split(loaded: LoadedModel, policy: ExitPolicy, *, task: TaskSpec | None = None,
                   split: str = "dev", data_dir: str | None = None, batch_size: int = 32,
                   max_length: int = 128, max_rows: int | None = None,
                   full_depth: bool = False) -> EvalReport:
    """Score a saved model on a GLUE split under ``policy``, timing the early-exit passes.

    With ``full_depth`` the same batches also run through every layer (last exit only) and
    the report carries both times, so the measured speed-up sits next to the predicted one.
    """
    from torch.utils.data import DataLoader

    from gradsurg.data.collate import GlueCollator, tokenize_dataset
    from gradsurg.data.glue import load_glue

    spec = _task_for(loaded, task)
    data = tokenize_dataset(load_glue(spec, split, data_dir=data_dir, max_rows=max_rows),
                            loaded.tokenizer, max_length=max_length)
    collate = GlueCollator(loaded.tokenizer)
    loader = list(DataLoader(data, batch_size=batch_size, collate_fn=collate))
    logits, exits, labels, seconds = _timed_pass(loaded, policy, loader)
    num_layers = loaded.model.num_exits
    outcome = score_exits(logits, exits, labels, spec, num_layers=num_layers)
    report = EvalReport(
        task=spec.name, split=split, policy=policy.describe(), examples=int(labels.shape[0]),
        metric=outcome.metric, time_percent=outcome.time_percent, seconds=seconds,
        exit_counts=outcome.exit_counts,
    )
    if full_depth:
        report.full_depth_seconds = _timed_pass(loaded, FixedPolicy(layer=num_layers), loader)[3]
    return report


def _task_for(loaded: LoadedModel, task: TaskSpec | None) -> TaskSpec:
    saved = loaded.task
    if task is None:
        if saved is None:
            raise ConfigError("the model folder does not record its task; pass --task")
        return saved
    if task.num_labels != loaded.model.config.num_labels:
        raise ConfigError(f"task {task.name!r} has {task.num_labels} output(s) but the model has "
                          f"{loaded.model.config.num_labels}")
    return task
