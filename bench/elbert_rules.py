"""Why ELBERT's early exit saves little on MiniLM: its runs' saved dev logits under its
confidence-window rule and under the entropy threshold alone.

    python bench/elbert_rules.py bench/results/elbert bench/results/elbert_exit_weights_lr

For each run folder (its `exit_logits.safetensors` and `results.json`): each exit's accuracy,
the learned exit weights, and, for the recipe's `confidence_window` rule and for plain
`normalized_entropy` (the same entropy threshold without the window), the expected time at the
lowest threshold (the window alone decides) and the least time within one point of the final
exit's accuracy. Writes `bench/results/elbert_rules.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from gradsurg.data.glue import get_task
from gradsurg.multiexit.evaluation.dense_sweeps import dense_sweep
from gradsurg.multiexit.policies import POLICIES
from gradsurg.programs.multiexit_glue.config import DEFAULT_EXIT_WEIGHTS_LR

HERE = Path(__file__).resolve().parent
RULES = {"confidence_window": {"window": 2, "margin": 0.1}, "normalized_entropy": {}}


def summarize(folder: Path) -> dict:
    stored = load_file(str(folder / "exit_logits.safetensors"))
    logits, labels = stored["logits"], stored["labels"]
    results = json.loads((folder / "results.json").read_text())
    final = float((logits[-1].argmax(-1) == labels).float().mean())
    rules = {}
    for name, params in RULES.items():
        sweep = dense_sweep(logits, labels, get_task("sst2"), POLICIES.get(name), params)
        assert sweep is not None, f"{name} has a dense sweep"
        points = sweep.points
        within = [p for p in points if p.metric["accuracy"] >= final - 0.01]
        first = min(points, key=lambda p: p.value)  # the lowest threshold
        rules[name] = {
            "lowest_threshold": {"time_percent": round(first.time_percent, 1),
                                 "accuracy": round(100 * first.metric["accuracy"], 2),
                                 "exit_counts": first.exit_counts},
            "least_time_within_1_point": round(min(p.time_percent for p in within), 1),
        }
    return {
        "exit_accuracy": [round(100 * float((x.argmax(-1) == labels).float().mean()), 2)
                          for x in logits],
        "exit_weights": [round(v, 4) for k, v in sorted(results["loss_terms"].items())],
        "exit_weights_lr": _exit_weights_lr(_recipe(folder)),
        "rules": rules,
    }


def _recipe(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "recipe.yaml").read_text())


def _exit_weights_lr(recipe: dict) -> float | str:
    """What rate the weights trained at: the model's before the key existed, else the key's
    value or its default."""
    if "exit_weights_lr" not in recipe:
        return f"the model's lr ({recipe['optimizer']['lr']}; run before exit_weights_lr)"
    value = recipe["exit_weights_lr"]
    return DEFAULT_EXIT_WEIGHTS_LR if value is None else value


def main() -> None:
    report = {folder: summarize(Path(folder)) for folder in sys.argv[1:]}
    (HERE / "results" / "elbert_rules.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
