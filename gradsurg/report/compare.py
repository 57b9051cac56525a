"""`gradsurg compare`'s output: the comparison's tables (rich for the screen, Markdown for
compare.md), its overlay plots, the conflict map of each run whose train log holds per-block
cosines (`gradsurg.report.conflicts`), and its files, each written atomically (a temporary
name, then a rename). Reading the run folders is `gradsurg.run_folder`'s; comparing them
(curves, budgets, held-out scores) is `gradsurg.multiexit.evaluation.comparison`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

from gradsurg import strict_json
from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.comparison import Comparison
from gradsurg.outputs import atomic_write_text
from gradsurg.report import conflicts
from gradsurg.report.plots import plot_conflict_map, plot_exit_metrics, plot_tradeoff

__all__ = [
    "HELD_OUT_NOTE",
    "budget_table",
    "conflict_maps",
    "conflict_plot_names",
    "held_out_table",
    "markdown_report",
    "markdown_tables",
    "per_exit_table",
    "summary_table",
    "write_comparison",
    "write_plots",
]


HELD_OUT_NOTE = (
    "Held out: the budget table above picks the best of up to 200 settings on the examples it "
    "scores, which flatters a noisy curve; here the evaluation set is split in two at random "
    "(seed 0, the same split for every run), the setting best within the budget on one half is "
    "scored on the other, both ways round, and the two are averaged (its time may pass the "
    "budget a little). See `gradsurg.multiexit.evaluation.held_out`.")


# ---- tables: Markdown for files, rich for the screen; the same rows ----------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def _per_exit_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    layers = max(len(run.exit_metrics) for run in comparison.runs)
    header = ["run", *(f"L{i}" for i in range(1, layers + 1))]
    rows = [[run.label, *(_pct(v) for v in run.exit_metrics),
             *(["-"] * (layers - len(run.exit_metrics)))] for run in comparison.runs]
    return header, rows


def _budget_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["run", *(f"<= {b:g}%" for b in comparison.budgets)]
    return header, [[run.label, *_budget_cells(run.summary.best_within, comparison)]
                    for run in comparison.runs]


def _held_out_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["run", *(f"<= {b:g}%" for b in comparison.budgets)]
    return header, [[run.label, *_budget_cells(run.held_out, comparison)]
                    for run in comparison.runs if run.held_out is not None]


def _budget_cells(best_within: Mapping[str, dict[str, float] | None],
                  comparison: Comparison) -> list[str]:
    cells = []
    for budget in comparison.budgets:
        best = best_within.get(f"{budget:g}")
        cells.append("-" if best is None else
                     f"{best[comparison.metric] * 100:.2f} ({best['time_percent']:.1f})")
    return cells


def _summary_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["run", "curve", "points", "mean of exits 1..L-1", "final exit", "area (mean over "
              "100/L..100% time)", f"least time % within {comparison.tolerance * 100:g} point "
              f"of {_pct(comparison.reference)}", "training seconds"]
    rows = []
    for run in comparison.runs:
        early = run.exit_metrics[:-1]
        least = run.summary.least_time_within
        rows.append([
            run.label, run.curve, str(len(run.points)),
            _pct(sum(early) / len(early)) if early else "-", _pct(run.summary.final),
            _pct(run.summary.auc), "-" if least is None else f"{least:.1f}",
            "-" if run.train_seconds is None else f"{run.train_seconds:.0f}",
        ])
    return header, rows


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if name in ("run", "curve") else "---:" for name in header]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("run", "curve") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _titles(comparison: Comparison) -> tuple[str, str, str, str]:
    metric = f"{comparison.metric} x 100"
    return (f"{comparison.task}: {metric} at every exit when all examples leave there",
            f"{comparison.task}: best {metric} within a time budget (expected time % in "
            "brackets)",
            f"{comparison.task}: summary (reference: best final exit, "
            f"{comparison.reference_label})",
            f"{comparison.task}: {metric} within a time budget, the setting chosen on the "
            "other half of the evaluation set (mean of both ways round; expected time % in "
            "brackets)")


def per_exit_table(comparison: Comparison) -> Table:
    return _rich(_titles(comparison)[0], *_per_exit_rows(comparison))


def budget_table(comparison: Comparison) -> Table:
    return _rich(_titles(comparison)[1], *_budget_rows(comparison))


def summary_table(comparison: Comparison) -> Table:
    return _rich(_titles(comparison)[2], *_summary_rows(comparison))


def held_out_table(comparison: Comparison) -> Table | None:
    """None when no run has logits to split."""
    header, rows = _held_out_rows(comparison)
    return _rich(_titles(comparison)[3], header, rows) if rows else None


def markdown_tables(comparison: Comparison) -> dict[str, list[str]]:
    """The tables as Markdown lines, each under its title: per_exit, budgets, summary, and
    held_out when a run has logits to split."""
    titles = _titles(comparison)
    builders = (_per_exit_rows, _budget_rows, _summary_rows, _held_out_rows)
    tables = {}
    for key, title, build in zip(("per_exit", "budgets", "summary", "held_out"), titles,
                                 builders):
        header, rows = build(comparison)
        if rows:
            tables[key] = [f"{title}:", "", *_markdown(header, rows), ""]
    return tables


def write_plots(comparison: Comparison, folder: Path, *, prefix: str = "") -> dict[str, Path]:
    """Overlay plots: metric per exit, and metric vs expected time (sweep points joined)."""
    metric, task = comparison.metric, comparison.task
    per_exit = plot_exit_metrics({run.label: run.exit_metrics for run in comparison.runs},
                                 metric, folder / f"{prefix}per_exit.png",
                                 title=f"{task}: {metric} per exit")
    curves = {run.label: run.points for run in comparison.runs if run.points}
    plots = {"per_exit": per_exit}
    if curves:
        plots["tradeoff"] = plot_tradeoff(curves, metric, folder / f"{prefix}metric_vs_time.png",
                                          title=f"{task}: {metric} vs expected time")
    return plots


def conflict_maps(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Run label -> the conflict map of its train_log.jsonl, for the runs whose log holds
    per-block cosines (trained with the combiner `blockwise`); the others are left out."""
    maps = {}
    for run in comparison.runs:
        if run.folder is not None:
            found = conflicts.run_conflict_map(Path(run.folder))
            if found is not None:
                maps[run.label] = found
    return maps


def conflict_plot_names(labels: list[str]) -> dict[str, str]:
    """Run label -> its heatmap's file name, `conflicts_<label>.png` with the label's odd
    characters (a folder's slashes) as `_`; a clash gets the run's position."""
    names = {label: "conflicts_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._")
                                    or "run") for label in labels}
    taken = list(names.values())
    return {label: (f"{name}_{index}" if taken.count(name) > 1 else name) + ".png"
            for index, (label, name) in enumerate(names.items(), 1)}


def write_conflict_plots(maps: Mapping[str, Mapping[str, Any]], folder: Path
                         ) -> dict[str, Path]:
    """Each conflict map's heatmap (layers x group pairs) in `folder`."""
    names = conflict_plot_names(list(maps))
    return {label: plot_conflict_map(result, folder / names[label],
                                     title=f"{label}: where the loss groups conflict "
                                           f"({conflicts.steps_text(result)})")
            for label, result in maps.items()}


def markdown_report(comparison: Comparison, plots: Mapping[str, Path],
                    maps: Mapping[str, Mapping[str, Any]] | None = None,
                    map_plots: Mapping[str, Path] | None = None) -> str:
    """compare.md: the runs, the three tables, the plots, the conflict maps (runs trained with
    `blockwise`) and the notes."""
    lines = [f"# Comparison on {comparison.task} ({comparison.metric})", "",
             "| run | folder | mode | curve |", "| --- | --- | --- | --- |"]
    lines += [f"| {run.label} | {run.folder or '-'} | {run.mode} | {run.curve} |"
              for run in comparison.runs]
    lines.append("")
    tables = markdown_tables(comparison)
    lines += tables["per_exit"]
    lines += [f"![per exit]({plots['per_exit'].name})", ""]
    lines += tables["budgets"]
    if "tradeoff" in plots:
        lines += [f"![metric vs time]({plots['tradeoff'].name})", ""]
    if "held_out" in tables:
        lines += [*tables["held_out"], HELD_OUT_NOTE, ""]
    lines += tables["summary"]
    lines += ["Area: the mean of the best metric reachable within each time budget x, over x "
              "from 100/L to 100 % (sweep and fixed exits); see "
              "`gradsurg.multiexit.evaluation.tradeoff_summary`.", ""]
    for label, result in (maps or {}).items():
        lines += [f"Where the loss groups of {label} conflict, per block (its train_log.jsonl's "
                  "per-block cosines):", "", *conflicts.markdown_lines(result)]
        if map_plots and label in map_plots:
            lines += [f"![conflict map of {label}]({map_plots[label].name})", ""]
    lines += [f"Note: {note}" for note in comparison.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(comparison: Comparison, output: str | os.PathLike[str],
                     maps: Mapping[str, Mapping[str, Any]] | None = None) -> list[Path]:
    """compare.md, compare.json and the two PNGs into ``output``, and with ``maps``
    (`conflict_maps`) each run's conflict heatmap, its map in compare.json's
    `conflict_maps`; the paths written."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    plots = write_plots(comparison, folder)  # each file: temporary name, then a rename
    map_plots = write_conflict_plots(maps or {}, folder)
    report = folder / "compare.md"
    atomic_write_text(report, markdown_report(comparison, plots, maps, map_plots), own=True)
    data = folder / "compare.json"
    content = comparison.to_json()
    if maps:
        content["conflict_maps"] = {label: {**result, "plot": map_plots[label].name}
                                    for label, result in maps.items()}
    atomic_write_text(data, strict_json.dumps(content, indent=2) + "\n", own=True)
    return [report, data, *plots.values(), *map_plots.values()]
