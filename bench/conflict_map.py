"""Where in the network the exits conflict: per encoder layer, each pair of exits' gradients.

Trains RomeBERT-SD as it is (per-exit groups `exit_groups=sd`, summed: the same model as the
`romebert_sd` recipe) with the combiner `blockwise` around `sum`, which changes nothing in the
update (a sum per block is the sum) but logs, per layer and per pair of the exits that reach
it, the cosine of their gradients and whether it was negative. This script reads those from
the run's train_log.jsonl and writes the map: mean cosine and share of logged steps in
conflict, per layer and pair, as JSON and a heatmap.

    GLUE_DIR=../shared/glue_data python bench/conflict_map.py [--task sst2] [--train-rows 2000]
        [--runs /tmp/conflict_map] [--out bench/results/conflict_map.json]

The run resumes (`--resume`), so a killed script continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

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
    """Per block and pair: the mean over log lines of the logged cosine (itself a mean over
    the interval's steps) and of the conflict flag (the share of steps with cosine < 0)."""
    sums: dict[str, dict[str, list[float]]] = {"cosine": defaultdict(list),
                                               "conflict": defaultdict(list)}
    for line in log_lines:
        for key, value in line.items():
            kind, _, rest = key.partition("/")
            if kind in sums and rest.count("/") == 2:
                sums[kind][rest].append(float(value))
    if not sums["cosine"]:
        raise SystemExit("error: the run's log holds no per-block cosines (was the combiner "
                         "blockwise?)")
    blocks = sorted({rest.split("/")[0] for rest in sums["cosine"]},
                    key=lambda b: (len(b), b))
    pairs = sorted({"/".join(rest.split("/")[1:]) for rest in sums["cosine"]},
                   key=lambda p: [int(x.removeprefix("exit")) if x.startswith("exit") else x
                                  for x in p.split("/")])
    table = {kind: {block: {pair: (sum(values[f"{block}/{pair}"]) / len(values[f"{block}/{pair}"])
                                   if values.get(f"{block}/{pair}") else None)
                            for pair in pairs} for block in blocks}
             for kind, values in sums.items()}
    return {"blocks": blocks, "pairs": pairs, "mean_cosine": table["cosine"],
            "conflict_share": table["conflict"], "log_lines": len(log_lines)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks, pairs = result["blocks"], result["pairs"]
    figure, axes = plt.subplots(1, 2, figsize=(2 + 0.45 * len(pairs) * 2, 1.5 + 0.4 * len(blocks)))
    for axis, (kind, title, limits) in zip(axes, (
            ("mean_cosine", "mean cosine", (-1, 1)),
            ("conflict_share", "share of steps with cosine < 0", (0, 1)))):
        grid = np.array([[np.nan if result[kind][b][p] is None else result[kind][b][p]
                          for p in pairs] for b in blocks])
        image = axis.imshow(grid, cmap="coolwarm_r" if kind == "mean_cosine" else "Reds",
                            vmin=limits[0], vmax=limits[1], aspect="auto")
        axis.set_xticks(range(len(pairs)), [p.replace("exit", "") for p in pairs],
                        rotation=90, fontsize=7)
        axis.set_yticks(range(len(blocks)), [b.replace("encoder.layers.", "layer ")
                                             for b in blocks], fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("exit pair", fontsize=8)
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


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
