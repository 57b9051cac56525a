"""Does early exit save wall-clock time? Full depth vs early exit on a GLUE dev set.

    GLUE_DIR=../shared/glue_data python bench/early_exit_speed.py \
        [--model runs/quickstart/model] [--batch-sizes 1 16 64] [--thresholds 0.05 0.2]

The model is a saved multi-exit model (default: the one `gradsurg run recipes/quickstart.yaml
--output runs/quickstart` writes). For every batch size, the same pre-tokenized batches (dev
order, dynamic padding) run through: the full-depth model (every layer, last exit only), the
early-exit runner at each entropy threshold, and the runner without row compaction (finished
rows stay in the batch, as published code bases batch). Variants alternate batch by batch
over ``--repeats`` rounds and the median pass time is kept. The predicted speed-up is the
layer count's, 100 / expected time %; the target is measured / predicted >= 0.85 at batch 1
and 64.
Writes bench/results/early_exit_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import get_task, load_glue
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.evaluation.outcomes import expected_time_percent
from gradsurg.multiexit.exit_loop import EarlyExitRunner
from gradsurg.multiexit.policies import EntropyPolicy, ExitPolicy, FixedPolicy
from gradsurg.multiexit.serving import load_for_inference

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.85


def interleaved_passes(runners: dict[str, EarlyExitRunner], batches: list[dict[str, torch.Tensor]],
                       repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds per full pass of each runner, ``repeats`` times. Variants alternate batch by
    batch (in a rotating order), so a slow spell of a shared machine hits them all alike."""
    names = list(runners)
    seconds = {name: [0.0] * repeats for name in names}
    outputs: dict[str, Any] = {name: ([], []) for name in names}
    for repeat in range(repeats):
        for index, batch in enumerate(batches):
            shift = (index + repeat) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                out = runners[name](batch["input_ids"], batch["attention_mask"],
                                    batch.get("token_type_ids"))
                seconds[name][repeat] += time.perf_counter() - start
                if repeat == 0:
                    outputs[name][0].append(out.logits)
                    outputs[name][1].append(out.exit_layers)
    return seconds, {name: (torch.cat(a), torch.cat(b)) for name, (a, b) in outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "quickstart" / "model")
    parser.add_argument("--task", default=None, help="default: the model's task")
    parser.add_argument("--data-dir", default=None, help="default: $GLUE_DIR")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "early_exit_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.is_dir():
        raise SystemExit(f"error: model folder {args.model} not found; train one with "
                         "`gradsurg run recipes/quickstart.yaml --output runs/quickstart`")

    loaded = load_for_inference(args.model, device="cpu")
    task = get_task(args.task or loaded.model.config.task)
    data = tokenize_dataset(load_glue(task, "dev", data_dir=args.data_dir, max_rows=args.max_rows),
                            loaded.tokenizer, max_length=128)
    num_layers = loaded.model.num_exits
    variants: dict[str, tuple[ExitPolicy, bool]] = {"full depth": (FixedPolicy(num_layers), True)}
    for t in args.thresholds:
        variants[f"entropy<{t:g}"] = (EntropyPolicy(t), True)
        variants[f"entropy<{t:g}, no compaction"] = (EntropyPolicy(t), False)

    rows: list[dict[str, Any]] = []
    console = Console()
    for batch_size in args.batch_sizes:
        loader = DataLoader(data, batch_size=batch_size, collate_fn=GlueCollator(loaded.tokenizer))
        batches = list(loader)
        labels = torch.cat([b.pop("labels") for b in batches])
        runners = {name: EarlyExitRunner(loaded.model, policy, compact=compact)
                   for name, (policy, compact) in variants.items()}
        interleaved_passes(runners, batches[:4], 1)  # warm-up
        seconds, outputs = interleaved_passes(runners, batches, args.repeats)
        full = statistics.median(seconds["full depth"])
        for name in runners:
            logits, exits = outputs[name]
            time_percent = expected_time_percent(exits, num_layers)
            median = statistics.median(seconds[name])
            predicted = 100.0 / time_percent
            measured = full / median
            rows.append({
                "batch_size": batch_size, "variant": name,
                "accuracy": compute_metrics(task, logits.argmax(-1), labels)["accuracy"],
                "time_percent": time_percent, "seconds": median, "seconds_all": seconds[name],
                "examples_per_second": len(labels) / median,
                "predicted_speedup": predicted, "measured_speedup": measured,
                "measured_over_predicted": measured / predicted,
            })
        console.print(f"batch {batch_size}: done")

    table = Table(title=f"Early exit on {task.name} dev ({len(data)} examples), "
                        f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    for column in ("batch", "variant", "acc %", "time %", "ex/s", "speed-up measured",
                   "predicted", "measured / predicted"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for row in rows:
        table.add_row(str(row["batch_size"]), row["variant"], f"{row['accuracy'] * 100:.2f}",
                      f"{row['time_percent']:.1f}", f"{row['examples_per_second']:.1f}",
                      f"{row['measured_speedup']:.2f}", f"{row['predicted_speedup']:.2f}",
                      f"{row['measured_over_predicted']:.2f}")
    console.print(table)
    checks = [r for r in rows if r["batch_size"] in (1, 64) and r["variant"].startswith("entropy")
              and "no compaction" not in r["variant"]]
    met = all(r["measured_over_predicted"] >= TARGET for r in checks)
    console.print(f"target measured/predicted >= {TARGET} at batch 1 and 64: "
                  f"{'met' if met else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": str(args.model), "task": task.name, "examples": len(data),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "repeats": args.repeats,
        "target": TARGET, "target_met": met, "rows": rows,
    }, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
