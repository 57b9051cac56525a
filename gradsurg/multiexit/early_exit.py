"""Early-exit evaluation of a multi-exit model from its stacked exit logits.

Everything here works on ``all_logits`` of shape ``[L, N, C]`` (exit layer, example, class),
collected once after training, so a threshold sweep costs no extra forward passes. The
policy is DeeBERT/RomeBERT's: an example leaves at the first exit whose prediction entropy
is below the threshold, and at the last exit otherwise. Exit indices are 0-based; the cost
model (``expected_time_percent``) counts layers 1-based, as running exit ``i`` costs
``i + 1`` layers.

Policies are split into "which exits are confident" (a ``[L, N]`` boolean mask) and
``first_exit`` (where each example leaves), so other confidence rules can reuse the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradsurg.data.glue import TaskSpec, get_task
from gradsurg.errors import ConfigError
from gradsurg.metrics import compute_metrics

DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Entropy thresholds of the sweep, from "never exit early" (0) upwards."""


@dataclass(frozen=True)
class ExitSweepPoint:
    """One threshold of a sweep: its metrics, cost and where the examples left."""

    threshold: float
    metric: dict[str, float]
    time_percent: float
    exit_counts: list[int]  # examples leaving at each exit, index 0 = first layer


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dim, shape ``logits.shape[:-1]``.

    Computed from ``log_softmax`` so huge logits (1e4) do not overflow; classes with zero
    probability contribute exactly 0, so a one-hot-like distribution has entropy 0. Half
    precision inputs are computed in float32.
    """
    if logits.ndim == 0:
        raise ValueError("logits must have a class dimension, got a scalar")
    if logits.shape[-1] == 1:
        raise ConfigError("entropy exit needs a classification task: logits have a single "
                          "output (regression), whose entropy is undefined")
    if logits.shape[-1] == 0:
        raise ValueError("logits have zero classes")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    # p == 0 exactly where log_p is very negative or -inf; 0 * -inf would be NaN.
    terms = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    # clamp guards against rounding below 0; + 0.0 turns -0.0 into 0.0 for printing.
    return (-terms.sum(dim=-1)).clamp_min(0.0) + 0.0


def first_exit(confident: torch.Tensor) -> torch.Tensor:
    """0-based index of the first confident exit per example, else the last exit.

    ``confident`` is a boolean ``[L, N]`` mask; the result is a long ``[N]`` tensor. The last
    exit is always taken when no earlier one is confident, since the model must answer.
    """
    if confident.dtype != torch.bool:
        raise ValueError(f"confident must be a bool tensor, got {confident.dtype}")
    if confident.ndim != 2 or confident.shape[0] == 0:
        raise ValueError(f"confident must be [L, N] with L >= 1, got {tuple(confident.shape)}")
    forced = confident.clone()
    forced[-1] = True
    # argmax returns the first maximal index, i.e. the first True along the layer axis.
    return forced.to(torch.uint8).argmax(dim=0)


def _check_all_logits(all_logits: torch.Tensor) -> None:
    if all_logits.ndim != 3 or 0 in all_logits.shape:
        raise ValueError("all_logits must be a non-empty [L, N, C] tensor, got shape "
                         f"{tuple(all_logits.shape)}")


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if math.isnan(value) or value < 0:
        raise ConfigError(f"entropy threshold must be a number >= 0, got {threshold!r}")
    return value


def entropy_exit_layers(all_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """0-based exit per example: the first layer with entropy < ``threshold``, else ``L - 1``.

    Threshold 0 never exits early (entropy is never negative); ``inf`` always exits at the
    first layer. NaN logits never count as confident.
    """
    _check_all_logits(all_logits)
    value = _check_threshold(threshold)
    return first_exit(prediction_entropy(all_logits) < value)


def select_exit_outputs(all_logits: torch.Tensor, exit_layers: torch.Tensor) -> torch.Tensor:
    """The ``[N, C]`` outputs each example produced at its own exit."""
    _check_all_logits(all_logits)
    num_layers, num_examples = all_logits.shape[:2]
    exits = _check_exit_layers(exit_layers, num_layers, num_examples)
    index = torch.arange(num_examples, device=all_logits.device)
    return all_logits[exits.to(all_logits.device), index]


def _check_exit_layers(exit_layers: torch.Tensor, num_layers: int,
                       num_examples: int | None = None) -> torch.Tensor:
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


def expected_time_percent(exit_layers: torch.Tensor, num_layers: int) -> float:
    """Layers run as a share of running all of them: ``sum(exit + 1) / (N * L) * 100``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    exits = _check_exit_layers(exit_layers, num_layers)
    if exits.numel() == 0:
        raise ValueError("cannot compute the expected time of zero examples")
    layers_run = int((exits + 1).sum())  # exact integer arithmetic, no float accumulation
    return 100.0 * layers_run / (exits.numel() * num_layers)


def _classification_spec(task: str | TaskSpec, num_outputs: int) -> TaskSpec:
    spec = get_task(task)
    if spec.is_regression:
        raise ConfigError(f"entropy exit needs a classification task, got regression task "
                          f"{spec.name!r}")
    _check_width(spec, num_outputs)
    return spec


def _check_width(spec: TaskSpec, num_outputs: int) -> None:
    if num_outputs != spec.num_labels:
        raise ValueError(f"task {spec.name!r} has {spec.num_labels} outputs, got logits with "
                         f"{num_outputs}")


def entropy_sweep(all_logits: torch.Tensor, labels: Any, task: str | TaskSpec,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[ExitSweepPoint]:
    """Metric, expected time % and exit histogram for each entropy threshold, in order."""
    _check_all_logits(all_logits)
    spec = _classification_spec(task, all_logits.shape[-1])
    num_layers = all_logits.shape[0]
    values = [_check_threshold(threshold) for threshold in thresholds]  # fail before work
    entropy = prediction_entropy(all_logits)  # once for all thresholds
    points = []
    for threshold in values:
        exits = first_exit(entropy < threshold)
        predictions = select_exit_outputs(all_logits, exits).argmax(dim=-1)
        points.append(ExitSweepPoint(
            threshold=threshold,
            metric=compute_metrics(spec, predictions, labels),
            time_percent=expected_time_percent(exits, num_layers),
            exit_counts=torch.bincount(exits.cpu(), minlength=num_layers).tolist(),
        ))
    return points


def per_exit_metrics(all_logits: torch.Tensor, labels: Any,
                     task: str | TaskSpec) -> list[dict[str, float]]:
    """Metrics at each exit as if every example left there (index 0 = first layer).

    Predictions are the argmax for classification and ``logits[..., 0]`` for regression.
    """
    _check_all_logits(all_logits)
    spec = get_task(task)
    _check_width(spec, all_logits.shape[-1])
    predictions = all_logits[..., 0] if spec.is_regression else all_logits.argmax(dim=-1)
    return [compute_metrics(spec, layer_predictions, labels) for layer_predictions in predictions]
