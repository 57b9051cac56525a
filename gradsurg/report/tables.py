"""Rich tables of early-exit results; callers decide where to print or record them.

Metric values are fractions (as ``gradsurg.metrics`` returns them) and are shown times
``scale`` with 2 decimals, 100 by default as GLUE reports scores (accuracy 0.9123 -> 91.23).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # annotations only: importing the multi-exit stack pulls in transformers
    from gradsurg.multiexit.evaluation.sweeps import ExitSweepPoint
    from gradsurg.multiexit.evaluation.tradeoff_summary import TradeoffSummary


def _metric_keys(metrics: Iterable[Mapping[str, float]]) -> list[str]:
    """Union of keys in order of first appearance, so columns follow the metric dicts."""
    keys: dict[str, None] = {}
    for row in metrics:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _format(metrics: Mapping[str, float | None], key: str, scale: float) -> str:
    if key not in metrics:
        return "-"
    value = metrics[key]
    return "undefined" if value is None else f"{value * scale:.2f}"


def exit_metrics_table(per_exit: Sequence[Mapping[str, float]],
                       title: str = "Metrics per exit", *, scale: float = 100.0) -> Table:
    """One row per exit layer (1-based), one column per metric key."""
    keys = _metric_keys(per_exit)
    table = Table(title=title)
    table.add_column("exit", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for layer, metrics in enumerate(per_exit, start=1):
        table.add_row(str(layer), *(_format(metrics, key, scale) for key in keys))
    return table


def sweep_table(points: Sequence[ExitSweepPoint], primary: str,
                title: str = "Early-exit sweep", *, parameter: str = "threshold",
                scale: float = 100.0) -> Table:
    """Swept value, primary metric (bold), other metrics, expected time % and exit counts.

    The last column lists examples leaving at exits 1..L, separated by spaces.
    """
    keys = _metric_keys(point.metric for point in points)
    if points and primary not in keys:
        raise ValueError(f"primary metric {primary!r} not among the sweep's metrics {keys}")
    others = [key for key in keys if key != primary]
    table = Table(title=title)
    table.add_column(parameter, justify="right")
    table.add_column(primary, justify="right", style="bold")
    for key in others:
        table.add_column(key, justify="right")
    table.add_column("time %", justify="right")
    table.add_column("exits (layer 1..L)")
    for point in points:
        table.add_row(
            f"{point.value:g}",
            _format(point.metric, primary, scale),
            *(_format(point.metric, key, scale) for key in others),
            f"{point.time_percent:.2f}",
            " ".join(str(count) for count in point.exit_counts),
        )
    return table


def tradeoff_table(summaries: Mapping[str, TradeoffSummary], title: str = "Trade-off summary",
                   *, scale: float = 100.0) -> Table:
    """One row per run: area under the metric-vs-time front, best metric within each budget
    (time % in brackets), least time within the tolerance of the reference."""
    budgets = list(next(iter(summaries.values())).best_within) if summaries else []
    table = Table(title=title)
    table.add_column("run")
    table.add_column("area", justify="right")
    for budget in budgets:
        table.add_column(f"<= {budget}%", justify="right")
    table.add_column("least time % within tolerance", justify="right")
    for name, summary in summaries.items():
        cells = []
        for budget in budgets:
            best = summary.best_within[budget]
            cells.append("-" if best is None else
                         f"{best[summary.metric] * scale:.2f} ({best['time_percent']:.1f})")
        least = summary.least_time_within
        table.add_row(name, f"{summary.auc * scale:.2f}", *cells,
                      "-" if least is None else f"{least:.1f}")
    return table
