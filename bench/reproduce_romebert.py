"""Train deebert, deebert_sd, romebert_sd and romebert on GLUE tasks and write the report.

    GLUE_DIR=../shared/glue_data python bench/reproduce_romebert.py \
        [--tasks sst2 mrpc rte stsb] [--modes ...] [--set epochs=1 ...]
        [--task-set sst2:train_rows=8000 ...] [--runs runs/repro]

Each (task, mode) run goes to RUNS/TASK/MODE through the same `multiexit_glue` program that
`gradsurg run recipes/MODE_glue.yaml` uses; a finished run (results.json present) is reused, so
the script can be stopped and started again. The report, docs/reproduction.md, gets per-exit dev
metrics of every mode and a trade-off table like the RomeBERT paper's Table 2 (the best metric
each mode reaches within a time budget), with plots under docs/reproduction/; the tables and
plots are `gradsurg compare`'s (gradsurg.report.compare) over each task's runs. Reusing a run
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

from gradsurg.multiexit.evaluation.comparison import Comparison, compare_runs
from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe
from gradsurg.report.compare import markdown_tables, write_plots
from gradsurg.run_folder import LoadedRun, load_run

ROOT = Path(__file__).resolve().parents[1]
MODES = ["deebert", "deebert_sd", "romebert_sd", "romebert"]
TASKS = ["sst2", "mrpc", "rte", "stsb"]


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


def task_section(task: str, runs: dict[str, LoadedRun], figures: Path
                 ) -> tuple[list[str], Comparison]:
    """The task's part of the report, built by `gradsurg compare`'s functions: per-exit
    metrics, summary numbers, best metric within time budgets, overlay plots."""
    comparison = compare_runs(list(runs.values()))
    tables = markdown_tables(comparison)
    plots = write_plots(comparison, figures, prefix=f"{task}_")
    lines = [f"### {task} (dev, {comparison.metric} x 100)", "", *tables["per_exit"],
             f"![per exit](reproduction/{plots['per_exit'].name})", "", *tables["summary"],
             *tables["budgets"]]
    if "tradeoff" in plots:
        lines += [f"![trade-off](reproduction/{plots['tradeoff'].name})", ""]
    lines += [f"Note: {note}" for note in comparison.notes]
    return [*lines, ""] if comparison.notes else lines, comparison


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
    summary, comparisons = {}, {}
    for task in args.tasks:
        overrides = [*args.overrides, *per_task.get(task, [])]
        found = {mode: run_one(task, mode, overrides, args.runs, train=not args.report_only)
                 for mode in args.modes}
        results = {mode: result for mode, result in found.items() if result is not None}
        missing = [mode for mode, result in found.items() if result is None]
        summary[task] = results
        if results:
            # From the folders, so runs that wrote exit_logits.safetensors get dense curves.
            section, comparison = task_section(
                task, {mode: load_run(args.runs / task / mode) for mode in results}, figures)
            lines += section
            comparisons[task] = comparison.to_json()
        else:
            lines += [f"### {task}", ""]
        if missing:
            lines += [f"Not run yet for {task}: {', '.join(missing)}.", ""]
        # Rewritten after every task, so a long run that is stopped still leaves a report.
        args.report.write_text("\n".join(lines) + "\n")
        (figures / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (figures / "comparison.json").write_text(json.dumps(comparisons, indent=2) + "\n")
        print(f"wrote {args.report} ({', '.join(summary)})", flush=True)


if __name__ == "__main__":
    main()
