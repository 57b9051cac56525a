"""When does gradient surgery pay off in multi-exit training? The study's runs (issue 15).

    GLUE_DIR=../shared/glue_data python bench/study.py --phase screening [--jobs 2]
    GLUE_DIR=../shared/glue_data python bench/study.py --phase paper --configs deebert romebert \
        --seeds 42 43 44
    python bench/study.py --list            # every planned run and whether it is finished
    python bench/study.py --report          # docs/study.md from the finished runs

Every run is `python -m gradsurg run RECIPE --set ... --output RUNS/PHASE/TASK/CONFIG/seed-S
--resume` through the real CLI, so a stopped study continues from each run's latest checkpoint
and a finished run (results.json present) is skipped. Runs go to `--runs` (default
`runs/study`), `--jobs` at a time (default 2), each on one CPU thread at the lowest priority so
a busy machine slows them instead of them slowing the machine. Each folder records the git
commit that trained it (`commit.txt`) and its exact command (`command.txt`); run the study from
a worktree pinned to a commit so edits elsewhere cannot change a running experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Configuration name -> (recipe under recipes/, --set overrides).
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "deebert": ("deebert_glue.yaml", []),
    "deebert_sd": ("deebert_sd_glue.yaml", []),
    "romebert_sd": ("romebert_sd_glue.yaml", []),
    "romebert": ("romebert_glue.yaml", []),
    # the authors' code on MNLI/QQP: SD projected off the final exit's gradient, which stays whole
    "romebert_reversed": ("romebert_glue.yaml",
                          ["combiner={name: project, target: sd, reference: final}"]),
    "exit_upgrad": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=upgrad"]),
    "exit_pcgrad": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=pcgrad"]),
    "exit_imtlg": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=imtlg"]),
}
PAPER_MODES = ["deebert", "deebert_sd", "romebert_sd", "romebert"]
#: The best two configurations of the screening besides the paper modes: at 50% time on STS-B
#: (reversed 77.74, UPGrad 74.68 Pearson; PCGrad 72.66, IMTL-G 70.70) and at 40% time on SST-2
#: (UPGrad 82.22, reversed 82.11; PCGrad 82.00, IMTL-G 78.44) they are the top two of the rest.
SCREENED_INTO_PAPER = ["romebert_reversed", "exit_upgrad"]
PAPER_CONFIGS = [*PAPER_MODES, *SCREENED_INTO_PAPER]
#: Three seeds for these and for the paper phase's best other configuration (`best_paper_config`).
SEEDS = [42, 43, 44]
ALWAYS_SEEDED = ["deebert", "romebert"]
TWO_STAGE = ("deebert", "deebert_sd")

COMMON = ["pooling=mean", "save_model=false", "threads=1", "checkpoint_every=200"]
#: Phase -> task -> overrides. Screening: CPU-sized; paper: the RomeBERT paper's schedule.
#: SST-2's screening subset is 8,000 sentences, not the 20,000 first planned: at 20,000 the
#: eight screening runs alone cost about 4 CPU-hours on two cores (500 steps instead of 1,250).
PHASES: dict[str, dict[str, list[str]]] = {
    "screening": {
        "stsb": ["epochs=1", "batch_size=16", "optimizer.lr=5e-5"],
        "sst2": ["epochs=1", "batch_size=16", "optimizer.lr=5e-5", "train_rows=8000"],
    },
    "paper": {
        "mrpc": ["epochs=3", "batch_size=8", "optimizer.lr=2e-5", "max_length=128"],
        "rte": ["epochs=3", "batch_size=8", "optimizer.lr=2e-5", "max_length=128"],
    },
}


@dataclass(frozen=True)
class Run:
    phase: str
    task: str
    config: str
    seed: int

    def folder(self, runs: Path) -> Path:
        return runs / self.phase / self.task / self.config / f"seed-{self.seed}"

    def command(self, runs: Path) -> list[str]:
        sets = [f"task={self.task}", f"seed={self.seed}", *COMMON, *PHASES[self.phase][self.task]]
        return [*run_command(self.config, sets, self.folder(runs)), "--resume"]


def run_command(config: str, sets: list[str], output: Path) -> list[str]:
    """`python -m gradsurg run` of one configuration's recipe with `sets`, then the
    configuration's own overrides, into `output`."""
    recipe, overrides = CONFIGS[config]
    args = [sys.executable, "-m", "gradsurg", "run", str(ROOT / "recipes" / recipe)]
    for item in [*sets, *overrides]:
        args += ["--set", item]
    return [*args, "--output", str(output)]


def plan(phase: str, configs: list[str], seeds: list[int], tasks: list[str] | None) -> list[Run]:
    chosen = tasks or list(PHASES[phase])
    return [Run(phase, task, config, seed)
            for task in chosen for config in configs for seed in seeds]


def seeded_candidates() -> list[str]:
    return [config for config in PAPER_CONFIGS if config not in ALWAYS_SEEDED]


def best_paper_config(runs: Path) -> str | None:
    """The paper phase's best configuration besides deebert and romebert, which gets three
    seeds too: the highest mean normalized area under the metric-vs-time curve over the paper
    tasks at seed 42. None until every one of those runs is finished."""
    candidates = seeded_candidates()
    areas: dict[str, list[float]] = {config: [] for config in candidates}
    for run in plan("paper", candidates, SEEDS[:1], None):
        results = run.folder(runs) / "results.json"
        if not results.is_file():
            return None
        areas[run.config].append(float(json.loads(results.read_text())["tradeoff"]["auc"]))
    return max(candidates, key=lambda config: statistics.mean(areas[config]))


#: The budgets the recommendation averages over (every budget of the comparison).
RECOMMEND_BUDGETS = ("25", "30", "40", "50", "60", "100")


def held_out_scores(runs: Path, split_seed: int | None = None
                    ) -> dict[str, dict[str, list[float]]] | None:
    """Each seeded configuration's score on each paper task, per seed: its held-out best
    metric x 100 (setting chosen on the other half of the dev set) averaged over every budget
    of RECOMMEND_BUDGETS; `split_seed`: the dev set's random split (default: the one
    `gradsurg compare` uses). None until every seeded run is finished; ValueError naming a run
    with no held-out point within one of those budgets (every run is scored on the same
    budgets)."""
    from gradsurg.report.compare import held_out_budgets, load_run

    best = best_paper_config(runs)
    seeded = [*ALWAYS_SEEDED, best] if best else []
    if not seeded or any(not (run.folder(runs) / "results.json").is_file()
                         for run in plan("paper", seeded, SEEDS, None)):
        return None
    scores: dict[str, dict[str, list[float]]] = {}
    for config in seeded:
        for task in PHASES["paper"]:
            for seed in SEEDS:
                folder = Run("paper", task, config, seed).folder(runs)
                run = load_run(folder)
                held_out = held_out_budgets(run, seed=split_seed) or {}
                metric = run.results["primary_metric"]
                missing = [b for b in RECOMMEND_BUDGETS if held_out.get(b) is None]
                if missing:
                    raise ValueError(f"{folder}: no held-out point within {missing[0]}%")
                scores.setdefault(config, {}).setdefault(task, []).append(statistics.mean(
                    100 * float(held_out[b][metric]) for b in RECOMMEND_BUDGETS))
    return scores


def recommendation_scores(runs: Path, split_seed: int | None = None
                          ) -> dict[str, list[float]] | None:
    """The rule a recommendation follows, fixed before the seed runs were in: each seeded
    configuration's score per seed is its `held_out_scores` averaged over both paper tasks.
    None until every seeded run is finished."""
    per_task = held_out_scores(runs, split_seed)
    return None if per_task is None else seed_scores(per_task)


def seed_scores(per_task: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """`held_out_scores` -> each configuration's score per seed, the mean over the tasks."""
    return {config: [statistics.mean(values) for values in zip(*tasks.values(), strict=True)]
            for config, tasks in per_task.items()}


def recommend(scores: dict[str, list[float]], cost: dict[str, float]) -> tuple[str, str]:
    """(configuration, why): the highest mean score over seeds, unless others are within the
    seeds' spread of it (the largest seed sd of any configuration), in which case the cheapest
    to train of those (`cost`: training cost relative to romebert_sd)."""
    means = {config: statistics.mean(values) for config, values in scores.items()}
    ranked = sorted(means, key=means.__getitem__, reverse=True)
    top = ranked[0]
    noise = max(statistics.stdev(values) for values in scores.values())
    level = [c for c in ranked if means[top] - means[c] <= noise]
    if len(level) == 1:
        return top, (f"highest mean score ({means[top]:.2f}), more than the seeds' spread "
                     f"({noise:.2f}) above the next ({means[ranked[1]]:.2f})")
    cheapest = min(level, key=lambda c: cost.get(c, float("inf")))
    return cheapest, (f"{', '.join(level)} are within the seeds' spread ({noise:.2f}) of the "
                      f"top score ({means[top]:.2f}); {cheapest} is the cheapest of them to "
                      f"train ({cost.get(cheapest, float('nan')):.2f} x romebert_sd)")


def planned_runs(best: str | None) -> list[Run]:
    """Every run of the study: the screening, the paper phase at seed 42, and seeds 43 and 44
    for deebert, romebert and (once known) the paper phase's best other configuration."""
    seeded = [*ALWAYS_SEEDED, *([best] if best else [])]
    return [*plan("screening", list(CONFIGS), SEEDS[:1], None),
            *plan("paper", PAPER_CONFIGS, SEEDS[:1], None),
            *plan("paper", seeded, SEEDS[1:], None)]


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def launch(run: Any, runs: Path) -> subprocess.Popen[bytes]:
    folder = run.folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    command = run.command(runs)
    head = commit()
    recorded = folder / "commit.txt"
    if recorded.is_file() and recorded.read_text().strip() != head:
        # a resumed run keeps the commit that started it; mixing code versions is refused
        sys.exit(f"error: {folder} was started at commit {recorded.read_text().strip()}, this "
                 f"checkout is {head}; finish it there or delete the folder")
    recorded.write_text(head + "\n")
    (folder / "command.txt").write_text(shlex.join(command) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (folder / "stdout.log").open("ab")
    return subprocess.Popen(["nice", "-n", "19", *command], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)


#: Per-step facts of the surgery worth reporting, from results.json's training means: how
#: often the projection fired, conflicting pairs (PCGrad), rows projected (UPGrad), negative
#: weights (IMTL-G), and the final/SD cosine. "mean cosine" averages every group pair's mean.
SURGERY_FACTS = ("project/fired", "pcgrad/conflicts", "upgrad/projected",
                 "imtlg/negative_weights", "cosine/final/sd")
MEAN_COSINE = "mean cosine"


def finished_runs(runs: Path, phase: str, task: str) -> dict[str, dict[int, Path]]:
    """config -> seed -> folder of every finished run of one phase and task."""
    found: dict[str, dict[int, Path]] = {}
    for config in CONFIGS:
        for folder in sorted((runs / phase / task / config).glob("seed-*")):
            if (folder / "results.json").is_file():
                found.setdefault(config, {})[int(folder.name.split("-")[1])] = folder
    return found


def task_report(runs: Path, phase: str, task: str, figures: Path) -> list[str]:
    """One task's section: `gradsurg compare`'s tables and plots over the first seed of every
    configuration, the surgery's facts, the commits, and the spread over seeds."""
    from gradsurg.report.compare import compare_runs, load_run, markdown_tables, write_plots

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


@dataclass
class SeedNumbers:
    """One configuration's numbers x 100 over its seeds: final exit, normalized area, and best
    metric within each budget (``None`` for a seed with no point within it)."""

    finals: list[float]
    areas: list[float]
    budgets: dict[str, list[float | None]]
    held_out: dict[str, list[float | None]] = field(default_factory=dict)  # from the logits


def seed_spread(found: dict[str, dict[int, Path]]) -> dict[str, SeedNumbers]:
    """config -> its numbers per seed, for every configuration with two or more seeds (from
    results.json; the held-out budgets from each run's exit logits)."""
    from gradsurg.report.compare import held_out_budgets, load_run

    spread = {}
    for config, seeds in found.items():
        if len(seeds) < 2:
            continue
        numbers = SeedNumbers([], [], {})
        for folder in seeds.values():
            results = json.loads((folder / "results.json").read_text())
            metric = results["primary_metric"]
            tradeoff = results.get("tradeoff") or {}
            numbers.finals.append(100 * float(results["exit_metrics"][-1][metric]))
            numbers.areas.append(100 * float(tradeoff.get("auc", "nan")))
            _add_budgets(numbers.budgets, tradeoff.get("best_within"), metric)
            _add_budgets(numbers.held_out, held_out_budgets(load_run(folder)), metric)
        spread[config] = numbers
    return spread


def _add_budgets(into: dict[str, list[float | None]],
                 best_within: dict[str, dict[str, float] | None] | None, metric: str) -> None:
    """Append one seed's best metric x 100 within each budget (None: no point within it)."""
    for budget, point in (best_within or {}).items():
        into.setdefault(budget, []).append(None if point is None else 100 * float(point[metric]))


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


def kept_conclusions(output: Path) -> list[str]:
    """The hand-written conclusions of an earlier report (its `## Conclusions` section up to
    the next heading of its level), so rewriting the tables keeps the prose."""
    if not output.is_file():
        return []
    kept: list[str] = []
    for line in output.read_text().splitlines():
        if kept and (line.startswith("## ") or line.startswith("### ")):
            break
        if kept or line.strip() == CONCLUSIONS:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return [*kept, ""] if kept else []


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


#: Split seeds of the check on how much the recommendation depends on the dev set's split.
OTHER_SPLITS = range(1, 11)


def picks_over_splits(runs: Path, cost: dict[str, float], splits: range) -> Counter[str]:
    """How often the rule picks each configuration when the dev set is split with each seed."""
    picks: Counter[str] = Counter()
    for seed in splits:
        scores = recommendation_scores(runs, seed)
        if scores is None:
            raise ValueError(f"{runs}: the seeded runs are not all finished")
        picks[recommend(scores, cost)[0]] += 1
    return picks


def write_report(runs: Path, output: Path, cost_file: Path = COST_FILE) -> list[Path]:
    """docs/study.md (and its figures) from every finished run; lists what is missing.
    A run the recommendation cannot score raises ValueError before anything is written."""
    recommendation = recommendation_section(runs, cost_file)
    figures = output.parent / output.stem
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Study: when does gradient surgery pay off in multi-exit training?", "",
             "Written by `python bench/study.py --report` from the runs under "
             f"`{runs}`; each run's commit is in its table. Runs not finished yet are listed "
             f"at the end. The `{CONCLUSIONS}` section is written by hand and kept as it is "
             "when the report is rewritten.", ""]
    lines += kept_conclusions(output)
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
    output.write_text("\n".join(lines) + "\n")
    return [output, *sorted(figures.glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=list(PHASES), default="screening")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: every configuration (screening), the paper modes and "
                             "the two best of the screening (paper)")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="list the runs and their state")
    parser.add_argument("--report", action="store_true",
                        help="write --report-file from the finished runs; train nothing")
    parser.add_argument("--report-file", type=Path, default=ROOT / "docs" / "study.md")
    args = parser.parse_args()
    if args.report:
        try:
            written = write_report(args.runs, args.report_file)
        except ValueError as problem:  # a run the recommendation cannot score: name it
            sys.exit(f"error: {problem}")
        for path in written:
            print(path)
        return
    configs = args.configs or (list(CONFIGS) if args.phase == "screening" else PAPER_CONFIGS)
    runs = plan(args.phase, configs, args.seeds, args.tasks)
    todo = [r for r in runs if not (r.folder(args.runs) / "results.json").is_file()]
    if args.list:
        for r in runs:
            state = "done" if r not in todo else "todo"
            print(f"{state}  {r.folder(args.runs)}")
        return
    run_all(todo, args.runs, args.jobs)


def run_all(todo: list[Any], runs: Path, jobs: int) -> None:
    """Launch `todo` (anything with `folder(runs)` and `command(runs)`), `jobs` at a time,
    until all have ended; exit with an error line if any failed."""
    todo = list(todo)
    active: list[tuple[Any, subprocess.Popen[bytes]]] = []
    failed: list[Any] = []
    while todo or active:
        while todo and len(active) < jobs:
            run = todo.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {run.folder(runs)}", flush=True)
            active.append((run, launch(run, runs)))
        time.sleep(10)
        for item in list(active):
            run, process = item
            if process.poll() is not None:
                active.remove(item)
                state = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
                if process.returncode != 0:
                    failed.append(run)
                print(f"{time.strftime('%H:%M:%S')} {state} {run.folder(runs)}", flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed; see their stdout.log")


if __name__ == "__main__":
    main()
