"""Early-exit evaluation of a multi-exit model from its stacked exit logits.

Everything here works on ``all_logits`` of shape ``[L, N, C]`` (exit layer, example, class),
collected once after training, so a sweep over a policy's parameter costs no extra forward
passes. Exits are chosen by :func:`gradsurg.multiexit.runner.simulate_exits`, the same loop
the layer-by-layer runner uses. Exit indices are 0-based; the cost model
(``expected_time_percent``) counts layers 1-based, as running exit ``i`` costs ``i + 1`` layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradsurg.data.glue import TaskSpec, get_task
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.policies import POLICIES, ExitPolicy, build_policy
from gradsurg.multiexit.runner import check_all_logits, simulate_exits

DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Entropy thresholds of the sweep, from "never exit early" (0) upwards."""

DEFAULT_SWEEPS: dict[str, tuple[float, ...]] = {
    "entropy": DEFAULT_THRESHOLDS,
    "normalized_entropy": (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
    "max_prob": (1.0, 0.999, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6),
    "confidence_window": (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
}
"""Sweeps for policies whose swept parameter does not depend on the depth; ``patience``
and ``fixed`` sweep 1..L-1 and 1..L."""


def default_sweep(policy: str, num_layers: int) -> list[float]:
    """The values a trade-off sweep tries for ``policy`` on a model with ``num_layers``."""
    if policy in DEFAULT_SWEEPS:
        return list(DEFAULT_SWEEPS[policy])
    if policy == "patience":
        return [float(p) for p in range(num_layers - 1, 0, -1)]
    return [float(layer) for layer in range(num_layers, 0, -1)]


@dataclass(frozen=True)
class ExitSweepPoint:
    """One value of a policy's swept parameter: its metrics, cost and where examples left."""

    value: float
    metric: dict[str, float]
    time_percent: float
    exit_counts: list[int]  # examples leaving at each exit, index 0 = first layer


def select_exit_outputs(all_logits: torch.Tensor, exit_layers: torch.Tensor) -> torch.Tensor:
    """The ``[N, C]`` outputs each example produced at its own exit."""
    check_all_logits(all_logits)
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


def _check_width(spec: TaskSpec, num_outputs: int) -> None:
    if num_outputs != spec.num_labels:
        raise ValueError(f"task {spec.name!r} has {spec.num_labels} outputs, got logits with "
                         f"{num_outputs}")


def policy_sweep(all_logits: torch.Tensor, labels: Any, task: str | TaskSpec, policy: str,
                 values: Sequence[float] | None = None,
                 params: Mapping[str, Any] | None = None) -> list[ExitSweepPoint]:
    """Metric, expected time % and exit histogram for each value of the policy's swept
    parameter (``threshold`` for entropy, ``patience`` for patience, ...), in the given order.

    ``params`` fixes the policy's other parameters; ``values`` defaults to
    :func:`default_sweep`. Every policy is built before any work, so a bad value fails fast.
    """
    check_all_logits(all_logits)
    spec = get_task(task)
    _check_width(spec, all_logits.shape[-1])
    num_layers = all_logits.shape[0]
    values = default_sweep(policy, num_layers) if values is None else list(values)
    policies = [_policy_at(policy, params, value) for value in values]
    return [operating_point(rule, value, all_logits, labels, spec)
            for value, rule in zip(values, policies)]


def operating_point(rule: ExitPolicy, value: float, all_logits: torch.Tensor, labels: Any,
                    spec: TaskSpec) -> ExitSweepPoint:
    """Metric, expected time % and exit histogram of one policy on the collected logits;
    ``value`` is only recorded (the swept parameter's value that built ``rule``)."""
    num_layers = all_logits.shape[0]
    exits = simulate_exits(rule, all_logits).exit_layers
    outputs = select_exit_outputs(all_logits, exits)
    predictions = outputs[:, 0] if spec.is_regression else outputs.argmax(dim=-1)
    return ExitSweepPoint(
        value=value,
        metric=compute_metrics(spec, predictions, labels),
        time_percent=expected_time_percent(exits, num_layers),
        exit_counts=torch.bincount(exits.cpu(), minlength=num_layers).tolist(),
    )


def _policy_at(name: str, params: Mapping[str, Any] | None, value: float) -> ExitPolicy:
    policy_cls = POLICIES.get(name)
    swept = policy_cls.sweep_parameter
    if swept is None:
        return build_policy(name, params)
    # Integer parameters (patience, layer) arrive as floats from YAML lists of numbers.
    default = getattr(policy_cls, swept, None)
    typed = int(value) if isinstance(default, int) and float(value).is_integer() else value
    return build_policy(name, {**(params or {}), swept: typed})


def per_exit_metrics(all_logits: torch.Tensor, labels: Any,
                     task: str | TaskSpec) -> list[dict[str, float]]:
    """Metrics at each exit as if every example left there (index 0 = first layer).

    Predictions are the argmax for classification and ``logits[..., 0]`` for regression.
    """
    check_all_logits(all_logits)
    spec = get_task(task)
    _check_width(spec, all_logits.shape[-1])
    predictions = all_logits[..., 0] if spec.is_regression else all_logits.argmax(dim=-1)
    return [compute_metrics(spec, layer_predictions, labels) for layer_predictions in predictions]
