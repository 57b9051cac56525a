"""Summary numbers of a metric-vs-time trade-off, the same for classification and regression.

A run's *operating points* are (expected time %, metric) pairs: its early-exit sweep plus its
fixed exits (every example leaving at exit k costs 100 k / L %, at the per-exit metric), so
every run has a point at 100/L % and at 100 %. From them:

- the **front** F(x) = the best metric among points with time <= x: a non-decreasing step
  function on [100/L, 100] (the upper envelope / Pareto front, as a user picking the best
  setting within a budget x sees it);
- the **normalized area** AUC = (1 / (100 - 100/L)) * integral of F(x) dx over [100/L, 100],
  the mean of F over the time range, so it lies between F(100/L) and the best metric and is
  in the metric's own units (L = 1: F(100));
- **best within b %**: F(b) and the time of the point reaching it (None below 100/L);
- **least time within a tolerance of a reference**: the smallest time of a point whose metric
  is >= reference - tolerance (default 1 point, 0.01, of a metric in [0, 1]; the reference is
  the run's own final exit, or in `gradsurg compare` the best final exit of the runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BUDGETS",
    "Point",
    "TradeoffSummary",
    "best_within",
    "fixed_exit_points",
    "front",
    "least_time_within",
    "normalized_auc",
    "summarize",
]

BUDGETS: tuple[float, ...] = (25.0, 30.0, 40.0, 50.0, 60.0)
"""Time budgets (% of layers) of the summary, as in the RomeBERT paper's Table 2."""

SLACK = 1e-9  # float noise allowed in time and metric comparisons

Point = tuple[float, float]  # (expected time %, metric)


def fixed_exit_points(exit_metric: Sequence[float]) -> list[Point]:
    """Every example leaving at exit k (1-based) of L: (100 k / L, metric at exit k)."""
    layers = len(exit_metric)
    return [(100.0 * k / layers, float(m)) for k, m in enumerate(exit_metric, start=1)]


def _checked(points: Iterable[Point]) -> list[Point]:
    checked = [(float(t), float(m)) for t, m in points]
    if not checked:
        raise ValueError("need at least one (time %, metric) point")
    bad = [p for p in checked if not (0 < p[0] <= 100 + SLACK) or p[1] != p[1]]
    if bad:
        raise ValueError(f"points need a time in (0, 100] and a metric that is not NaN: {bad[0]}")
    return checked


def front(points: Iterable[Point]) -> list[Point]:
    """The Pareto front: points no other point beats with less or equal time, by time.

    Each kept point has a strictly higher metric than every kept point before it, so the
    front's metrics increase with time; ties in time keep the better metric.
    """
    kept: list[Point] = []
    for time, metric in sorted(_checked(points), key=lambda p: (p[0], -p[1])):
        if not kept or metric > kept[-1][1]:
            kept.append((time, metric))
    return kept


def best_within(points: Iterable[Point], budget: float) -> Point | None:
    """The best point whose time is <= budget (the fastest among equals), or None."""
    fitting = [p for p in _checked(points) if p[0] <= budget + SLACK]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (p[1], -p[0]))


def normalized_auc(points: Iterable[Point], *, start: float, end: float = 100.0) -> float:
    """Mean of the front F over [start, end]: integral of F / (end - start); F(end) if the
    range is empty. F must be defined at ``start`` (a point at time <= start)."""
    steps = front(points)
    if steps[0][0] > start + SLACK:
        raise ValueError(f"the curve starts at {steps[0][0]:g}% time, after {start:g}%: "
                         "include the fixed-exit points")
    if end - start <= SLACK:
        return best_within(steps, end)[1]  # type: ignore[index]
    area = 0.0
    for (time, metric), following in zip(steps, [*steps[1:], (end, None)]):
        left, right = max(time, start), min(following[0], end)
        if right > left:
            area += metric * (right - left)
    return area / (end - start)


def least_time_within(points: Iterable[Point], reference: float, tolerance: float = 0.01
                      ) -> float | None:
    """Smallest time % of a point whose metric is >= reference - tolerance, or None."""
    times = [t for t, m in _checked(points) if m >= reference - tolerance - SLACK]
    return min(times) if times else None


@dataclass(frozen=True)
class TradeoffSummary:
    """A run's trade-off in a few numbers (metric values as fractions, times in %)."""

    metric: str
    start: float  # 100 / L
    auc: float
    best_within: dict[str, dict[str, float] | None]  # "25" -> {metric, time_percent}
    final: float
    reference: float
    tolerance: float
    least_time_within: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(sweep_points: Iterable[Point], exit_metric: Sequence[float], metric: str, *,
              reference: float | None = None, tolerance: float = 0.01,
              budgets: Sequence[float] = BUDGETS) -> TradeoffSummary:
    """Summary numbers of one run from its sweep points and per-exit metric (module doc);
    ``reference`` defaults to the run's own final exit."""
    if not exit_metric:
        raise ValueError("need the metric of at least one exit")
    sweep = list(sweep_points)
    points = [*(_checked(sweep) if sweep else []), *fixed_exit_points(exit_metric)]
    start = 100.0 / len(exit_metric)
    final = float(exit_metric[-1])
    reference = final if reference is None else float(reference)
    best: dict[str, dict[str, float] | None] = {}
    for budget in budgets:
        point = best_within(points, budget)
        best[f"{budget:g}"] = (None if point is None
                               else {metric: point[1], "time_percent": point[0]})
    return TradeoffSummary(
        metric=metric, start=start, auc=normalized_auc(points, start=start), best_within=best,
        final=final, reference=reference, tolerance=tolerance,
        least_time_within=least_time_within(points, reference, tolerance),
    )
