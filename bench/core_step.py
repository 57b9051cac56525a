"""Step time and peak memory of gradsurg's combiners next to a plain summed-loss step.

Model: 6-layer BERT (hidden 384, 12 heads, random init) with an exit after every layer,
batch 32 x 64 tokens, CPU, AdamW. Groups as in RomeBERT: `final` (CE of the last exit) and
`sd` (self-distillation of the other exits). Surgery operates on `encoder.layers.*`.

Rows: `plain` (summed loss, one backward), `two_vjps` (raw PyTorch: one backward per group on
the retained graph, no gradsurg; the floor for any per-group method), then gradsurg's variants:
most on the two groups, the `exit_*` rows on per-exit groups (k = 6, each exit's own
cross-entropy), `sdmgrad` and `modo` on three batches per optimizer step (their row is one step
of three batches: divide by 3 for the cost per batch).

Time: all variants in this one process, interleaved round by round, median per variant.
Peak memory: each variant in a fresh child process, as the growth of the resident set's high
-water mark (VmHWM, reset just before the first step) over the resident set at that moment,
with glibc told to return every block over 1 MiB to the system so the resident set follows the
live tensors. The CPU allocator keeps no peak statistics of its own.

    python bench/core_step.py [--steps 10] [--threads 2] [--out bench/results/core_step.json]
                              [--variants plain two_vjps dbmtl ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import BertModel

from gradsurg.multiexit.backbones import tiny_bert_config
from gradsurg.multiexit.losses.functions import exit_cross_entropy, self_distillation_loss
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel
from gradsurg.surgery import Surgery

BATCH, TOKENS, LAYERS, HIDDEN = 32, 64, 6, 384
INCLUDE = ["encoder.layers.*"]
VARIANTS = {
    "plain": None,
    "two_vjps": None,
    "sum": {"combiner": "sum"},
    "sum_matrix": {"combiner": "sum", "diagnostics_every": 1},
    "project_sequential": {"combiner": {"name": "project", "target": "final", "reference": "sd"},
                           "mode": "sequential"},
    "project_sequential_fresh": {
        "combiner": {"name": "project", "target": "final", "reference": "sd"},
        "mode": "sequential", "reuse_buffer": False},
    "project_batched": {"combiner": {"name": "project", "target": "final", "reference": "sd"},
                        "mode": "batched"},
}
# one row per combiner added in issue 18, each on the sequential matrix path like `project`
for _name in ("dualproj", "aligned_mtl", "nash_mtl", "config", "fairgrad", "graddrop", "rlw",
              "dbmtl", "moco"):
    VARIANTS[_name] = {"combiner": _name, "mode": "sequential"}
# issue 28: Priority-Constrained Descent with RomeBERT's final exit as the primary group
VARIANTS["pcd"] = {"combiner": {"name": "pcd", "primary": "final"}, "mode": "sequential"}
# ... and the two-group ones from torchjd's list (krum and trimmed_mean need three groups)
for _name in ("cr_mogm", "excess_mtl"):
    VARIANTS[_name] = {"combiner": _name, "mode": "sequential"}
# ... and block-wise surgery: RomeBERT's projection made per encoder layer
VARIANTS["blockwise_project"] = {
    "combiner": {"name": "blockwise",
                 "inner": {"name": "project", "target": "final", "reference": "sd"}},
    "mode": "sequential"}
# ... and `project` over the whole vector logging each layer's cosines (conflict_blocks): the
# update is project's, the cost each layer's Gramian on top
VARIANTS["project_conflict_blocks"] = {
    "combiner": {"name": "project", "target": "final", "reference": "sd"},
    "mode": "sequential", "conflict_blocks": "per_layer"}
# Per-exit groups (k = 6: exit i's own cross-entropy, the final exit's included): UPGrad over
# the whole vector beside UPGrad block by block (one block per encoder layer, each over the
# exits that reach it), and the robust aggregators, which need three or more groups.
PER_EXIT = {"groups": "per_exit", "mode": "sequential"}
VARIANTS["exit_upgrad"] = {"combiner": "upgrad", **PER_EXIT}
VARIANTS["exit_blockwise_upgrad"] = {"combiner": {"name": "blockwise", "inner": "upgrad"},
                                     **PER_EXIT}
VARIANTS["exit_krum"] = {"combiner": {"name": "krum", "n_byzantine": 1}, **PER_EXIT}
VARIANTS["exit_trimmed_mean"] = {"combiner": "trimmed_mean", **PER_EXIT}
# Three batches per optimizer step (cross-batch weights): a row is one optimizer step, which
# consumes three batches; `x plain` compares it with one plain step of one batch.
for _name in ("sdmgrad", "modo"):
    VARIANTS[_name] = {"combiner": _name, "mode": "sequential", "batches": 3}
#: Keys of a variant that shape the step here rather than configure Surgery.
STEP_KEYS = ("groups", "batches")


def build(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_bert_config(num_layers=LAYERS, hidden=HIDDEN, heads=12, intermediate=4 * HIDDEN)
    backbone = BertModel(config, add_pooling_layer=False)
    model = MultiExitModel(backbone, MultiExitConfig(num_labels=2))
    model.train()
    model.two_vjps = variant == "two_vjps"
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    options = dict(VARIANTS[variant] or {})
    model.per_exit_groups = options.pop("groups", None) == "per_exit"
    batches = options.pop("batches", 1)
    surgery = None if not options else Surgery(model, optimizer, include=INCLUDE, **options)
    generator = torch.Generator().manual_seed(seed)
    batch = [{
        "input_ids": torch.randint(0, config.vocab_size, (BATCH, TOKENS), generator=generator),
        "attention_mask": torch.ones(BATCH, TOKENS, dtype=torch.long),
        "labels": torch.randint(0, 2, (BATCH,), generator=generator),
    } for _ in range(batches)]
    return model, optimizer, surgery, batch


def group_losses(model, batch) -> dict[str, torch.Tensor]:
    logits = model(batch["input_ids"], batch["attention_mask"])
    if model.per_exit_groups:
        return {f"exit{i + 1}": exit_cross_entropy(x, batch["labels"])
                for i, x in enumerate(logits)}
    return {"final": exit_cross_entropy(logits[-1], batch["labels"]),
            "sd": self_distillation_loss(logits, batch["labels"])}


def step(model, optimizer, surgery, batches) -> None:
    if len(batches) > 1:  # a combiner that takes several batches per step
        surgery.backward([group_losses(model, batch) for batch in batches])
        optimizer.step()
        optimizer.zero_grad()
        return
    losses = group_losses(model, batches[0])
    if surgery is None and model.two_vjps:
        losses["final"].backward(retain_graph=True)
        losses["sd"].backward()
    elif surgery is None:
        (losses["final"] + losses["sd"]).backward()
    else:
        surgery.backward(losses)
    optimizer.step()
    optimizer.zero_grad()


def selected_size(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.layers."))


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(variant: str, steps: int) -> None:
    """Child process: print the peak resident-set growth of `steps` steps as JSON."""
    model, optimizer, surgery, batch = build(variant)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = status_bytes("VmRSS")
    for _ in range(steps):
        step(model, optimizer, surgery, batch)
    peak = status_bytes("VmHWM")
    print(json.dumps({"variant": variant, "peak_growth_bytes": peak - before}))


def time_all(steps: int, warmup: int) -> dict[str, list[float]]:
    built = {name: build(name) for name in VARIANTS}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(warmup + steps):
        for name, parts in built.items():
            start = time.perf_counter()
            step(*parts)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/core_step.json"))
    parser.add_argument("--memory-child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="measure only these (plus plain and two_vjps, the baselines)")
    args = parser.parse_args()
    if args.variants:
        chosen = {"plain", "two_vjps", *args.variants}
        for name in [name for name in VARIANTS if name not in chosen]:
            del VARIANTS[name]
    torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory(args.memory_child, args.memory_steps)
        return

    model = build("plain")[0]
    flat_bytes = selected_size(model) * 4
    times = time_all(args.steps, args.warmup)
    memory = {}
    for name in VARIANTS:
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, "--threads", str(args.threads),
             "--memory-steps", str(args.memory_steps)],
            check=True, capture_output=True, text=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
        )
        memory[name] = json.loads(child.stdout.strip().splitlines()[-1])["peak_growth_bytes"]

    plain_time = statistics.median(times["plain"])
    vjp_time = statistics.median(times["two_vjps"])
    rows = []
    for name in VARIANTS:
        median = statistics.median(times[name])
        extra = memory[name] - memory["plain"]
        rows.append({
            "variant": name,
            "median_step_s": median,
            "time_ratio": median / plain_time,
            "time_ratio_to_two_vjps": median / vjp_time,
            "peak_growth_mb": memory[name] / 2**20,
            "extra_peak_mb": extra / 2**20,
            "extra_peak_flat_grads": extra / flat_bytes,
            "groups": 6 if (VARIANTS[name] or {}).get("groups") == "per_exit" else 2,
            "batches_per_step": (VARIANTS[name] or {}).get("batches", 1),
        })
    result = {
        "benchmark": "core_step",
        "setup": {"layers": LAYERS, "hidden": HIDDEN, "batch": BATCH, "tokens": TOKENS,
                  "exits": LAYERS, "selected": INCLUDE, "selected_params": flat_bytes // 4,
                  "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                  "torch": torch.__version__, "machine": platform.machine(),
                  "cpu_count": torch.get_num_threads()},
        "targets": {"sum_time_ratio": 1.05, "project_time_ratio": 1.5,
                    "extra_peak_flat_grads": 2.2},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"selected parameters: {flat_bytes // 4:,} ({flat_bytes / 2**20:.1f} MB as float32)")
    print(f"{'variant':<26}{'step s':>9}{'x plain':>9}{'x 2 VJPs':>10}{'extra peak MB':>15}"
          f"{'flat grads':>12}")
    for row in rows:
        print(f"{row['variant']:<26}{row['median_step_s']:>9.3f}{row['time_ratio']:>9.3f}"
              f"{row['time_ratio_to_two_vjps']:>10.3f}{row['extra_peak_mb']:>15.1f}"
              f"{row['extra_peak_flat_grads']:>12.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
