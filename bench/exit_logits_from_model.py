"""Write exit_logits.safetensors for a run made before runs wrote it, from its saved model.

    GLUE_DIR=../shared/glue_data python bench/exit_logits_from_model.py RUN_DIR

The run folder needs recipe.yaml (resolved), results.json and model/. The dev outputs of every
exit are collected as `multiexit_glue` collects them (the recipe's max_length, eval split,
rows and batch size), and written only if their per-exit metrics equal results.json's, so the
file belongs to the run; `gradsurg compare RUN_DIR` then draws its dense curve.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import get_task
from gradsurg.multiexit.evaluation.sweeps import per_exit_metrics
from gradsurg.multiexit.serving import load_for_inference
from gradsurg.programs.multiexit_glue.data import load_split
from gradsurg.programs.multiexit_glue.evaluation import collect_exit_logits
from gradsurg.recipes import validate_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    folder = parser.parse_args().run_dir
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    _, config = validate_recipe(recipe, source=str(folder / "recipe.yaml"))
    results = json.loads((folder / "results.json").read_text())
    loaded = load_for_inference(folder / "model", device="cpu")
    task = get_task(config.task)
    data = tokenize_dataset(
        load_split(task, config.eval_split, data_dir=config.data_dir, rows=config.eval_rows,
                   shuffle_seed=None),
        loaded.tokenizer, max_length=config.max_length)
    loader = DataLoader(data, batch_size=config.eval_batch_size,
                        collate_fn=GlueCollator(loaded.tokenizer))
    logits, labels = collect_exit_logits(loaded.model, loader, loaded.device)
    again = per_exit_metrics(logits, labels, task)
    if any(not math.isclose(a[k], b[k], abs_tol=1e-12)
           for a, b in zip(again, results["exit_metrics"], strict=True) for k in a):
        sys.exit(f"error: {folder}: the saved model's per-exit metrics {again} differ from "
                 f"results.json's {results['exit_metrics']}; not writing the logits")
    save_file({"logits": logits.contiguous(), "labels": labels.contiguous()},
              folder / "exit_logits.safetensors")
    print(f"wrote {folder / 'exit_logits.safetensors'} ({tuple(logits.shape)}); per-exit "
          "metrics equal results.json's")


if __name__ == "__main__":
    main()
