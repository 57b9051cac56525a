"""What each study configuration costs to train, measured side by side (issue 15's report).

    GLUE_DIR=../shared/glue_data python bench/study_cost.py [--rounds 2] [--rows 256]

The study's own runs record training seconds, but they ran two at a time on a shared machine,
so their wall times are not comparable. This script runs every configuration of
`bench/study.py` through the real CLI on the same MRPC subset (paper settings: batch 8, max
length 128, one CPU thread), in `--rounds` rounds whose order alternates, reads each stage's
seconds per optimizer step from results.json, and prices a full paper-schedule MRPC run (three
epochs per stage) from the medians. Two-stage modes train the whole model in stage 1 and only
the exits in stage 2, so their cost is not simply twice a one-stage run. Writes
bench/results/study_cost.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from study import COMMON, CONFIGS, ROOT, run_command  # bench/ is this script's folder

MRPC_TRAIN_ROWS = 3668
PAPER = ["task=mrpc", "epochs=1", "batch_size=8", "max_length=128", "optimizer.lr=2e-5"]


def measure(config: str, rows: int, folder: Path) -> dict[str, float]:
    """Seconds per optimizer step of each stage of one short run of ``config``."""
    common = [item for item in COMMON if not item.startswith("checkpoint_every")]
    sets = [*common, *PAPER, f"train_rows={rows}", "eval_rows=16", "checkpoints=false"]
    done = subprocess.run(run_command(config, sets, folder), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"error: {config} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    train = json.loads((folder / "results.json").read_text())["train"]
    return {stage: facts["seconds"] / facts["steps"] for stage, facts in train.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256, help="MRPC training rows per run")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results"
                        / "study_cost.json")
    args = parser.parse_args()
    configs = args.configs
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                per_step = measure(config, args.rows, Path(scratch) / f"{config}-{round_}")
                for stage, seconds in per_step.items():
                    samples[config].setdefault(stage, []).append(seconds)
                print(f"round {round_ + 1}: {config} "
                      + " ".join(f"{s}={v:.3f}s/step" for s, v in per_step.items()), flush=True)
    steps = 3 * math.ceil(MRPC_TRAIN_ROWS / 8)  # per stage on the paper schedule
    rows = {}
    for config in configs:
        per_stage = {stage: statistics.median(v) for stage, v in samples[config].items()}
        rows[config] = {"seconds_per_step": per_stage,
                        "paper_mrpc_run_seconds": steps * sum(per_stage.values())}
    base = rows.get("romebert_sd", next(iter(rows.values())))["paper_mrpc_run_seconds"]
    print(f"\nA paper-schedule MRPC run ({steps} steps per stage), one CPU thread:")
    print(f"{'configuration':<20} {'s/step by stage':<36} {'run (min)':>9} {'x romebert_sd':>13}")
    for config, row in rows.items():
        row["relative_to_romebert_sd"] = row["paper_mrpc_run_seconds"] / base
        stages = " ".join(f"{s}={v:.2f}" for s, v in row["seconds_per_step"].items())
        print(f"{config:<20} {stages:<36} {row['paper_mrpc_run_seconds'] / 60:>9.1f} "
              f"{row['relative_to_romebert_sd']:>13.2f}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "commit": commit, "rounds": args.rounds, "train_rows": args.rows, "task": "mrpc",
        "settings": PAPER[1:], "steps_per_stage": steps, "configs": rows}, indent=2) + "\n")
    print(args.output)


if __name__ == "__main__":
    main()
