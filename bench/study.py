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
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
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
        recipe, overrides = CONFIGS[self.config]
        sets = [f"task={self.task}", f"seed={self.seed}", *COMMON,
                *PHASES[self.phase][self.task], *overrides]
        args = [sys.executable, "-m", "gradsurg", "run", str(ROOT / "recipes" / recipe)]
        for item in sets:
            args += ["--set", item]
        return [*args, "--output", str(self.folder(runs)), "--resume"]


def plan(phase: str, configs: list[str], seeds: list[int], tasks: list[str] | None) -> list[Run]:
    chosen = tasks or list(PHASES[phase])
    return [Run(phase, task, config, seed)
            for task in chosen for config in configs for seed in seeds]


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def launch(run: Run, runs: Path) -> subprocess.Popen[bytes]:
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


#: Per-step facts of the surgery worth reporting, from results.json's training means.
SURGERY_FACTS = ("project/fired", "cosine/final/sd", "pcgrad/conflicts")


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
             *tables["per_exit"], *tables["summary"], *tables["budgets"]]
    lines += [f"![{name}]({figures.name}/{path.name})" for name, path in plots.items()]
    lines += ["", "| configuration | commit | " + " | ".join(SURGERY_FACTS) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in SURGERY_FACTS) + " |"]
    for run, config in zip(loaded, found):
        means: dict[str, Any] = {}
        for stage in (run.results.get("train") or {}).values():
            means.update(stage)
        facts = [f"{means[key]:.3f}" if key in means else "-" for key in SURGERY_FACTS]
        commit = (run.folder / "commit.txt").read_text().strip()[:10] if run.folder and (
            run.folder / "commit.txt").is_file() else "?"
        lines.append(f"| {config} | {commit} | " + " | ".join(facts) + " |")
    spread = [(config, seeds) for config, seeds in found.items() if len(seeds) > 1]
    if spread:
        lines += ["", "| configuration | seeds | final exit (mean ± sd) | area (mean ± sd) |",
                  "| --- | ---: | ---: | ---: |"]
        for config, seeds in spread:
            finals, areas = [], []
            for folder in seeds.values():
                run = load_run(folder)
                metric = run.results["primary_metric"]
                finals.append(100 * float(run.results["exit_metrics"][-1][metric]))
                areas.append(100 * float((run.results.get("tradeoff") or {}).get("auc", "nan")))
            lines.append(f"| {config} | {len(seeds)} | {_mean_sd(finals)} | {_mean_sd(areas)} |")
    lines += [f"Note: {note}" for note in comparison.notes]
    return [*lines, ""]


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(runs: Path, output: Path) -> list[Path]:
    """docs/study.md (and its figures) from every finished run; lists what is missing."""
    figures = output.parent / output.stem
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Study: when does gradient surgery pay off in multi-exit training?", "",
             "Written by `python bench/study.py --report` from the runs under "
             f"`{runs}`; each run's commit is in its table. Runs not finished yet are listed "
             "at the end.", ""]
    for phase in PHASES:
        for task in PHASES[phase]:
            lines += task_report(runs, phase, task, figures)
    missing = [run for phase in PHASES
               for run in plan(phase, list(CONFIGS) if phase == "screening" else PAPER_MODES,
                               [42], None)
               if not (run.folder(runs) / "results.json").is_file()]
    if missing:
        lines += ["## Not finished yet", ""]
        lines += [f"- {run.phase} / {run.task} / {run.config} / seed {run.seed}"
                  for run in missing]
    output.write_text("\n".join(lines) + "\n")
    return [output, *sorted(figures.glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=list(PHASES), default="screening")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: every configuration (screening), the paper modes (paper)")
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
        for path in write_report(args.runs, args.report_file):
            print(path)
        return
    configs = args.configs or (list(CONFIGS) if args.phase == "screening" else PAPER_MODES)
    runs = plan(args.phase, configs, args.seeds, args.tasks)
    todo = [r for r in runs if not (r.folder(args.runs) / "results.json").is_file()]
    if args.list:
        for r in runs:
            state = "done" if r not in todo else "todo"
            print(f"{state}  {r.folder(args.runs)}")
        return
    active: list[tuple[Run, subprocess.Popen[bytes]]] = []
    failed: list[Run] = []
    while todo or active:
        while todo and len(active) < args.jobs:
            run = todo.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {run.folder(args.runs)}", flush=True)
            active.append((run, launch(run, args.runs)))
        time.sleep(10)
        for item in list(active):
            run, process = item
            if process.poll() is not None:
                active.remove(item)
                state = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
                if process.returncode != 0:
                    failed.append(run)
                print(f"{time.strftime('%H:%M:%S')} {state} {run.folder(args.runs)}", flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed; see their stdout.log")


if __name__ == "__main__":
    main()
