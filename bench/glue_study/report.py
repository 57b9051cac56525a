"""docs/study.md from the study's finished runs: `gradsurg compare`'s tables per task, the
surgery's facts, the seed spread, the answers in numbers, the cost and the recommendation."""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from glue_study.analysis import (
    OTHER_SPLITS,
    RECOMMEND_BUDGETS,
    SeedNumbers,
    finished_runs,
    held_out_scores,
    picks_over_splits,
    recommend,
    seed_scores,
    seed_spread,
)
from glue_study.plan import (
    PHASES,
    ROOT,
    SEEDS,
    TWO_STAGE,
    best_paper_config,
    planned_runs,
    seeded_candidates,
)

#: Per-step facts of the surgery worth reporting, from results.json's training means: how
#: often the projection fired, conflicting pairs (PCGrad), rows projected (UPGrad), negative
#: weights (IMTL-G), and the final/SD cosine. "mean cosine" averages every group pair's mean.
SURGERY_FACTS = ("project/fired", "pcgrad/conflicts", "upgrad/projected",
                 "imtlg/negative_weights", "cosine/final/sd")
MEAN_COSINE = "mean cosine"


def task_report(runs: Path, phase: str, task: str, figures: Path) -> list[str]:
    """One task's section: `gradsurg compare`'s tables and plots over the first seed of every
    configuration, the surgery's facts, the commits, and the spread over seeds."""
    from gradsurg.multiexit.evaluation.comparison import compare_runs
    from gradsurg.report.compare import markdown_tables, write_plots
    from gradsurg.run_folder import load_run

    found = finished_runs(runs, phase, task)
    if not found:
        return []
    loaded = []
    for config, seeds in found.items():
        run = load_run(seeds[min(seeds)])
        run.results = {**run.results, "mode": config}  # label the run by its configuration
        loaded.append(run)
    comparison = compare_runs(loaded)
    tables = markdown_tables(comparison)
    plots = write_plots(comparison, figures, prefix=f"{phase}_{task}_")
    lines = [f"### {task}, {phase} ({comparison.metric} x 100; first seed of each)", "",
             *tables["per_exit"], *tables["summary"], *tables["budgets"],
             *tables.get("held_out", [])]
    lines += [f"![{name}]({figures.name}/{path.name})" for name, path in plots.items()]
    columns = [*SURGERY_FACTS, MEAN_COSINE]
    lines += ["", "| configuration | commit | " + " | ".join(columns) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
    for run, config in zip(loaded, found):
        means: dict[str, Any] = {}
        for stage in (run.results.get("train") or {}).values():
            means.update(stage)
        cosines = [value for key, value in means.items() if key.startswith("cosine/")]
        if cosines:
            means[MEAN_COSINE] = statistics.mean(cosines)
        facts = [f"{means[key]:.3f}" if key in means else "-" for key in columns]
        commit = (run.folder / "commit.txt").read_text().strip()[:10] if run.folder and (
            run.folder / "commit.txt").is_file() else "?"
        lines.append(f"| {config} | {commit} | " + " | ".join(facts) + " |")
    spread = seed_spread(found)
    lines += seed_table(spread)
    lines += [f"Note: {note}" for note in comparison.notes]
    lines += majority_baseline(loaded[0], comparison.metric)
    lines += exact_commands(found, runs)
    lines += ["", *task_answers(comparison, list(found), spread)]
    return [*lines, ""]


def exact_commands(found: dict[str, dict[int, Path]], runs: Path) -> list[str]:
    """Every finished run's command as recorded in its folder (command.txt), with the
    worktree's interpreter and recipe paths shortened to what a checkout of its commit runs."""
    lines = ["", "<details><summary>Exact commands (each run's command.txt, run with GLUE_DIR "
             "set, from a checkout of the commit in the table above; RUNS is the study's "
             "--runs folder)</summary>", "", "```"]
    for seeds in found.values():
        for folder in seeds.values():
            recorded = folder / "command.txt"
            if not recorded.is_file():
                continue
            argv = shlex.split(recorded.read_text())
            argv[0] = "python"
            argv = [f"recipes/{Path(arg).name}" if arg.endswith(".yaml") else
                    arg.replace(str(runs), "RUNS") for arg in argv]
            lines.append(shlex.join(argv))
    return [*lines, "```", "", "</details>"]


def majority_baseline(run: Any, metric: str) -> list[str]:
    """What always answering the evaluation set's most frequent label scores, so a reader can
    tell a trained exit from one that learned the class prior (MRPC's F1 is 81 that way);
    nothing for regression or a run without stored labels."""
    from gradsurg.data.glue import get_task
    from gradsurg.metrics import compute_metrics

    task = get_task(run.results["task"])
    if run.labels is None or task.is_regression:
        return []
    majority = int(run.labels.bincount().argmax())
    score = compute_metrics(task, [majority] * len(run.labels), run.labels)[metric]
    return ["", f"Majority-class baseline (every example labelled {majority}, the evaluation "
            f"set's most frequent label): {metric} x 100 = {100 * score:.2f}."]


def seed_table(spread: dict[str, SeedNumbers]) -> list[str]:
    """Mean ± sd over seeds of every seeded configuration's final exit, area and budgets, in
    sample and held out."""
    if not spread:
        return []
    budgets = sorted({b for numbers in spread.values() for b in numbers.budgets}, key=float)
    header = ["configuration", "seeds", "final exit", "area", *(f"<= {b}%" for b in budgets)]
    lines = ["", "Over seeds (mean ± sd x 100; a budget's mean is over the seeds with a point "
             "within it):", "", _row(header), _row(["---", *("---:" for _ in header[1:])])]
    for config, numbers in spread.items():
        lines.append(_row([config, str(len(numbers.finals)), _mean_sd(numbers.finals),
                           _mean_sd(numbers.areas), *_budget_means(numbers.budgets, budgets)]))
    held_out = sorted({b for numbers in spread.values() for b in numbers.held_out}, key=float)
    if held_out:
        header = ["configuration", "seeds", *(f"<= {b}%" for b in held_out)]
        lines += ["", "Over seeds, held out (each seed's setting chosen on one half of the "
                  "evaluation set, scored on the other):", "", _row(header),
                  _row(["---", *("---:" for _ in header[1:])])]
        for config, numbers in spread.items():
            lines.append(_row([config, str(len(numbers.finals)),
                               *_budget_means(numbers.held_out, held_out)]))
    return lines


def _budget_means(found: dict[str, list[float | None]], budgets: list[str]) -> list[str]:
    return [_mean_sd([v for v in found.get(b, []) if v is not None]) for b in budgets]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def seeded_leaders(spread: dict[str, SeedNumbers]) -> list[str]:
    """The best configuration by the mean over seeds at each budget, final exit and area,
    among the configurations with the most seeds (like compared with like)."""
    most = max((len(numbers.finals) for numbers in spread.values()), default=0)
    peers = {c: n for c, n in spread.items() if len(n.finals) == most}
    if len(peers) < 2:
        return []
    rows = {"final exit": {c: n.finals for c, n in peers.items()},
            "area": {c: n.areas for c, n in peers.items()}}
    for kind, where in (("", "budgets"), (", held out", "held_out")):
        tables = {c: getattr(n, where) for c, n in peers.items()}
        for budget in sorted({b for found in tables.values() for b in found}, key=float):
            rows[f"within {budget}%{kind}"] = {
                c: found[budget] for c, found in tables.items()
                if len(found.get(budget, [])) == most and None not in found[budget]}
    lines = []
    for name, values in rows.items():
        means = {c: statistics.mean(v) for c, v in values.items()}
        if not means:
            continue
        lines.append(f"- best {name} by the mean over {most} seeds ({', '.join(peers)}): "
                     + leaders(means))
    return lines


def _at_budget(report: Any, budget: float) -> float | None:
    """The run's best metric x 100 within ``budget``% expected time (None: no point there)."""
    point = report.summary.best_within.get(f"{budget:g}")
    return None if point is None else 100 * float(point[report.summary.metric])


def _higher(a: float | None, b: float | None) -> bool:
    return a is not None and (b is None or a > b + 1e-9)


def task_answers(comparison: Any, configs: list[str],
                 spread: dict[str, SeedNumbers]) -> list[str]:
    """The issue's questions answered from one task's first-seed comparison, in numbers:
    the best configuration at each budget, one-stage runs against two-stage DeeBERT at every
    budget <= 60%, GR against SD alone, and the seed spread to read the margins against."""
    by_name = dict(zip(configs, comparison.runs))
    budgets = list(comparison.budgets)
    lines = ["Answers (first seed of each; budgets are expected time % of the full model):", ""]
    for budget in budgets:
        values = {name: _at_budget(report, budget) for name, report in by_name.items()}
        known = {name: v for name, v in values.items() if v is not None}
        if not known:
            lines.append(f"- best within {budget:g}%: no configuration has a point there")
            continue
        lines.append(f"- best within {budget:g}%: " + leaders(known))
    for budget in budgets:
        held_out = {name: report.held_out[f"{budget:g}"] for name, report in by_name.items()
                    if report.held_out and report.held_out.get(f"{budget:g}")}
        if held_out:
            lines.append(f"- best within {budget:g}%, setting chosen on the other half of the "
                         "evaluation set: " + leaders({name: 100 * point[comparison.metric]
                                                      for name, point in held_out.items()}))
    small = [b for b in budgets if b <= 60]
    for two_stage in (name for name in TWO_STAGE if name in by_name):
        reference = by_name[two_stage]
        dominating = [name for name, report in by_name.items() if name not in TWO_STAGE and all(
            not _higher(_at_budget(reference, b), _at_budget(report, b)) for b in small)]
        lines.append(f"- one-stage configurations at or above {two_stage} at every budget <= "
                     f"60%: {', '.join(dominating) if dominating else 'none'}")
    sd_alone = by_name.get("romebert_sd")
    surgery = ["romebert", "romebert_reversed", *(c for c in configs if c.startswith("exit_"))]
    for name in (n for n in surgery if sd_alone is not None and n in by_name):
        lines.append(f"- {name} against romebert_sd (SD alone): " + _versus(
            by_name[name], sd_alone, budgets))
    if spread:
        lines.append("- seed spread of the final exit (sd x 100): " + ", ".join(
            f"{config} {statistics.stdev(n.finals):.2f}" for config, n in spread.items())
            + "; margins below it are within seed noise")
        lines += seeded_leaders(spread)
    return lines


def leaders(values: dict[str, float]) -> str:
    """'a, b (83.10)': every name at the top value (x 100, to the printed 2 decimals)."""
    top = max(values.values())
    return f"{', '.join(n for n, v in values.items() if v >= top - 0.005)} ({top:.2f})"


def _versus(a: Any, b: Any, budgets: list[float]) -> str:
    wins = sum(_higher(_at_budget(a, x), _at_budget(b, x)) for x in budgets)
    losses = sum(_higher(_at_budget(b, x), _at_budget(a, x)) for x in budgets)
    return (f"final exit {100 * a.summary.final:.2f} vs {100 * b.summary.final:.2f}, area "
            f"{100 * a.summary.auc:.2f} vs {100 * b.summary.auc:.2f}, higher at {wins} and "
            f"lower at {losses} of {len(budgets)} budgets")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


CONCLUSIONS = "## Conclusions"
#: The depth study's plain answers (bench/depth_study.py, docs/depth_study.md), written by
#: hand beside the conclusions they revisit.
DEPTH_ANSWERS = "## Depth, tuning and compute: plain answers (the depth study)"
HAND_WRITTEN = (CONCLUSIONS, DEPTH_ANSWERS)


def kept_section(output: Path, heading: str) -> list[str]:
    """A hand-written section of an earlier report (`heading` up to the next heading of its
    level or below), so rewriting the tables keeps the prose."""
    if not output.is_file():
        return []
    kept: list[str] = []
    for line in output.read_text().splitlines():
        if kept and (line.startswith("## ") or line.startswith("### ")):
            break
        if kept or line.strip() == heading:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return [*kept, ""] if kept else []


def kept_conclusions(output: Path) -> list[str]:
    """The hand-written `## Conclusions` of an earlier report."""
    return kept_section(output, CONCLUSIONS)


COST_FILE = ROOT / "bench" / "results" / "study_cost.json"


def cost_section(cost_file: Path) -> list[str]:
    """The training cost of every configuration, from bench/study_cost.py's side-by-side
    measurement (the runs' own seconds were taken two at a time on a shared machine)."""
    if not cost_file.is_file():
        return []
    cost = json.loads(cost_file.read_text())
    lines = ["## Training cost", "",
             f"Seconds per optimizer step of each stage, measured side by side by "
             f"`bench/study_cost.py` (commit {cost['commit'][:10]}, {cost['rounds']} rounds, "
             f"MRPC, {', '.join(cost['settings'])}, one CPU thread), and what a paper-schedule "
             f"MRPC run ({cost['steps_per_stage']} steps per stage) costs at that rate:", "",
             "| configuration | seconds per step | paper MRPC run (minutes) | x romebert_sd |",
             "| --- | --- | ---: | ---: |"]
    for config, row in cost["configs"].items():
        stages = ", ".join(f"{stage} {value:.2f}"
                           for stage, value in row["seconds_per_step"].items())
        lines.append(f"| {config} | {stages} | {row['paper_mrpc_run_seconds'] / 60:.1f} | "
                     f"{row['relative_to_romebert_sd']:.2f} |")
    return [*lines, ""]


def recommendation_section(runs: Path, cost_file: Path) -> list[str]:
    """What the rule (`recommendation_scores`, `recommend`) picks, once every seeded run is in,
    with each task's part of the score beside it."""
    per_task = held_out_scores(runs)  # the held-out sweeps are computed once
    if per_task is None:
        return []
    scores = seed_scores(per_task)
    cost = {}
    if cost_file.is_file():
        cost = {config: float(row["relative_to_romebert_sd"])
                for config, row in json.loads(cost_file.read_text())["configs"].items()}
    pick, why = recommend(scores, cost)
    tasks = list(PHASES["paper"])
    lines = ["## Recommendation (by the rule fixed before the seeds were in)", "",
             "Score: held-out best metric x 100 averaged over the budgets "
             f"{', '.join(b + '%' for b in RECOMMEND_BUDGETS)} and over "
             f"{' and '.join(tasks)}, per seed (`recommendation_scores`); each task's part "
             "(`held_out_scores`) as mean ± sd over the seeds.", "",
             "| configuration | " + " | ".join(f"seed {s}" for s in SEEDS)
             + " | mean ± sd | " + " | ".join(tasks) + " | training cost x romebert_sd |",
             "| --- | " + " | ".join("---:" for _ in [*SEEDS, "mean", *tasks, "cost"]) + " |"]
    for config, values in scores.items():
        price = f"{cost[config]:.2f}" if config in cost else "-"
        lines.append(f"| {config} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {_mean_sd(values)} | "
                     + " | ".join(_mean_sd(per_task[config][task]) for task in tasks)
                     + f" | {price} |")
    picks = picks_over_splits(runs, cost, OTHER_SPLITS)
    counted = ", ".join(f"{config} {count} times" for config, count in picks.most_common())
    return [*lines, "", f"Recommended: **{pick}**: {why}.", "",
            f"A check on the rule, not part of it: with the dev set split at random in "
            f"{len(OTHER_SPLITS)} other ways (split seeds {OTHER_SPLITS[0]}-{OTHER_SPLITS[-1]}), "
            f"it picks {counted}.", ""]


def write_report(runs: Path, output: Path, cost_file: Path = COST_FILE) -> list[Path]:
    """docs/study.md (and its figures) from every finished run; lists what is missing.
    A run the recommendation cannot score raises ValueError before anything is written."""
    from gradsurg.outputs import atomic_write_text

    recommendation = recommendation_section(runs, cost_file)
    figures = output.parent / output.stem
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Study: when does gradient surgery pay off in multi-exit training?", "",
             "Written by `python bench/study.py --report` from the runs under "
             f"`{runs}`; each run's commit is in its table. Runs not finished yet are listed "
             f"at the end. The `{CONCLUSIONS}` and `{DEPTH_ANSWERS}` sections are "
             "written by hand and kept as they are when the report is rewritten.", ""]
    for heading in HAND_WRITTEN:
        lines += kept_section(output, heading)
    for phase in PHASES:
        for task in PHASES[phase]:
            lines += task_report(runs, phase, task, figures)
    lines += cost_section(cost_file)
    lines += recommendation
    best = best_paper_config(runs)
    missing = [run for run in planned_runs(best)
               if not (run.folder(runs) / "results.json").is_file()]
    if missing or best is None:
        lines += ["## Not finished yet", ""]
        lines += [f"- {run.phase} / {run.task} / {run.config} / seed {run.seed}"
                  for run in missing]
        if best is None:
            lines.append(f"- paper / every task / the best of {', '.join(seeded_candidates())} "
                         f"at seed 42 (chosen once those runs are in) / seeds "
                         f"{', '.join(map(str, SEEDS[1:]))}")
    atomic_write_text(output, "\n".join(lines) + "\n")  # a temporary name, then a rename
    return [output, *sorted(figures.glob("*.png"))]
