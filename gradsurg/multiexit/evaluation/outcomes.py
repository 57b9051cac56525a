"""What a set of exits amounts to: predictions, metrics, expected time % and exit histogram.

One implementation for everything that scores exits: the offline sweeps (exits simulated on
collected logits) and ``gradsurg eval`` (exits taken by the layer-by-layer runner), so the two
report the same numbers for the same exits. Exit indices are 0-based; the cost model counts
layers, so exit ``i`` costs ``i + 1`` of the ``L`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradsurg.data.glue import TaskSpec
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.exit_loop import check_all_logits

__all__ = [
    "ExitOutcome",
    "exit_histogram",
    "expected_time_percent",
    "predictions",
    "score_exits",
    "select_exit_outputs",
]


def predictions(outputs: Tensor, task: TaskSpec) -> Tensor:
    """Answers from outputs ``[..., C]``: the argmax class, or ``outputs[..., 0]`` for a
    regression task."""
    return outputs[..., 0] if task.is_regression else outputs.argmax(dim=-1)


def _check_exit_layers(exit_layers: Tensor, num_layers: int,
                      num_examples: int | None = None) -> Tensor:
    """``exit_layers`` as a long tensor, after checking it is 1-D and in ``[0, num_layers)``."""
    exits = torch.as_tensor(exit_layers)
    if exits.ndim != 1 or exits.is_floating_point() or exits.dtype == torch.bool:
        raise ValueError("exit_layers must be a 1-D integer tensor, got "
                         f"{exits.dtype} of shape {tuple(exits.shape)}")
    if num_examples is not None and exits.numel() != num_examples:
        raise ValueError(f"got {exits.numel()} exit layers for {num_examples} examples")
    if exits.numel() and (int(exits.min()) < 0 or int(exits.max()) >= num_layers):
        raise ValueError(f"exit layers must be in [0, {num_layers}), got values in "
                         f"[{int(exits.min())}, {int(exits.max())}]")
    return exits.long()


def select_exit_outputs(all_logits: Tensor, exit_layers: Tensor) -> Tensor:
    """The ``[N, C]`` outputs each example produced at its own exit, from ``[L, N, C]``."""
    check_all_logits(all_logits)
    num_layers, num_examples = all_logits.shape[:2]
    exits = _check_exit_layers(exit_layers, num_layers, num_examples)
    index = torch.arange(num_examples, device=all_logits.device)
    return all_logits[exits.to(all_logits.device), index]


def expected_time_percent(exit_layers: Tensor, num_layers: int) -> float:
    """Layers run as a share of running all of them: ``sum(exit + 1) / (N * L) * 100``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    exits = _check_exit_layers(exit_layers, num_layers)
    if exits.numel() == 0:
        raise ValueError("cannot compute the expected time of zero examples")
    layers_run = int((exits + 1).sum())  # exact integer arithmetic, no float accumulation
    return 100.0 * layers_run / (exits.numel() * num_layers)


def exit_histogram(exit_layers: Tensor, num_layers: int) -> list[int]:
    """Examples leaving at each exit, index 0 = the first layer's exit."""
    exits = _check_exit_layers(exit_layers, num_layers)
    return torch.bincount(exits.cpu(), minlength=num_layers).tolist()


@dataclass(frozen=True)
class ExitOutcome:
    """Quality and cost of one set of exits."""

    metric: dict[str, float]
    time_percent: float
    exit_counts: list[int]  # examples leaving at each exit, index 0 = first layer


def score_exits(outputs: Tensor, exit_layers: Tensor, labels: Any, task: TaskSpec, *,
                num_layers: int) -> ExitOutcome:
    """Metrics of the ``[N, C]`` outputs each example gave at its exit, with the expected
    time % and the exit histogram of ``exit_layers``."""
    return ExitOutcome(
        metric=compute_metrics(task, predictions(outputs, task), labels),
        time_percent=expected_time_percent(exit_layers, num_layers),
        exit_counts=exit_histogram(exit_layers, num_layers),
    )
