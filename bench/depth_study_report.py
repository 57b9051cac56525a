"""The depth study's report (issue 29): docs/depth_study.md from the finished runs.

    python bench/depth_study_report.py [--runs runs/depth_study] [--collect]

`--collect` first copies each finished run's small files (results.json, exit logits, commit,
command; a few hundred KB) into `bench/results/depth_study/`, laid out like the run folders, so
the report can be rebuilt on another machine: `--runs bench/results/depth_study`.

Tuned baselines: for each task and configuration, the training setting (learning rate, SD's
gamma) is chosen together with the exit threshold on one random half of the dev set and scored
on the other, both ways round (`held_out_best_over_settings`), against the first study's
single setting (lr 5e-5, gamma 0.9) scored the same way (`held_out_best_within`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COLLECTED = HERE / "results" / "depth_study"
KEPT_FILES = ("results.json", "exit_logits.safetensors", "commit.txt", "command.txt",
              "train_log.jsonl", "recipe.yaml")
BUDGETS = (25.0, 30.0, 40.0, 50.0, 60.0, 100.0)
#: The first study's setting, the untuned reference of every configuration.
FIRST_STUDY_SETTING = {"lr": "5e-5", "gamma": "0.9"}


def _bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not a package); registered under its name,
    which the dataclasses it defines look up."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


depth_study = _bench_module("depth_study")


def planned(runs: Path, phase: str) -> list[Any]:
    """A phase's runs as planned now (the seeds phase's grow once the 12-layer phase is in)."""
    return depth_study.plan(phase, runs)


def finished(runs: Path, phase: str) -> list[Any]:
    return [run for run in planned(runs, phase) if (run.folder(runs) / "results.json").is_file()]


def collect(runs: Path, into: Path = COLLECTED) -> list[Path]:
    """Copy every finished run's small files into `into` (same layout); returns the folders."""
    copied = []
    for phase in depth_study.PHASES:
        for run in finished(runs, phase):
            source, target = run.folder(runs), run.folder(into)
            target.mkdir(parents=True, exist_ok=True)
            for name in KEPT_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, target / name)
            copied.append(target)
    return copied


def is_first_study_setting(run: Any) -> bool:
    values = dict(item.split("=", 1) for item in run.slug.split(","))
    return all(values.get(key, wanted) == wanted for key, wanted in FIRST_STUDY_SETTING.items())


def tuned_rows(runs: Path, task: str) -> list[str]:
    """One task's table: each configuration untuned and tuned, held out, at every budget."""
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.held_out import held_out_best_over_settings
    from gradsurg.run_folder import load_run

    planned_runs = [run for run in depth_study.plan("tuned") if run.task == task]
    done = [run for run in finished(runs, "tuned") if run.task == task]
    budgets = " | ".join(f"{b:g}%" for b in BUDGETS)
    lines = [f"### {task}: held-out best metric x 100 within a time budget", "",
             f"| configuration | runs | setting | {budgets} | chosen at 100% / 40% |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in BUDGETS) + " | --- |"]
    for config in dict.fromkeys(run.config for run in planned_runs):
        mine = [run for run in done if run.config == config]
        count = f"{len(mine)}/{sum(run.config == config for run in planned_runs)}"
        if not mine:
            lines.append(f"| {config} | {count} | - | " + " | ".join("-" for _ in BUDGETS)
                         + " | - |")
            continue
        loaded = {run.slug: load_run(run.folder(runs)) for run in mine}
        first = next(iter(loaded.values()))
        metric = first.results["primary_metric"]
        rule, params = policy_of(first.results)
        spec = get_task(task)  # resolved once for the table
        untuned = next((run for run in mine if is_first_study_setting(run)), None)
        if untuned is not None:
            plain = _held_out(runs, task, untuned)[1]
            lines.append(f"| {config} | 1 | {untuned.slug} (first study) | "
                         + " | ".join(_cell(plain, b, metric) for b in BUDGETS) + " | - |")
        tuned = held_out_best_over_settings({slug: run.logits for slug, run in loaded.items()},
                                            first.labels, spec, rule, params, BUDGETS)
        chosen = " / ".join(_chosen(tuned, b) for b in (100.0, 40.0))
        lines.append(f"| {config} | {count} | tuned over {len(loaded)} | "
                     + " | ".join(_cell(tuned, b, metric) for b in BUDGETS) + f" | {chosen} |")
    return [*lines, ""]


def single_rows(runs: Path, task: str, entries: list[tuple[str, str, Any]]) -> list[str]:
    """One row per finished run (configuration, setting label, run), each scored held out at
    its own best threshold within every budget; '-' for a run not finished yet."""
    lines = [f"| configuration | setting | {' | '.join(f'{b:g}%' for b in BUDGETS)} |",
             "| --- | --- | " + " | ".join("---:" for _ in BUDGETS) + " |"]
    for config, label, run in entries:
        found = _held_out(runs, task, run)
        metric = found[0] if found else ""
        cells = [_cell(found[1], b, metric) if found else "-" for b in BUDGETS]
        lines.append(f"| {config} | {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _held_out(runs: Path, task: str, run: Any) -> tuple[str, Any] | None:
    """A finished run's primary metric and held-out best within every budget; None for a run
    not finished. Several tables show the same run (a 6-layer twin, the first study's
    setting): each is scored once, keyed by its files' state, not once per table."""
    from gradsurg.run_folder import EXIT_LOGITS_FILE, RESULTS_FILE

    results = run.folder(runs) / RESULTS_FILE
    if not results.is_file():
        return None
    logits = run.folder(runs) / EXIT_LOGITS_FILE
    stamp = tuple(p.stat().st_mtime_ns if p.is_file() else None for p in (results, logits))
    return _scored(run.folder(runs), task, stamp)


@functools.cache
def _scored(folder: Path, task: str, stamp: tuple[int | None, ...]) -> tuple[str, Any]:
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.held_out import held_out_best_within
    from gradsurg.run_folder import load_run

    loaded = load_run(folder)
    rule, params = policy_of(loaded.results)
    return loaded.results["primary_metric"], held_out_best_within(
        loaded.logits, loaded.labels, get_task(task), rule, params, BUDGETS)


def first_study_run(task: str, config: str) -> Any:
    """The tuned phase's run at the first study's setting (the screening's run, re-run)."""
    return next(run for run in depth_study.plan("tuned")
                if run.task == task and run.config == config and is_first_study_setting(run))


def matched_section(runs: Path) -> list[str]:
    lines = ["## A sum given surgery's compute (MiniLM)", "",
             f"RomeBERT-SD trained {depth_study.matched_epochs()} epochs instead of 1: the "
             "training time one epoch of per-exit UPGrad takes (`bench/results/study_cost.json`)"
             ", at each learning rate with gamma 0.9, beside the one-epoch runs of the tuned "
             "phase at the same settings. Held out as above, each run at its own threshold.", ""]
    for task in depth_study.TASKS:
        entries = []
        for run in depth_study.plan("matched"):
            if run.task != task:
                continue
            lr = dict(item.split("=", 1) for item in run.slug.split(","))["lr"]
            one_epoch = next(r for r in depth_study.plan("tuned") if r.task == task
                             and r.config == "romebert_sd" and r.slug == f"lr={lr},gamma=0.9")
            best = next(r for r in depth_study.plan("tuned") if r.task == task
                        and r.config == depth_study.BEST_SURGERY
                        and r.slug == f"lr={lr},gamma=0.9")
            entries += [("romebert_sd", f"lr={lr}, 1 epoch", one_epoch),
                        ("romebert_sd", f"lr={lr}, {depth_study.matched_epochs()} epochs", run),
                        (depth_study.BEST_SURGERY, f"lr={lr}, 1 epoch", best)]
        lines += [f"### {task}", "", *single_rows(runs, task, entries)[:-1],
                  _tuned_over_row(runs, task, [run for run in depth_study.plan("matched")
                                               if run.task == task]), ""]
    return lines


def _tuned_over_row(runs: Path, task: str, candidates: list[Any]) -> str:
    """The matched runs' learning rate chosen with the threshold on one half, scored on the
    other (as the tuned tables do), so no rate is picked on the examples it is scored on."""
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.held_out import held_out_best_over_settings
    from gradsurg.run_folder import load_run

    done = [run for run in candidates if (run.folder(runs) / "results.json").is_file()]
    label = f"tuned over the {len(done)} matched runs"
    if not done:
        return f"| romebert_sd | {label} | " + " | ".join("-" for _ in BUDGETS) + " |"
    loaded = {run.slug: load_run(run.folder(runs)) for run in done}
    first = next(iter(loaded.values()))
    rule, params = policy_of(first.results)
    found = held_out_best_over_settings({slug: run.logits for slug, run in loaded.items()},
                                        first.labels, get_task(task), rule, params, BUDGETS)
    metric = first.results["primary_metric"]
    return f"| romebert_sd | {label} | " + " | ".join(_cell(found, b, metric)
                                                     for b in BUDGETS) + " |"


def methods_section(runs: Path) -> list[str]:
    """The new methods at 6 layers and every 12-layer run, each beside its 6-layer twin."""
    lines = ["## The multi-exit methods at 6 layers (MiniLM, the screening's setting)", "",
             "Each new method once at lr 5e-5 (gamma 0.9), beside the screening's "
             "configurations at the same setting (the tuned phase's runs there, and the "
             "re-run RomeBERT and reversed projection on SST-2).", ""]
    for task in depth_study.TASKS:
        entries = [(config, "lr=5e-5", first_study_run(task, config))
                   for config in ("deebert", "romebert_sd", depth_study.BEST_SURGERY)]
        entries += [(run.config, "lr=5e-5", run) for run in depth_study.plan("methods6")
                    if run.task == task]
        lines += [f"### {task}", "", *single_rows(runs, task, entries)]
    lines += ["## 12 layers (all-mpnet-base-v2) against 6 (MiniLM): SST-2 screening subset",
              "", "The screening's SST-2 run (8,000 sentences, one epoch, lr 5e-5, seed 42) on "
              "each backbone; the 6-layer row is the tuned phase's run at that setting, or "
              "(RomeBERT, the reversed projection, the new methods) the `methods6` run.", ""]
    entries = []
    six = {run.config: run for run in depth_study.plan("methods6")
           if run.task == depth_study.DEPTH12_TASK}
    for run in depth_study.plan("depth12"):
        twin = six.get(run.config) or first_study_run(run.task, run.config)
        entries += [(run.config, "6 layers", twin), (run.config, "12 layers", run)]
    return [*lines, *single_rows(runs, depth_study.DEPTH12_TASK, entries),
            *small_section(runs)]


def small_section(runs: Path) -> list[str]:
    """Per-exit UPGrad at 12 layers on the subset's first sentences, beside the runs it is read
    against on the same sentences and (where it ran) each one's 8,000-sentence run."""
    rows = depth_study.DEPTH12_SMALL_ROWS
    lines = [f"## 12 layers on {rows:,} sentences: per-exit UPGrad (SST-2)", "",
             "Per-exit UPGrad's 8,000-sentence epoch at 12 layers does not fit the working "
             "session a run must finish in (`depth12_small` in `bench/depth_study.py`). It and "
             f"the runs it is read against trained on the first {rows:,} sentences of the same "
             "seeded subset (one epoch, lr 5e-5, seed 42); the 8,000-sentence run of each "
             "beside it.", ""]
    full = {run.config: run for run in depth_study.plan("depth12")}
    entries = []
    for run in depth_study.plan("depth12_small"):
        entries.append((run.config, f"{rows:,} sentences", run))
        if run.config in full:
            entries.append((run.config, "8,000 sentences", full[run.config]))
    return [*lines, *single_rows(runs, depth_study.DEPTH12_TASK, entries)]


#: The encoder's thirds, for reading maps of different depths side by side.
THIRDS = ("lower", "middle", "upper")


def _layer_index(block: str) -> int:
    return int(block.rsplit(".", 1)[1])  # per-layer blocks are `<encoder>.layers.<i>`


def thirds_of(found: dict[str, Any], layers: int) -> list[float | None]:
    """A map's mean conflict share in the lower, middle and upper third of a `layers`-layer
    encoder (the mean over the third's blocks of each block's mean over its pairs); None for a
    third no two groups reach."""
    from gradsurg.report.conflicts import block_rates

    shares: list[list[float]] = [[] for _ in THIRDS]
    for row in block_rates(found):
        shares[3 * _layer_index(row["block"]) // layers].append(row["conflict_share"])
    return [sum(third) / len(third) if third else None for third in shares]


def conflict_section(runs: Path) -> list[str]:
    """Each 12-layer run's own conflict map beside its 6-layer twin's (both logged
    `conflict_blocks: per_layer`): per layer, the share of measured steps on which the loss
    groups' gradients conflicted; and whether logging left the 6-layer runs as they trained."""
    from gradsurg.report.conflicts import markdown_lines, run_conflict_map, verdict

    lines = ["## Where the loss groups conflict, at 6 and at 12 layers", "",
             "Each 12-layer run, and its 6-layer twin re-run for this (`conflicts6`), logged its "
             "groups' cosine per encoder layer (`conflict_blocks: per_layer`, a log line every "
             "5 steps; `gradsurg compare` draws it): each step's where the combiner builds the "
             "matrix anyway, one step per log line (100 in the epoch) for the sum-based "
             "romebert_sd and gradient_equilibrium. A cell is one (layer, pair of groups); its "
             "share is the share of measured steps with a negative cosine. By depth: the mean "
             "share in each third of the encoder (layers 1-2 / 3-4 / 5-6 of 6; 1-4 / 5-8 / "
             "9-12 of 12), '-' where no two groups reach.", "",
             "| configuration | layers | cells >= 10% | lower | middle | upper |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    six = {run.config: run for run in depth_study.plan("conflicts6")}
    rows = f"{depth_study.DEPTH12_SMALL_ROWS:,} sentences"
    details: list[str] = []
    mapped: set[str] = set()  # configurations whose 6-layer map is in the table already
    for run in [*depth_study.plan("depth12"), *depth_study.plan("depth12_small")]:
        if not set(depth_study.CONFLICT_LOGGING) <= set(run.logging):
            continue  # DeeBERT's stages train one group at a time
        maps = [] if run.config in mapped else [("6", "6 layers", 6, six[run.config])]
        maps.append(("12", "12 layers", 12, run) if run.phase == "depth12"
                    else (f"12 ({rows})", f"12 layers, {rows}", 12, run))
        mapped.add(run.config)
        for label, title, layers, each in maps:
            heading = f"### {run.config}, {title}"
            done = (each.folder(runs) / "results.json").is_file()
            found = run_conflict_map(each.folder(runs)) if done else None  # whole runs only
            if found is None:
                state = ("finished, but its log holds no per-block cosines" if done
                         else "not finished")
                lines.append(f"| {run.config} | {label} | {state} | | | |")
                details += [heading, "", state.capitalize() + ".", ""]
                continue
            said = verdict(found)
            cells = " | ".join("-" if share is None else f"{share * 100:.1f}%"
                               for share in thirds_of(found, layers))
            lines.append(f"| {run.config} | {label} | {len(said.hot)}/{said.cells} | {cells} |")
            details += [heading, "", *markdown_lines(found)]
    return [*lines, "", *reproduction_lines(runs), *details]


def reproduction_lines(runs: Path) -> list[str]:
    """Whether the conflict-logging 6-layer runs trained as their twins did: the largest
    difference of their exits' evaluation logits."""
    from gradsurg.run_folder import load_run

    lines = ["The 6-layer runs that logged the maps against their twins without logging (the "
             "tuned or `methods6` run at the same setting): the largest absolute difference of "
             "any exit's evaluation logit.", "",
             "| configuration | max abs logit difference |", "| --- | ---: |"]
    twins = {run.config: run for run in depth_study.plan("methods6")
             if run.task == depth_study.DEPTH12_TASK}
    for run in depth_study.plan("conflicts6"):
        twin = twins.get(run.config) or first_study_run(run.task, run.config)
        if not all((r.folder(runs) / "results.json").is_file() for r in (run, twin)):
            lines.append(f"| {run.config} | not finished |")
            continue
        logged, plain = load_run(run.folder(runs)).logits, load_run(twin.folder(runs)).logits
        lines.append(f"| {run.config} | {(logged - plain).abs().max().item():.2e} |")
    return [*lines, ""]


def seeds_section(runs: Path) -> list[str]:
    """The 12-layer runs given seeds 43 and 44 beside their seed-42 run, held out as above,
    and each budget's mean ± sd over the three seeds."""
    import statistics

    lines = ["## 12 layers, three seeds", "",
             "DeeBERT, RomeBERT-SD and the best other 12-layer configuration by the first "
             "study's rule (area under the metric-vs-time curve at seed 42), at seeds 42, 43 "
             "and 44; held out as above, each run at its own threshold.", ""]
    seeded = planned(runs, "seeds12")
    if depth_study.best_depth12_config(runs) is None:
        lines += ["The best other configuration is picked once the 12-layer phase has "
                  "finished; its seeds are not planned yet.", ""]
    first = {run.config: run for run in depth_study.plan("depth12")}
    budgets = " | ".join(f"{b:g}%" for b in BUDGETS)
    lines += [f"| configuration | seed | {budgets} |",
              "| --- | --- | " + " | ".join("---:" for _ in BUDGETS) + " |"]
    for config in dict.fromkeys(run.config for run in seeded):
        runs_of = [first[config], *(run for run in seeded if run.config == config)]
        found = [_held_out(runs, depth_study.DEPTH12_TASK, run) for run in runs_of]
        for run, each in zip(runs_of, found, strict=True):
            cells = [_cell(each[1], b, each[0]) if each else "-" for b in BUDGETS]
            lines.append(f"| {config} | {run.seed} | " + " | ".join(cells) + " |")
        if all(found):
            means = []
            for budget in BUDGETS:
                values = [100 * each[1][f"{budget:g}"][each[0]] for each in found
                          if each[1].get(f"{budget:g}") is not None]
                means.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
                             if len(values) == len(found) else "-")
            lines.append(f"| {config} | mean ± sd | " + " | ".join(means) + " |")
    return [*lines, ""]


def elbert_section(runs: Path) -> list[str]:
    """ELBERT's measured recipe at both starts of its exit weights, three seeds each: held out
    within each budget, and the least time within one point of each run's own final exit."""
    import statistics

    plan = depth_study.plan("elbert")
    entries = [(f"elbert, init {run.init}", f"seed {run.seed}", run)
               for init in depth_study.ELBERT_INITS for run in plan if run.init == init]
    lines = ["## ELBERT's exit weights: where they start, three seeds (MiniLM)", "",
             "ELBERT's measured recipe (`bench/results/elbert/recipe.yaml`: 4,000 SST-2 "
             "sentences, one epoch, its confidence-window rule) with the learned exit weights "
             "started at the default W = 0 (w = 0.5) and at ELBERT's code's 4.0 (w = 0.982). "
             "Held out as above, each run at its own threshold:", "",
             *single_rows(runs, "sst2", entries),
             "Each run's final exit, and the least expected time at which its window rule is "
             "within one point of it (`bench/elbert_rules.py`; not held out):", "",
             "| start | seed | final exit | least time within 1 point |",
             "| --- | ---: | ---: | ---: |"]
    done = [run for run in plan if (run.folder(runs) / "results.json").is_file()]
    elbert_rules = _bench_module("elbert_rules")  # each run's exits under its window rule
    summaries = {run: elbert_rules.summarize(run.folder(runs)) for run in done}
    for init in depth_study.ELBERT_INITS:
        mine = [run for run in done if run.init == init]
        for run in mine:
            found = summaries[run]
            lines.append(f"| init {init} | {run.seed} | {found['exit_accuracy'][-1]:.2f} | "
                         f"{found['rules']['confidence_window']['least_time_within_1_point']:.1f}%"
                         " |")
        if len(mine) > 1:
            finals = [summaries[run]["exit_accuracy"][-1] for run in mine]
            least = [summaries[run]["rules"]["confidence_window"]["least_time_within_1_point"]
                     for run in mine]
            lines.append(f"| init {init} | mean ± sd of {len(mine)} | "
                         f"{statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f} | "
                         f"{statistics.mean(least):.1f} ± {statistics.stdev(least):.1f}% |")
    return [*lines, ""]


def policy_of(results: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The exit policy a run was swept with (its class, its parameters), from results.json."""
    from gradsurg.multiexit.policies import POLICIES

    policy = dict(results.get("exit_policy") or {"name": "entropy"})
    return POLICIES.get(policy.pop("name")), policy


def _cell(found: dict[str, Any] | None, budget: float, metric: str) -> str:
    best = None if found is None else found.get(f"{budget:g}")
    return "-" if best is None else f"{100 * best[metric]:.2f}"


def _chosen(found: dict[str, Any] | None, budget: float) -> str:
    best = None if found is None else found.get(f"{budget:g}")
    return "-" if best is None else " & ".join(best["chosen"])


def commits(runs: Path) -> list[str]:
    found = sorted({(run.folder(runs) / "commit.txt").read_text().strip()[:10]
                    for phase in depth_study.PHASES for run in finished(runs, phase)
                    if (run.folder(runs) / "commit.txt").is_file()})
    return found


def write_report(runs: Path, output: Path) -> Path:
    lines = ["# Depth study: tuned baselines, compute-matched sums and 12 layers (issue 29)", "",
             f"Written by `python bench/depth_study_report.py` from the runs under "
             f"`{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`; "
             f"trained at commit(s) {', '.join(commits(runs)) or '-'} "
             "(each run's exact command is in its `command.txt`). Measurements of the "
             "12-layer backbone and ELBERT are in docs/depth_study_notes.md. The "
             f"`{depth_study.study.CONCLUSIONS}` section is written by hand and kept as it is "
             "when the report is rewritten.", "",
             *depth_study.study.kept_conclusions(output),
             "## Tuned baselines (MiniLM, the screening's STS-B and 8,000-sentence SST-2)", "",
             "Each configuration at lr "
             f"{' / '.join(depth_study.LEARNING_RATES)} (x SD's gamma "
             f"{' / '.join(depth_study.GAMMAS)} where it has SD), then at larger rates, each "
             "added at a later commit while the largest so far won the choice: "
             + "; ".join(f"{task} {' / '.join(rates)}"
                         for task, rates in depth_study.EDGE_LEARNING_RATES.items())
             + ". 'first study' is the first "
             "study's one setting, scored held out; 'tuned' "
             "chooses the setting with the exit threshold on one half of the dev set and scores "
             "it on the other, both ways round ('chosen': the setting picked each way).", ""]
    for task in depth_study.TASKS:
        lines += tuned_rows(runs, task)
    lines += matched_section(runs)
    lines += methods_section(runs)
    lines += seeds_section(runs)
    lines += conflict_section(runs)
    lines += elbert_section(runs)
    todo = [f"- {run.phase} / {run.task} / {run.config} / {run.slug} / seed {run.seed}"
            for phase in depth_study.PHASES for run in planned(runs, phase)
            if not (run.folder(runs) / "results.json").is_file()]
    if depth_study.best_depth12_config(runs) is None:
        todo.append("- seeds12: seeds 43 and 44 of the best other 12-layer configuration, "
                    "picked once the 12-layer phase has finished")
    if todo:
        lines += ["## Not finished yet", "", *todo, ""]
    output.write_text("\n".join(lines))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "depth_study")
    parser.add_argument("--collect", action="store_true",
                        help=f"copy the finished runs' small files into {COLLECTED} first")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "depth_study.md")
    args = parser.parse_args()
    runs = args.runs
    if args.collect:
        collect(runs)
        runs = COLLECTED
    print(write_report(runs, args.output))


if __name__ == "__main__":
    main()
