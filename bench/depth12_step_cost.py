"""What one run of the depth study's 12-layer phase costs: a few steps measured, one epoch
estimated.

    GLUE_DIR=../shared/glue_data python bench/depth12_step_cost.py [--rows 160]

Runs `deebert` and `romebert_sd` exactly as `bench/depth_study.py --phase depth12` would
(the real CLI, the screening's SST-2 settings, batch 16, one CPU thread, niced), but on
`--rows` training sentences and `--eval-rows` dev sentences, once with `model=mpnet-base` (12
x 768) and once with the default MiniLM (6 x 384) back to back, so the ratio is measured under
the same machine load. From each stage's measured seconds per step it estimates a run on the
8,000-sentence subset (500 steps per stage) plus the full dev set (872 sentences, scaled from
the measured evaluation). Writes `bench/results/depth12_step_cost.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import depth_study  # noqa: E402  (bench/ is not a package)

SUBSET_ROWS = 8000
DEV_ROWS = 872
CONFIGS = ("deebert", "romebert_sd")
BACKBONES = ("mpnet-base", "minilm")


def measure(config: str, model: str, rows: int, eval_rows: int, folder: Path) -> dict:
    """One run of `rows` sentences; its stages' steps and seconds, and the rest of the wall
    time (loading, tokenizing, evaluating)."""
    setting = tuple(f"model={model}" if item.startswith("model=") else item
                    for item in depth_study.DEPTH12_SETTING)
    run = depth_study.Run("depth12", depth_study.DEPTH12_TASK, config, setting)
    command = run.command(folder.parent)
    command = [item for item in command if item != "--resume"]
    command[command.index("--output") + 1] = str(folder)
    command += ["--set", f"train_rows={rows}", "--set", f"eval_rows={eval_rows}"]
    start = time.perf_counter()
    subprocess.run(["nice", "-n", "19", *command], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = json.loads((folder / "results.json").read_text())
    stages = {name: {"steps": stage["steps"], "seconds": stage["seconds"],
                     "seconds_per_step": round(stage["seconds"] / stage["steps"], 3)}
              for name, stage in results["train"].items()}
    trained = sum(stage["seconds"] for stage in stages.values())
    return {"stages": stages, "wall_seconds": round(wall, 1),
            "other_seconds": round(wall - trained, 1)}


def estimate(measured: dict, rows: int, eval_rows: int) -> float:
    """Seconds for one epoch of the subset: per-step cost x 500 steps per stage, and the
    non-training time with its evaluation share scaled to the full dev set (all of it
    counted as evaluation: an upper bound)."""
    steps = -(-SUBSET_ROWS // 16)
    train = sum(stage["seconds_per_step"] * steps for stage in measured["stages"].values())
    return train + measured["other_seconds"] * DEV_ROWS / eval_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--eval-rows", type=int, default=128)
    args = parser.parse_args()
    load = os.getloadavg()
    measured: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for config in CONFIGS:
            for model in BACKBONES:
                folder = Path(scratch) / config / model
                measured.setdefault(config, {})[model] = result = measure(
                    config, model, args.rows, args.eval_rows, folder)
                result["estimate_minutes_8000_rows"] = round(
                    estimate(result, args.rows, args.eval_rows) / 60, 1)
                print(config, model, json.dumps(result), flush=True)
    ratios = {config: {stage: round(by_model["mpnet-base"]["stages"][stage]["seconds_per_step"]
                                    / by_model["minilm"]["stages"][stage]["seconds_per_step"], 2)
                       for stage in by_model["minilm"]["stages"]}
              for config, by_model in measured.items()}
    report = {
        "what": "seconds per training step, 12 layers (mpnet-base) vs 6 (minilm), SST-2, "
                "batch 16, threads=1, niced, back to back",
        "rows": args.rows, "eval_rows": args.eval_rows,
        "load_average_at_start": [round(x, 2) for x in load],
        "cpu_count": os.cpu_count(),
        "measured": measured,
        "step_ratio_12_over_6_layers": ratios,
    }
    out = HERE / "results" / "depth12_step_cost.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["step_ratio_12_over_6_layers"]))


if __name__ == "__main__":
    main()
