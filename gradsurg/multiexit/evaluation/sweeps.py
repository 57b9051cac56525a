"""Early-exit sweeps of a multi-exit model over its stacked exit logits.

Everything here works on ``all_logits`` of shape ``[L, N, C]`` (exit layer, example, class),
collected once after training, so a sweep over a policy's parameter costs no extra forward
passes. Exits are chosen by :func:`gradsurg.multiexit.exit_loop.simulate_exits`, the same loop
the layer-by-layer runner uses, and scored by :mod:`gradsurg.multiexit.evaluation.outcomes`.
The policy is built once; each swept value is a copy with one parameter changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradsurg.data.glue import TaskSpec
from gradsurg.errors import ConfigError
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.evaluation.outcomes import predictions, score_exits, select_exit_outputs
from gradsurg.multiexit.exit_loop import check_all_logits, simulate_exits
from gradsurg.multiexit.policies import DEFAULT_THRESHOLDS, ExitPolicy

__all__ = ["DEFAULT_THRESHOLDS", "ExitSweepPoint", "operating_point", "per_exit_metrics",
           "policy_sweep", "sweep_points", "sweep_rules"]


@dataclass(frozen=True)
class ExitSweepPoint:
    """One value of a policy's swept parameter: its metrics, cost and where examples left."""

    value: float
    metric: dict[str, float]
    time_percent: float
    exit_counts: list[int]  # examples leaving at each exit, index 0 = first layer


def _check_width(spec: TaskSpec, num_outputs: int) -> None:
    if num_outputs != spec.num_labels:
        raise ValueError(f"task {spec.name!r} has {spec.num_labels} outputs, got logits with "
                         f"{num_outputs}")


def policy_sweep(all_logits: torch.Tensor, labels: Any, task: TaskSpec, policy: ExitPolicy,
                 values: Sequence[float] | None = None) -> list[ExitSweepPoint]:
    """Metric, expected time % and exit histogram for each value of the policy's swept
    parameter (``threshold`` for entropy, ``patience`` for patience, ...), in the given order.

    ``policy`` is the built rule (the recipe's ``exit_policy``, built once); ``values``
    defaults to its :meth:`~gradsurg.multiexit.policies.ExitPolicy.default_sweep`. Every
    value's rule is built before any work, so a bad value fails fast.
    """
    check_all_logits(all_logits)
    _check_width(task, all_logits.shape[-1])
    values = (policy.default_sweep(all_logits.shape[0]) if values is None else list(values))
    return sweep_points(all_logits, labels, task, sweep_rules(policy, values), values)


def sweep_points(all_logits: torch.Tensor, labels: Any, task: TaskSpec,
                 rules: Sequence[ExitPolicy], values: Sequence[float]) -> list[ExitSweepPoint]:
    """:func:`policy_sweep` with the rules built already: ``rules[i]`` is the policy at
    ``values[i]``, as :func:`sweep_rules` gives them (a run builds them before training)."""
    check_all_logits(all_logits)
    _check_width(task, all_logits.shape[-1])
    if len(rules) != len(values):
        raise ValueError(f"{len(rules)} rules for {len(values)} sweep values")
    return [operating_point(rule, value, all_logits, labels, task)
            for rule, value in zip(rules, values, strict=True)]


def sweep_rules(rule: ExitPolicy, values: Sequence[float]) -> list[ExitPolicy]:
    """``rule`` at each value of its swept parameter (``rule`` itself for each value when it
    has none), each validated like the recipe's own value; a value that does not work is a
    one-line :class:`ConfigError` naming it."""
    swept = rule.sweep_parameter
    if swept is None:
        return [rule for _ in values]
    rules = []
    for value in values:
        try:
            rules.append(rule.with_param(swept, value))
        except ConfigError as error:
            raise ConfigError(f"value {value!r} does not work for exit policy {rule.name!r} "
                              f"({error})") from None
    return rules


def operating_point(rule: ExitPolicy, value: float, all_logits: torch.Tensor, labels: Any,
                    task: TaskSpec) -> ExitSweepPoint:
    """Metric, expected time % and exit histogram of one policy on the collected logits;
    ``value`` is only recorded (the swept parameter's value that built ``rule``)."""
    exits = simulate_exits(rule, all_logits).exit_layers
    outcome = score_exits(select_exit_outputs(all_logits, exits), exits, labels, task,
                          num_layers=all_logits.shape[0])
    return ExitSweepPoint(value=value, metric=outcome.metric,
                          time_percent=outcome.time_percent, exit_counts=outcome.exit_counts)


def per_exit_metrics(all_logits: torch.Tensor, labels: Any,
                     task: TaskSpec) -> list[dict[str, float]]:
    """Metrics at each exit as if every example left there (index 0 = first layer).

    Predictions are the argmax for classification and ``logits[..., 0]`` for regression.
    """
    check_all_logits(all_logits)
    _check_width(task, all_logits.shape[-1])
    return [compute_metrics(task, answers, labels)
            for answers in predictions(all_logits, task)]
