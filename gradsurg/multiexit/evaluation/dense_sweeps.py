"""Budget-fair trade-off curves: sweeps whose values come from the model's own outputs.

A fixed threshold list measures the list as much as the model (on the quickstart model every
entropy threshold below 0.6 gives 57-100% time and the next, 0.7, gives 17%). Here the swept
values are the points where some example's exit changes, so the curve has every operating
point the policy can reach (thinned to at most ``max_points``), from 100/L % to 100 % time.

Which rule is swept, and where its values come from, is the recipe's policy's own
:meth:`~gradsurg.multiexit.policies.ExitPolicy.dense_family` (a plugin's policy defines its
own, or has none); the built-in ones:

- ``entropy``, ``normalized_entropy``, ``confidence_window``: ``threshold``; an example leaves
  at the first exit whose score is below it, so its exit changes exactly where the threshold
  passes a running minimum of its scores over exits 1..L-1. Those minima are the thresholds.
- ``max_prob``: the same with running maxima (it leaves when the score is above).
- ``patience`` (classification) and ``fixed``: every integer value (1..L-1, 1..L).
- Regression (one output): PABEE's rule, ``patience`` with ``tolerance`` swept. An example
  leaves at exit l when the last ``patience`` changes |y_l - y_(l-1)| are all below the
  tolerance, so the score at l is the largest of those changes and the thresholds are again
  its running minima. The patience is the recipe's when it asks for ``patience``, else 1 (the
  densest curve: exits 2..L). A regression recipe that asks for ``fixed`` gets ``fixed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradsurg.data.glue import TaskSpec
from gradsurg.multiexit.evaluation.sweeps import ExitSweepPoint, operating_point
from gradsurg.multiexit.exit_loop import check_all_logits
from gradsurg.multiexit.policies import DenseFamily, ExitPolicy, FixedPolicy

__all__ = [
    "DEFAULT_MAX_POINTS",
    "DenseSweep",
    "change_thresholds",
    "dense_sweep",
    "dense_values",
    "thin",
]

DEFAULT_MAX_POINTS = 200
"""Most swept values kept; beyond it the values are thinned to evenly spaced quantiles."""


@dataclass(frozen=True)
class DenseSweep:
    """A policy (name and fixed parameters), the parameter swept, and its operating points;
    ``rule`` is that policy, built (each point is ``rule.with_param(parameter, value)``)."""

    policy: str
    params: dict[str, Any]
    parameter: str
    points: list[ExitSweepPoint]
    rule: ExitPolicy = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The form results.json stores: ``{policy, parameter, points: [...]}``."""
        return {
            "policy": {"name": self.policy, **self.params},
            "parameter": self.parameter,
            "points": [{self.parameter: p.value, **p.metric, "time_percent": p.time_percent,
                        "exit_counts": p.exit_counts} for p in self.points],
        }


def change_thresholds(scores: Tensor, *, leaves_below: bool, upper: float = float("inf")
                      ) -> list[float]:
    """Every threshold at which some example's exit changes, plus one past all of them.

    ``scores`` is ``[L-1, N]`` (the last exit is always taken). An example leaves at the first
    exit whose score is below the threshold t (``leaves_below``); that exit depends only on
    which running minima of its scores are below t, so t = each distinct running minimum r
    gives one exit vector per interval (r_prev, r] (``score < r`` is exactly ``score <=
    r_prev``), and one value above the largest gives the interval past it. Values are float32
    numbers, so comparing them with float32 scores is exact. For ``leaves_below=False``
    (leave when above) the same holds with maxima, mirrored. Sorted from "never leave early"
    to "leave as early as possible". Non-finite scores (NaN outputs) never count.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [L-1, N], got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:  # a single exit
        return [0.0 if leaves_below else float(upper)]
    values = scores.detach().float().cpu()
    signed = values if leaves_below else -values
    # A NaN score never leaves, like +inf; it must not hide the example's later scores.
    signed = torch.where(torch.isnan(signed), torch.full_like(signed, float("inf")), signed)
    running = torch.cummin(signed, dim=0).values
    records = np.unique(running[torch.isfinite(running)].numpy())  # ascending, float32
    if records.size == 0:  # nothing can leave early: only the full-depth point
        return [0.0 if leaves_below else float(upper)]
    past = np.nextafter(records[-1], np.float32(np.inf))  # just past the last record
    if leaves_below:
        thresholds = [float(r) for r in records]
        if float(past) <= upper:
            thresholds.append(float(past))
        elif records[-1] < upper:
            thresholds.append(float(upper))
        return thresholds
    # Leaving above t: t = -r for each record r of -score; past the last: just below the
    # smallest score, floored at 0 (every policy threshold is >= 0).
    thresholds = [float(-r) for r in records]
    below = -past
    if below >= 0:
        thresholds.append(float(below))
    elif -records[-1] > 0:
        thresholds.append(0.0)
    return thresholds


def thin(values: list[float], max_points: int) -> list[float]:
    """At most ``max_points`` of ``values`` (in their order): evenly spaced quantiles, the
    first and the last always kept."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if len(values) <= max_points:
        return list(values)
    index = np.unique(np.round(np.linspace(0, len(values) - 1, max_points)).astype(int))
    return [values[i] for i in index]


def dense_values(all_logits: Tensor, family: DenseFamily, *,
                 max_points: int = DEFAULT_MAX_POINTS) -> list[float]:
    """The values of ``family.parameter`` the dense sweep tries, from full depth to earliest
    exits: where some example's exit changes (a family with a score), else every value of the
    rule's default sweep."""
    check_all_logits(all_logits)
    if family.score is None:
        return family.rule.default_sweep(all_logits.shape[0])
    scores = family.score(all_logits)
    return thin(change_thresholds(scores, leaves_below=family.leaves_below,
                                  upper=family.upper), max_points)


def dense_sweep(all_logits: Tensor, labels: Any, task: TaskSpec, policy: type[ExitPolicy],
                params: Mapping[str, Any] | None = None, *,
                max_points: int = DEFAULT_MAX_POINTS) -> DenseSweep | None:
    """Every operating point of the family of ``policy`` (the recipe's policy class, with the
    parameters ``params`` the recipe set; see the module docstring); None for a policy that
    has no dense sweep (its ``dense_family`` is None): callers say so."""
    check_all_logits(all_logits)
    family = policy.dense_family(params, regression=task.is_regression)
    if family is None:
        return None
    if all_logits.shape[0] == 1 and family.parameter != "layer":  # one exit: nothing to decide
        family = FixedPolicy.dense_family(regression=task.is_regression)
    values = dense_values(all_logits, family, max_points=max_points)
    rule, parameter = family.rule, family.parameter
    points = [operating_point(rule.with_param(parameter, v), v, all_logits, labels, task)
              for v in values]
    return DenseSweep(policy=rule.name, params=dict(family.params), parameter=parameter,
                      points=points, rule=rule)
