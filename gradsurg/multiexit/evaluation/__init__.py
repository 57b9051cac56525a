"""Offline evaluation of a multi-exit model from its collected exit logits ``[L, N, C]``.

``outcomes`` scores a set of exits (predictions, metrics, expected time %, exit histogram),
``sweeps`` varies a policy's parameter over a fixed list, ``dense_sweeps`` over every value
where some example's exit changes, and ``tradeoff_summary`` reduces the resulting curve to a
few numbers (area, best within a time budget, least time within a tolerance); ``held_out``
gives each budget with the setting chosen on the other half of the examples.
"""

from gradsurg.multiexit.evaluation.dense_sweeps import DenseSweep, dense_sweep
from gradsurg.multiexit.evaluation.outcomes import (
    ExitOutcome,
    exit_histogram,
    expected_time_percent,
    predictions,
    score_exits,
    select_exit_outputs,
)
from gradsurg.multiexit.evaluation.sweeps import (
    DEFAULT_THRESHOLDS,
    ExitSweepPoint,
    per_exit_metrics,
    policy_sweep,
)
from gradsurg.multiexit.evaluation.tradeoff_summary import TradeoffSummary, summarize

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DenseSweep",
    "ExitOutcome",
    "ExitSweepPoint",
    "TradeoffSummary",
    "dense_sweep",
    "exit_histogram",
    "expected_time_percent",
    "per_exit_metrics",
    "policy_sweep",
    "predictions",
    "score_exits",
    "select_exit_outputs",
    "summarize",
]
