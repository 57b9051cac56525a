"""Train deebert, deebert_sd, romebert_sd and romebert on GLUE tasks and write the report.

    GLUE_DIR=../shared/glue_data python bench/reproduce_romebert.py \
        [--tasks sst2 mrpc rte stsb] [--modes ...] [--set epochs=1 ...]
        [--task-set sst2:train_rows=8000 ...] [--runs runs/repro]

Each (task, mode) run goes to RUNS/TASK/MODE through the same `multiexit_glue` program that
`gradsurg run recipes/MODE_glue.yaml` uses; a finished run (results.json present) is reused, so
the script can be stopped and started again. The report, docs/reproduction.md, gets per-exit dev
metrics of every mode and a trade-off table like the RomeBERT paper's Table 2 (the best metric
each mode reaches within a time budget), with plots under docs/reproduction/. Reusing a run
trained with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gradsurg.config import apply_overrides, read_recipe, validate_recipe
from gradsurg.report.plots import plot_exit_metrics, plot_tradeoff

ROOT = Path(__file__).resolve().parents[1]
MODES = ["deebert", "deebert_sd", "romebert_sd", "romebert"]
TASKS = ["sst2", "mrpc", "rte", "stsb"]
BUDGETS = [25.0, 30.0, 40.0, 50.0, 60.0, 100.0]


def run_one(task: str, mode: str, overrides: list[str], runs: Path, *, train: bool = True
            ) -> dict[str, Any] | None:
    """The run's results: reused when finished with the same settings, else trained (or None
    when `train` is false)."""
    folder = runs / task / mode
    recipe_path = ROOT / "recipes" / f"{mode}_glue.yaml"
    recipe = apply_overrides(read_recipe(recipe_path), [f"task={task}", *overrides])
    program, config = validate_recipe(recipe, source=str(recipe_path))
    resolved = config.model_dump(mode="json")
    done = folder / "results.json"
    saved_path = folder / "recipe.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        changed = changed_settings(saved, resolved, defaults(type(config)))
        if changed:
            sys.exit(f"error: {folder} was trained with other settings ({', '.join(changed)}); "
                     "use another --runs folder or delete it")
        if done.is_file():
            return json.loads(done.read_text())
    if not train:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps(resolved, indent=2))
    # A run stopped part-way continues from its latest checkpoint instead of starting over.
    resume = any((folder / "checkpoints").glob("step-*"))
    results = program.run(config, folder, resume=resume)
    done.write_text(json.dumps(results, indent=2) + "\n")
    return results


def defaults(schema: type[BaseModel]) -> dict[str, Any]:
    """Each recipe key's default, as JSON: the value a run made before the key existed used."""
    return {name: field.default for name, field in schema.model_fields.items()
            if not field.is_required()}


def changed_settings(saved: dict[str, Any], resolved: dict[str, Any],
                     default: dict[str, Any]) -> list[str]:
    """Keys whose value differs; a key missing from an older run counts as its default."""
    return sorted(key for key in resolved.keys() | saved.keys()
                  if resolved.get(key) != saved.get(key, default.get(key)))


def best_within(sweep: list[dict[str, Any]], metric: str, budget: float) -> tuple[float, float]:
    """(metric, time %) of the best sweep point whose expected time is within the budget."""
    fitting = [p for p in sweep if p["time_percent"] <= budget + 1e-9]
    if not fitting:
        return float("nan"), float("nan")
    best = max(fitting, key=lambda p: (p[metric], -p["time_percent"]))
    return best[metric], best["time_percent"]


def summary_rows(results: dict[str, dict[str, Any]], metric: str, layers: int) -> list[str]:
    """Early exits' mean, the final exit, the least time within 1 point of the final exit,
    and the training time of each mode."""
    lines = ["| mode | mean of exits 1..L-1 | final exit | least time % within 1 point of "
             "the final exit | training seconds |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode, result in results.items():
        values = [m[metric] for m in result["exit_metrics"]]
        early = sum(values[:-1]) / max(1, layers - 1)
        final = values[-1]
        close = [p["time_percent"] for p in result.get("sweep", [])
                 if p[metric] >= final - 0.01]
        seconds = sum(stage["seconds"] for stage in result.get("train", {}).values())
        least = f"{min(close):.1f}" if close else "-"
        lines.append(f"| {mode} | {early * 100:.2f} | {final * 100:.2f} | {least} | "
                     f"{seconds:.0f} |")
    return [*lines, ""]


def task_section(task: str, results: dict[str, dict[str, Any]], figures: Path) -> list[str]:
    any_result = next(iter(results.values()))
    metric = any_result["primary_metric"]
    layers = len(any_result["exit_metrics"])
    lines = [f"### {task} (dev, {metric} x 100)", "",
             "Metric at every exit when all examples leave there:", "",
             "| mode | " + " | ".join(f"L{i}" for i in range(1, layers + 1)) + " |",
             "| --- |" + " ---: |" * layers]
    for mode, result in results.items():
        values = " | ".join(f"{m[metric] * 100:.2f}" for m in result["exit_metrics"])
        lines.append(f"| {mode} | {values} |")
    curves = {mode: [m[metric] for m in r["exit_metrics"]] for mode, r in results.items()}
    per_exit_png = plot_exit_metrics(curves, metric, figures / f"{task}_per_exit.png",
                                     title=f"{task}: {metric} per exit")
    lines += ["", f"![per exit](reproduction/{per_exit_png.name})", ""]
    lines += summary_rows(results, metric, layers)
    if all("sweep" in r for r in results.values()):
        lines += ["Best metric within a time budget (entropy exit; expected time % in brackets):",
                  "", "| mode | " + " | ".join(f"<= {b:g}%" for b in BUDGETS) + " |",
                  "| --- |" + " ---: |" * len(BUDGETS)]
        for mode, result in results.items():
            cells = []
            for budget in BUDGETS:
                value, time_percent = best_within(result["sweep"], metric, budget)
                cells.append("-" if value != value else f"{value * 100:.2f} ({time_percent:.1f})")
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        tradeoff = {mode: [(p["time_percent"], p[metric]) for p in r["sweep"]]
                    for mode, r in results.items()}
        png = plot_tradeoff(tradeoff, metric, figures / f"{task}_tradeoff.png",
                            title=f"{task}: {metric} vs expected time")
        lines += ["", f"![trade-off](reproduction/{png.name})", ""]
    return lines


def task_overrides(entries: list[str], tasks: list[str]) -> dict[str, list[str]]:
    """`TASK:key=value` entries grouped by task; a task not being run is an error."""
    grouped: dict[str, list[str]] = {}
    for entry in entries:
        task, sep, override = entry.partition(":")
        if not sep or "=" not in override:
            sys.exit(f"error: --task-set {entry!r}: expected TASK:key=value")
        if task not in tasks:
            sys.exit(f"error: --task-set {entry!r}: task {task!r} is not in --tasks {tasks}")
        grouped.setdefault(task, []).append(override)
    return grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe override for every run, e.g. --set epochs=1")
    parser.add_argument("--task-set", dest="task_overrides", action="append", default=[],
                        metavar="TASK:KEY=VALUE",
                        help="recipe override for one task, e.g. --task-set sst2:train_rows=8000")
    parser.add_argument("--notes", type=Path, default=None,
                        help="Markdown placed under the title (findings written by hand)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "repro")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "reproduction.md")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the finished runs, list the missing ones")
    args = parser.parse_args()

    figures = args.report.parent / "reproduction"
    figures.mkdir(parents=True, exist_ok=True)
    command = "python bench/reproduce_romebert.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# RomeBERT reproduction on the packaged MiniLM", "",
             f"Command: `GLUE_DIR=... {command.strip()}`", ""]
    if args.report_only:
        lines += ["Written with `--report-only` from the finished runs; the same command without "
                  "it trains the missing ones.", ""]
    if args.notes is not None:
        lines += [args.notes.read_text().strip(), ""]
    per_task = task_overrides(args.task_overrides, args.tasks)
    summary = {}
    for task in args.tasks:
        overrides = [*args.overrides, *per_task.get(task, [])]
        found = {mode: run_one(task, mode, overrides, args.runs, train=not args.report_only)
                 for mode in args.modes}
        results = {mode: result for mode, result in found.items() if result is not None}
        missing = [mode for mode, result in found.items() if result is None]
        summary[task] = results
        if results:
            lines += task_section(task, results, figures)
        else:
            lines += [f"### {task}", ""]
        if missing:
            lines += [f"Not run yet for {task}: {', '.join(missing)}.", ""]
        # Rewritten after every task, so a long run that is stopped still leaves a report.
        args.report.write_text("\n".join(lines) + "\n")
        (figures / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.report} ({', '.join(summary)})", flush=True)


if __name__ == "__main__":
    main()
