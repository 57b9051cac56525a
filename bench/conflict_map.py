"""Where in the network the exits conflict: per encoder layer, each pair of exits' gradients.

Trains RomeBERT-SD as it is (per-exit groups `exit_groups=sd`, summed: the same model as the
`romebert_sd` recipe) with the combiner `blockwise` around `sum`, which changes nothing in the
update (a sum per block is the sum) but logs, per layer and per pair of the exits that reach
it, the cosine of their gradients and whether it was negative. This script reads those from
the run's train_log.jsonl and writes the map: mean cosine and share of steps in conflict,
per layer and pair, as JSON and a heatmap (`gradsurg.report.conflicts`, which `gradsurg
compare` and `gradsurg conflicts` use too).

    GLUE_DIR=../shared/glue_data python bench/conflict_map.py [--task sst2] [--train-rows 2000]
        [--runs /tmp/conflict_map] [--out bench/results/conflict_map.json]

The run resumes (`--resume`), so a killed script continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gradsurg.errors import ConfigError
from gradsurg.report import conflicts
from gradsurg.report.plots import plot_conflict_map

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "romebert_sd_glue.yaml"


def run_command(task: str, train_rows: int, output: Path) -> list[str]:
    sets = [f"task={task}", f"train_rows={train_rows}", "epochs=1", "batch_size=16",
            "optimizer.lr=5e-5", "exit_groups=sd", "combiner={name: blockwise, inner: sum}",
            "save_model=false", "log_every=10", "checkpoint_every=50", "threads=2"]
    args = [sys.executable, "-m", "gradsurg", "run", str(RECIPE)]
    for item in sets:
        args += ["--set", item]
    return [*args, "--output", str(output), "--resume"]


def conflict_map(log_lines: list[dict]) -> dict:
    """Per block and pair: the mean cosine and the share of steps in conflict, each log line
    weighing the steps it covers (`gradsurg.report.conflicts.conflict_map`)."""
    try:
        return conflicts.conflict_map(log_lines)
    except ConfigError:
        raise SystemExit("error: the run's log holds no per-block cosines (was the combiner "
                         "blockwise?)") from None


def plot(result: dict, path: Path) -> None:
    plot_conflict_map(result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/conflict_map"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "conflict_map.json")
    args = parser.parse_args()
    folder = args.runs / f"{args.task}-{args.train_rows}"
    command = run_command(args.task, args.train_rows, folder)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"error: the run failed (exit {done.returncode}): {' '.join(command)}")
    lines = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"benchmark": "conflict_map", "commit": commit, "command": command[1:],
              "task": args.task, "train_rows": args.train_rows, **conflict_map(lines)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for block in result["blocks"]:
        cells = [result["conflict_share"][block][p] for p in result["pairs"]]
        known = [c for c in cells if c is not None]
        print(f"{block:<20} pairs {len(known):>2}  mean conflict share "
              f"{sum(known) / len(known):.2f}" if known else f"{block:<20} no pairs")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
