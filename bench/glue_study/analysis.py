"""Numbers from the study's finished runs: which runs are in, the spread over seeds, the
held-out scores and the recommendation rule fixed before the seed runs were in."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from glue_study.plan import ALWAYS_SEEDED, CONFIGS, PHASES, SEEDS, Run, best_paper_config, plan

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
    from gradsurg.multiexit.evaluation.comparison import held_out_budgets
    from gradsurg.run_folder import load_run

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


def finished_runs(runs: Path, phase: str, task: str) -> dict[str, dict[int, Path]]:
    """config -> seed -> folder of every finished run of one phase and task."""
    found: dict[str, dict[int, Path]] = {}
    for config in CONFIGS:
        for folder in sorted((runs / phase / task / config).glob("seed-*")):
            if (folder / "results.json").is_file():
                found.setdefault(config, {})[int(folder.name.split("-")[1])] = folder
    return found


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
    from gradsurg.multiexit.evaluation.comparison import held_out_budgets
    from gradsurg.run_folder import load_run

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
