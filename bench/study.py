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

This file is the command line; the parts live in `bench/glue_study/`: `plan` (configurations,
phases, runs), `launch` (the launcher), `analysis` (seed spread, held-out scores, the
recommendation rule) and `report` (docs/study.md). Their names are re-exported here, so
`depth_study.py` and the tests reach them as `study.NAME`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # bench/glue_study, whether run as a script or loaded by path
    sys.path.insert(0, HERE)

from glue_study.analysis import (  # noqa: E402
    OTHER_SPLITS,
    RECOMMEND_BUDGETS,
    SeedNumbers,
    finished_runs,
    held_out_scores,
    picks_over_splits,
    recommend,
    recommendation_scores,
    seed_scores,
    seed_spread,
)
from glue_study.launch import commit, launch, run_all  # noqa: E402
from glue_study.plan import (  # noqa: E402
    ALWAYS_SEEDED,
    COMMON,
    CONFIGS,
    PAPER_CONFIGS,
    PAPER_MODES,
    PHASES,
    ROOT,
    SCREENED_INTO_PAPER,
    SEEDS,
    TWO_STAGE,
    Run,
    best_paper_config,
    plan,
    planned_runs,
    run_command,
    seeded_candidates,
)
from glue_study.report import (  # noqa: E402
    CONCLUSIONS,
    COST_FILE,
    DEPTH_ANSWERS,
    MEAN_COSINE,
    SURGERY_FACTS,
    cost_section,
    exact_commands,
    kept_conclusions,
    kept_section,
    leaders,
    majority_baseline,
    recommendation_section,
    seed_table,
    seeded_leaders,
    task_answers,
    task_report,
    write_report,
)

__all__ = [
    "ALWAYS_SEEDED", "COMMON", "CONCLUSIONS", "CONFIGS", "COST_FILE", "DEPTH_ANSWERS",
    "MEAN_COSINE",
    "OTHER_SPLITS", "PAPER_CONFIGS", "PAPER_MODES", "PHASES", "RECOMMEND_BUDGETS", "ROOT",
    "SCREENED_INTO_PAPER", "SEEDS", "SURGERY_FACTS", "TWO_STAGE", "Run", "SeedNumbers",
    "best_paper_config", "commit", "cost_section", "exact_commands", "finished_runs",
    "held_out_scores", "kept_conclusions", "kept_section", "launch", "leaders", "main",
    "majority_baseline",
    "picks_over_splits", "plan", "planned_runs", "recommend", "recommendation_scores",
    "recommendation_section", "run_all", "run_command", "seed_scores", "seed_spread",
    "seed_table", "seeded_candidates", "seeded_leaders", "task_answers", "task_report",
    "write_report",
]


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


if __name__ == "__main__":
    main()
