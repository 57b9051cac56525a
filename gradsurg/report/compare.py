"""`gradsurg compare`: finished multi-exit runs side by side, on one task and one dev set.

Each run folder holds ``results.json`` and, since dense sweeps exist,
``exit_logits.safetensors`` (``logits`` ``[L, N, C]``, ``labels`` ``[N]``: every exit's dev
outputs). From the logits every run gets a dense trade-off curve
(:mod:`gradsurg.multiexit.evaluation.dense_sweeps`) under its own recipe's exit policy; a run
without them (made before they were written) falls back to the fixed threshold list in its
results.json, and the comparison says so. Summary numbers follow
:mod:`gradsurg.multiexit.evaluation.tradeoff_summary`, with one reference for all runs: the
best final exit among them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from gradsurg import strict_json
from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.tradeoff_summary import (
    BUDGETS,
    Point,
    TradeoffSummary,
    summarize,
)
from gradsurg.outputs import atomic_write_text
from gradsurg.report.plots import plot_exit_metrics, plot_tradeoff

__all__ = [
    "COMPARE_BUDGETS",
    "Comparison",
    "LoadedRun",
    "RunReport",
    "budget_table",
    "compare_runs",
    "held_out_budgets",
    "held_out_table",
    "load_run",
    "markdown_tables",
    "per_exit_table",
    "summary_table",
    "write_comparison",
]

COMPARE_BUDGETS: tuple[float, ...] = (*BUDGETS, 100.0)
HELD_OUT_NOTE = (
    "Held out: the budget table above picks the best of up to 200 settings on the examples it "
    "scores, which flatters a noisy curve; here the evaluation set is split in two at random "
    "(seed 0, the same split for every run), the setting best within the budget on one half is "
    "scored on the other, both ways round, and the two are averaged (its time may pass the "
    "budget a little). See `gradsurg.multiexit.evaluation.held_out`.")
LOGITS_FILE = "exit_logits.safetensors"
REQUIRED_KEYS = ("task", "mode", "primary_metric", "exit_metrics")


@dataclass
class LoadedRun:
    """One finished run: its results.json and, when written, every exit's dev outputs."""

    results: dict[str, Any]
    folder: Path | None = None
    logits: Any = None  # torch.Tensor [L, N, C] or None
    labels: Any = None  # torch.Tensor [N] or None

    @property
    def name(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.results.get("mode"))


def load_run(folder: str | os.PathLike[str]) -> LoadedRun:
    """Read a run folder; a missing or corrupt results.json or logits file is a ConfigError
    naming the file."""
    folder = Path(folder)
    path = folder / "results.json"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {folder} a finished run?")
    results = strict_json.load_file(path)  # bounded; NaN / Infinity refused, file named
    if not isinstance(results, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(results).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in results]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r}; not a multiexit_glue result")
    metric = results["primary_metric"]
    exits = results["exit_metrics"]
    if (not isinstance(exits, list) or not exits
            or not all(isinstance(m, dict) and isinstance(m.get(metric), int | float)
                       for m in exits)):
        raise ConfigError(f"{path}: 'exit_metrics' must list each exit's {metric!r}")
    run = LoadedRun(results=results, folder=folder)
    if (folder / LOGITS_FILE).is_file():
        run.logits, run.labels = _read_logits(folder / LOGITS_FILE, len(exits))
    return run


def _read_logits(path: Path, num_exits: int) -> tuple[Any, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None
    logits, labels = tensors.get("logits"), tensors.get("labels")
    if logits is None or labels is None:
        raise ConfigError(f"{path}: needs tensors 'logits' and 'labels', has {sorted(tensors)}")
    if logits.ndim != 3 or labels.ndim != 1 or logits.shape[1] != labels.shape[0]:
        raise ConfigError(f"{path}: expected logits [L, N, C] and labels [N], got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] != num_exits:
        raise ConfigError(f"{path}: {logits.shape[0]} exits, but results.json lists {num_exits}")
    for name, tensor in (("logits", logits), ("labels", labels)):
        # checked as the run checks its own outputs: NaN / inf scores nothing
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            bad = int((~tensor.isfinite()).sum())
            raise ConfigError(f"{path}: {bad} of {tensor.numel()} {name} are NaN/inf, so no "
                              "metric would mean anything; not compared")
    return logits.float(), labels


def run_labels(runs: Sequence[LoadedRun]) -> list[str]:
    """Each run's mode; the folder name where modes repeat; the path where those do too."""
    modes = [str(run.results.get("mode")) for run in runs]
    names = [run.folder.name if run.folder is not None else mode
             for run, mode in zip(runs, modes)]
    labels = [mode if Counter(modes)[mode] == 1 else name for mode, name in zip(modes, names)]
    if len(set(labels)) < len(labels):
        labels = [label if Counter(labels)[label] == 1 else run.name
                  for run, label in zip(runs, labels)]
    repeated = [label for label, count in Counter(labels).items() if count > 1]
    if repeated:
        raise ConfigError(f"run {repeated[0]} is given more than once")
    return labels


def _eval_set(run: LoadedRun) -> dict[str, Any]:
    """What is known of the run's evaluation set (older runs record less)."""
    known: dict[str, Any] = {}
    for key in ("eval_split", "eval_rows", "num_eval_examples"):
        if key in run.results:
            known[key] = run.results[key]
    if run.labels is not None:
        known.setdefault("num_eval_examples", int(run.labels.shape[0]))
    return known


def _describe(known: Mapping[str, Any]) -> str:
    parts = [f"{key}={value}" for key, value in known.items()]
    return ", ".join(parts) or "unknown evaluation set"


def check_comparable(runs: Sequence[LoadedRun], labels: Sequence[str]) -> None:
    """Refuse runs of different tasks or evaluation sets, naming two that differ."""
    first = runs[0]
    for run, label in zip(runs[1:], labels[1:]):
        if run.results["task"] != first.results["task"]:
            raise ConfigError(
                f"runs of different tasks: {labels[0]} ({first.name}: "
                f"{first.results['task']}) and {label} ({run.name}: {run.results['task']})")
    sets = [_eval_set(run) for run in runs]
    for index, (run, label) in enumerate(zip(runs, labels)):
        for other in range(index):
            a, b = sets[other], sets[index]
            differ = [key for key in a.keys() & b.keys() if a[key] != b[key]]
            same_labels = _same_labels(runs[other], run)
            if differ or same_labels is False:
                what = (", ".join(sorted(differ)) if differ else "dev labels")
                raise ConfigError(
                    f"runs on different evaluation sets ({what}): {labels[other]} "
                    f"({runs[other].name}: {_describe(a)}) and {label} ({run.name}: "
                    f"{_describe(b)})")


def _same_labels(a: LoadedRun, b: LoadedRun) -> bool | None:
    if a.labels is None or b.labels is None:
        return None
    if a.labels.shape != b.labels.shape:
        return False
    return bool((a.labels.double() == b.labels.double()).all())


@dataclass
class RunReport:
    """One run's side of the comparison."""

    label: str
    folder: str | None
    mode: str
    curve: str  # where the points come from
    exit_metrics: list[float]  # primary metric per exit
    points: list[Point]  # (time %, metric) of the sweep, in sweep order
    summary: TradeoffSummary
    train_seconds: float | None
    # best within each budget with the setting chosen on the other half of the evaluation set
    # (held_out.py); None without logits to split
    held_out: dict[str, dict[str, float] | None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "folder": self.folder, "mode": self.mode,
                "curve": self.curve, "exit_metrics": self.exit_metrics,
                "points": [list(p) for p in self.points], "summary": self.summary.to_json(),
                "held_out_best_within": self.held_out, "train_seconds": self.train_seconds}


@dataclass
class Comparison:
    task: str
    metric: str
    reference_label: str
    reference: float
    tolerance: float
    budgets: tuple[float, ...]
    runs: list[RunReport]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric,
                "reference": {"label": self.reference_label, "value": self.reference,
                              "what": "best final exit among the runs"},
                "tolerance": self.tolerance, "budgets": list(self.budgets),
                "runs": [run.to_json() for run in self.runs], "notes": self.notes}


def _curve(run: LoadedRun, metric: str) -> tuple[list[Point], str, str | None]:
    """(points, description, note): the dense sweep from the logits, else the one stored in
    results.json, else the fixed list."""
    results = run.results
    if run.logits is not None:
        # torch and the multi-exit stack, imported only when there are logits to sweep
        from gradsurg.multiexit.evaluation.dense_sweeps import dense_sweep

        task, policy, spec = _resolved_policy(run)
        sweep = (None if policy is None
                 else dense_sweep(run.logits, run.labels, task, policy, spec))
        if sweep is not None:
            fixed = "".join(f", {k}={v}" for k, v in sweep.params.items())
            return ([(p.time_percent, p.metric[metric]) for p in sweep.points],
                    f"dense: {sweep.policy} {sweep.parameter}{fixed}", None)
    stored = results.get("dense_sweep")
    if run.logits is None and isinstance(stored, dict) and stored.get("points"):
        spec = stored.get("policy") or {}
        return ([(float(p["time_percent"]), float(p[metric])) for p in stored["points"]
                 if metric in p and "time_percent" in p],
                f"dense (results.json): {spec.get('name')} {stored.get('parameter')}", None)
    points = [(float(p["time_percent"]), float(p[metric])) for p in results.get("sweep", [])
              if metric in p and "time_percent" in p]
    policy = (results.get("exit_policy") or {}).get("name", "entropy")
    reason = (f"has no {LOGITS_FILE}" if run.logits is None
              else f"its exit policy {policy!r} has no dense sweep")
    if points:
        return points, f"fixed list: {policy}", (
            f"{run.name} {reason}: its curve is the fixed {policy} list from results.json "
            "(coarser; budgets measure the list as well as the model)")
    return [], "fixed exits only", (
        f"{run.name} {reason} and no sweep in results.json: its curve is its fixed exits only")


def held_out_budgets(run: LoadedRun, budgets: Sequence[float] = COMPARE_BUDGETS, *,
                     seed: int | None = None) -> dict[str, dict[str, float] | None] | None:
    """The run's held-out best within each budget (see held_out.py; `seed`: the split's, by
    default SPLIT_SEED); None without logits."""
    if run.logits is None or run.logits.shape[1] < 2:
        return None
    from gradsurg.multiexit.evaluation.held_out import SPLIT_SEED, held_out_best_within

    task, policy, spec = _resolved_policy(run)
    if policy is None:
        return None
    return held_out_best_within(run.logits, run.labels, task, policy, spec, budgets,
                                seed=SPLIT_SEED if seed is None else seed)


def _resolved_policy(run: LoadedRun) -> tuple[Any, Any, dict[str, Any]]:
    """The run's task (a TaskSpec) and exit policy class, resolved from results.json once
    (None for a policy not installed here: it has no dense sweep), and its other parameters.
    Imported here: torch and the multi-exit stack only load when there are logits."""
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.policies import POLICIES

    name, spec = _policy(run)
    return (get_task(run.results["task"]), POLICIES.get(name) if name in POLICIES else None,
            spec)


def _policy(run: LoadedRun) -> tuple[str, dict[str, Any]]:
    """The run's recipe exit policy: (name, its other parameters)."""
    spec = dict(run.results.get("exit_policy") or {"name": "entropy"})
    return spec.pop("name"), spec


def compare_runs(runs: Sequence[LoadedRun], *, tolerance: float = 0.01,
                 budgets: Sequence[float] = COMPARE_BUDGETS) -> Comparison:
    """Check the runs are comparable, build each one's curve and summary numbers."""
    if not runs:
        raise ConfigError("compare needs at least one run folder")
    labels = run_labels(runs)
    check_comparable(runs, labels)
    metric = runs[0].results["primary_metric"]
    finals = [float(run.results["exit_metrics"][-1][metric]) for run in runs]
    best = max(range(len(runs)), key=lambda i: finals[i])
    reports, notes = [], []
    for run, label in zip(runs, labels):
        try:
            points, curve, note = _curve(run, metric)
            held_out = held_out_budgets(run, budgets)
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{run.name}: cannot build its trade-off curve ({error})") from None
        if note:
            notes.append(note)
        exit_metric = [float(m[metric]) for m in run.results["exit_metrics"]]
        train = run.results.get("train") or {}
        seconds = (sum(float(stage.get("seconds", 0.0)) for stage in train.values())
                   if train else None)
        reports.append(RunReport(
            label=label, folder=str(run.folder) if run.folder is not None else None,
            mode=str(run.results["mode"]), curve=curve, exit_metrics=exit_metric, points=points,
            summary=summarize(points, exit_metric, metric, reference=finals[best],
                              tolerance=tolerance, budgets=budgets),
            train_seconds=seconds, held_out=held_out,
        ))
    return Comparison(task=str(runs[0].results["task"]), metric=metric,
                      reference_label=labels[best], reference=finals[best],
                      tolerance=tolerance, budgets=tuple(budgets), runs=reports, notes=notes)


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


def markdown_report(comparison: Comparison, plots: Mapping[str, Path]) -> str:
    """compare.md: the runs, the three tables, the plots and the notes."""
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
    lines += [f"Note: {note}" for note in comparison.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(comparison: Comparison, output: str | os.PathLike[str]) -> list[Path]:
    """compare.md, compare.json and the two PNGs into ``output``; the paths written."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    plots = write_plots(comparison, folder)  # each file: temporary name, then a rename
    report = folder / "compare.md"
    atomic_write_text(report, markdown_report(comparison, plots), own=True)
    data = folder / "compare.json"
    atomic_write_text(data, strict_json.dumps(comparison.to_json(), indent=2) + "\n", own=True)
    return [report, data, *plots.values()]
