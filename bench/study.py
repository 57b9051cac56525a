"""When does gradient surgery pay off in multi-exit training? The study's runs (issue 15).

    GLUE_DIR=../shared/glue_data python bench/study.py --phase screening [--jobs 2]
    GLUE_DIR=../shared/glue_data python bench/study.py --phase paper --configs deebert romebert \
        --seeds 42 43 44
    python bench/study.py --list            # every planned run and whether it is finished

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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
PHASES: dict[str, dict[str, list[str]]] = {
    "screening": {
        "stsb": ["epochs=1", "batch_size=16", "lr=5e-5"],
        "sst2": ["epochs=1", "batch_size=16", "lr=5e-5", "train_rows=20000"],
    },
    "paper": {
        "mrpc": ["epochs=3", "batch_size=8", "lr=2e-5", "max_length=128"],
        "rte": ["epochs=3", "batch_size=8", "lr=2e-5", "max_length=128"],
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
    args = parser.parse_args()
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
