"""Figures (PNG) and rich tables for reporting multi-exit / early-exit results."""

from gradsurg.report.plots import plot_exit_distribution, plot_exit_metrics, plot_tradeoff
from gradsurg.report.tables import exit_metrics_table, sweep_table, tradeoff_table

__all__ = [
    "exit_metrics_table",
    "plot_exit_distribution",
    "plot_exit_metrics",
    "plot_tradeoff",
    "sweep_table",
    "tradeoff_table",
]
