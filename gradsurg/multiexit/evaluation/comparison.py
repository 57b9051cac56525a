"""Finished multi-exit runs side by side, on one task and one evaluation set: the analysis
behind `gradsurg compare` (its tables, plots and files are `gradsurg.report.compare`'s).

Each run is read back by `gradsurg.run_folder.load_run`: its ``results.json`` and, since dense
sweeps exist, ``exit_logits.safetensors`` (``logits`` ``[L, N, C]``, ``labels`` ``[N]``: every
exit's dev outputs). From the logits every run gets a dense trade-off curve
(:mod:`gradsurg.multiexit.evaluation.dense_sweeps`) under its own recipe's exit policy; a run
without them (made before they were written) falls back to the fixed threshold list in its
results.json, and the comparison says so. Summary numbers follow
:mod:`gradsurg.multiexit.evaluation.tradeoff_summary`, with one reference for all runs: the
best final exit among them; `held_out_budgets` scores each budget's setting on the other half
of the evaluation set (:mod:`gradsurg.multiexit.evaluation.held_out`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.tradeoff_summary import (
    BUDGETS,
    Point,
    TradeoffSummary,
    summarize,
)
from gradsurg.run_folder import EXIT_LOGITS_FILE, LoadedRun

__all__ = [
    "COMPARE_BUDGETS",
    "Comparison",
    "RunReport",
    "check_comparable",
    "compare_runs",
    "held_out_budgets",
    "run_labels",
]

COMPARE_BUDGETS: tuple[float, ...] = (*BUDGETS, 100.0)


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
    reason = (f"has no {EXIT_LOGITS_FILE}" if run.logits is None
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
