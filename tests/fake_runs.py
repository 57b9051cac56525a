"""Run folders written by hand for `gradsurg compare` and the study reports: two runs of
two exits on four examples whose numbers the tests compute by hand."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gradsurg.cli import app

runner = CliRunner()
LABELS = [0, 0, 1, 1]

# Two exits, four examples. deebert: exit 1 right on examples 0 and 2 (50%), exit 2 right on
# all (100%). romebert: exit 1 wrong only on example 2 (75%), exit 2 wrong only on example 1
# (75%). A logit margin m gives entropy e(m), falling with m, so each run's exit-1 margins
# order its examples for the entropy sweep.
DEEBERT = [[[4, 0], [0, 1], [0, 3], [2, 0]], [[5, 0], [5, 0], [0, 5], [0, 5]]]
ROMEBERT = [[[3, 0], [4, 0], [1, 0], [0, 2]], [[5, 0], [0, 5], [0, 5], [0, 5]]]


def write_run(folder: Path, mode: str, logits: list | None, exit_accuracy: list[float], *,
              task: str = "sst2", labels: list[int] = LABELS, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    results = {
        "program": "multiexit_glue", "mode": mode, "task": task, "model": "minilm",
        "primary_metric": "accuracy",
        "exit_metrics": [{"accuracy": a} for a in exit_accuracy],
        "eval_split": "dev", "eval_rows": None, "num_eval_examples": len(labels),
        "exit_policy": {"name": "entropy"},
        "sweep": [{"threshold": 0.0, "accuracy": exit_accuracy[-1], "time_percent": 100.0,
                   "exit_counts": [0, len(labels)]}],
        "train": {"joint": {"steps": 3, "seconds": 12.0}},
        **(extra or {}),
    }
    (folder / "results.json").write_text(json.dumps(results))
    if logits is not None:
        save_file({"logits": torch.tensor(logits, dtype=torch.float32),
                   "labels": torch.tensor(labels)}, folder / "exit_logits.safetensors")
    return folder


def compare(*args: str):
    """`gradsurg compare ARGS` in this process, on a console wide enough for its tables."""
    return runner.invoke(app, ["compare", *map(str, args)], env={"COLUMNS": "250"})
