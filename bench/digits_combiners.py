"""Every exit's test accuracy of the digits example under each combiner its tests train.

    python bench/digits_combiners.py [--out bench/results/digits_combiners.json]

The plugin's tests (plugins/digits_multiexit/tests) only check thresholds (> 0.85, > 0.5);
README quotes what the runs actually reach, and this script is where those numbers come from:
the tests' configuration (six epochs, surgery on `layers.*`, seed 0) for every combiner, and
`dbmtl` again for ten epochs (its gradient averages lag). About a minute on two CPU cores.
Writes bench/results/digits_combiners.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from gradsurg_digits.program import DigitsConfig, train

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"name": "project", "target": "final", "reference": "sd"}
RUNS = [(name, 6) for name in ("sum", "pcgrad", "project", "dualproj", "aligned_mtl",
                               "nash_mtl", "config", "fairgrad", "graddrop", "rlw", "dbmtl",
                               "moco")] + [("dbmtl", 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "digits_combiners.json")
    args = parser.parse_args()
    rows = []
    for name, epochs in RUNS:
        config = DigitsConfig(program="digits_multiexit", epochs=epochs,
                              combiner=PROJECT if name == "project" else name,
                              include=["layers.*"])
        accuracy = train(config)["exit_accuracy"]
        rows.append({"combiner": name, "epochs": epochs, "exit_accuracy": accuracy})
        print(f"{name:<12} {epochs:>2} epochs  " + "  ".join(f"{a:.3f}" for a in accuracy))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "digits_combiners", "seed": 0, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "rows": rows}, indent=2)
        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
