"""PNG figures for early-exit results: metric per exit, metric vs. cost, exit histogram; and
the conflict map of a run's loss groups (`gradsurg.report.conflicts`).

Figures are built with matplotlib's object-oriented API on an Agg canvas, so nothing here
touches pyplot's global state or the user's backend, and it works on headless machines.
Metric values are fractions (as ``gradsurg.metrics`` returns them) and are drawn times
``scale`` (100 by default, as GLUE reports scores).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradsurg.outputs import atomic_write_bytes

FIGSIZE = (8.0, 5.0)  # inches; at DPI this is 800 x 500 px
DPI = 100
MAX_MARKED_POINTS = 40  # curves with more points are drawn without markers


def _new_axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """The PNG rendered in memory, then written through gradsurg's one atomic path: a full
    disk is one error naming the file and leaves no half-written PNG (a run makes its
    `plots/` with `check_own_folder`, which refuses a link there)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)  # a run's plots/: check_own_folder first
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _metric_label(metric_name: str, scale: float) -> str:
    return metric_name if scale == 1 else f"{metric_name} (×{scale:g})"


def _layer_ticks(axes: Axes, num_layers: int) -> None:
    """Every layer gets a tick (as in BERT's 12 or 24 layers); long ranges get integer ticks."""
    if num_layers <= 24:
        axes.set_xticks(range(1, num_layers + 1))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _scaled(value: float | None, scale: float) -> float:
    """An undefined metric (None, e.g. Pearson of a constant) is a gap in the line."""
    return math.nan if value is None else value * scale


def _check_curves(curves: Mapping[str, Sequence[object]]) -> None:
    if not curves:
        raise ValueError("need at least one curve to plot")
    empty = [name for name, values in curves.items() if len(values) == 0]
    if empty:
        raise ValueError(f"curves without points: {', '.join(map(repr, empty))}")


def plot_exit_metrics(curves: Mapping[str, Sequence[float]], metric_name: str,
                      path: str | os.PathLike[str], *, title: str | None = None,
                      scale: float = 100.0) -> Path:
    """Line plot of the metric at each exit layer (1-based), one line per model or mode."""
    _check_curves(curves)
    figure, axes = _new_axes()
    for name, values in curves.items():
        layers = range(1, len(values) + 1)
        axes.plot(layers, [_scaled(v, scale) for v in values], marker="o", label=name)
    _layer_ticks(axes, max(len(values) for values in curves.values()))
    axes.set_xlabel("exit layer")
    axes.set_ylabel(_metric_label(metric_name, scale))
    axes.set_title(title or f"{metric_name} at each exit")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_tradeoff(curves: Mapping[str, Sequence[tuple[float, float]]], metric_name: str,
                  path: str | os.PathLike[str], *, title: str | None = None,
                  scale: float = 100.0) -> Path:
    """Metric against expected time % (points ``(time_percent, metric)``), one line each.

    Points are joined in order of time so a sweep in threshold order draws one clean curve.
    """
    _check_curves(curves)
    figure, axes = _new_axes()
    for name, points in curves.items():
        ordered = sorted(points, key=lambda point: point[0])
        marker = "o" if len(ordered) <= MAX_MARKED_POINTS else None  # dense sweeps: a line
        axes.plot([t for t, _ in ordered], [_scaled(m, scale) for _, m in ordered], marker=marker,
                  label=name)
    axes.set_xlabel("expected time (% of layers run)")
    axes.set_ylabel(_metric_label(metric_name, scale))
    axes.set_title(title or f"{metric_name} vs. expected time")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_exit_distribution(exit_counts: Sequence[int], path: str | os.PathLike[str], *,
                           title: str = "Examples leaving at each exit") -> Path:
    """Bar chart of how many examples leave at each exit layer (1-based), counts on top."""
    if len(exit_counts) == 0:
        raise ValueError("need the count of at least one exit layer")
    if any(count < 0 for count in exit_counts):
        raise ValueError(f"exit counts must be >= 0, got {list(exit_counts)}")
    figure, axes = _new_axes()
    bars = axes.bar(range(1, len(exit_counts) + 1), exit_counts, color="tab:blue")
    axes.bar_label(bars, labels=[str(int(count)) for count in exit_counts], padding=2)
    _layer_ticks(axes, len(exit_counts))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0, max(max(exit_counts), 1) * 1.12)  # room for the labels
    axes.set_xlabel("exit layer")
    axes.set_ylabel("examples")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


#: Cells up to this many are labelled with their value.
MAX_LABELLED_CELLS = 400


def _block_label(block: str) -> str:
    """`encoder.layers.0` -> `layer 1` (layers count from 1, as exits do); others as named."""
    match = re.fullmatch(r"(?:.*\.)?layers?\.(\d+)", block)
    return f"layer {int(match.group(1)) + 1}" if match else block


def plot_conflict_map(result: Mapping[str, Any], path: str | os.PathLike[str], *,
                      title: str | None = None) -> Path:
    """Two heatmaps, blocks down and group pairs across: the mean cosine of each pair's
    gradients (-1..1, negative in red) and the share of steps they conflicted (0..1, each
    cell labelled in %, rounded down); a pair a block never saw is blank. `result` is
    `gradsurg.report.conflicts.conflict_map`'s."""
    blocks, pairs = list(result["blocks"]), list(result["pairs"])
    if not blocks or not pairs:
        raise ValueError("the conflict map has no cells to draw")
    exits = all(re.fullmatch(r"exit\d+/exit\d+", pair) for pair in pairs)
    columns = [pair.replace("exit", "") for pair in pairs] if exits else pairs
    width = min(24.0, 2.5 + 0.42 * len(pairs) * 2)
    height = min(24.0, 2.0 + 0.42 * len(blocks))
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2)
    labelled = len(blocks) * len(pairs) <= MAX_LABELLED_CELLS
    for axes, key, name, (low, high), colours in (
            (panels[0], "mean_cosine", "mean cosine", (-1.0, 1.0), "coolwarm_r"),
            (panels[1], "conflict_share",
             "share of steps with cosine < 0 (cells: %, rounded down)",
             (0.0, 1.0), "Reds")):
        grid = [[math.nan if result[key][b][p] is None else result[key][b][p] for p in pairs]
                for b in blocks]
        image = axes.imshow(grid, cmap=colours, vmin=low, vmax=high, aspect="auto")
        axes.set_xticks(range(len(pairs)), columns, rotation=90, fontsize=7)
        axes.set_yticks(range(len(blocks)), [_block_label(b) for b in blocks], fontsize=7)
        axes.set_xlabel("exit pair" if exits else "group pair", fontsize=8)
        axes.set_title(name, fontsize=9)
        figure.colorbar(image, ax=axes)
        if labelled and key == "conflict_share":
            for row, values in enumerate(grid):
                for column, value in enumerate(values):
                    if not math.isnan(value):
                        # rounded down, so a cell labelled 10 or more is one the verdict's
                        # default threshold (10%) counts
                        axes.text(column, row, f"{math.floor(value * 100 + 1e-9)}",
                                  ha="center", va="center",
                                  fontsize=6, color="white" if value > 0.5 else "black")
    figure.suptitle(title or f"where the loss groups conflict ({result.get('steps', '?')} "
                    "steps)", fontsize=10)
    return _save(figure, path)
