"""Gradient surgery on several processes: memory, time and traffic per rank, next to plain
training of the same model under the same engine (DDP or FSDP2), CPU gloo.

Model: a 6-layer multi-exit BERT (random init; hidden 128, 4 heads), an exit after every
layer, 8 sequences x 32 tokens per rank, SGD. Groups: k = 2 (RomeBERT's `final` and `sd`) and
k = 6 (one group per exit); combiner `upgrad` (a Gramian weighting: runs under both engines).

Per rank, in flat gradients of the whole model (n numbers):
- rows: the `[k, n / world]` (FSDP2) or `[k, n]` (DDP) matrix each rank holds, read off its
  buffer (exact);
- peak: the growth of the resident set's high-water mark over plain training's (VmHWM, reset
  before each variant's steps; glibc returns freed blocks), which adds the retained graph and
  transient gradients to the rows;
- time: median step time against plain training's, both interleaved in one process;
- traffic: bytes handed to collectives per step (all-reduce, reduce-scatter, all-gather; the
  Python-visible ones are counted; DDP's C++ reducer all-reduces every gradient once, n numbers).

    python bench/distributed.py [--worlds 1 2 4] [--steps 5] [--out bench/results/distributed.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import BertModel

from gradsurg.multiexit.backbones import tiny_bert_config
from gradsurg.multiexit.losses.functions import (
    exit_cross_entropy,
    self_distillation_loss,
)
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel
from gradsurg.surgery import Surgery

LAYERS, HIDDEN, BATCH, TOKENS = 6, 128, 8, 32
ROOT = Path(__file__).resolve().parents[1]

#: bytes handed to each collective kind during the current step
TRAFFIC: dict[str, int] = {}


def count_traffic() -> None:
    """Wrap the collectives FSDP2 and gradsurg call from Python to tally their bytes: the
    whole tensor (an all-reduce's, a reduce-scatter's input, an all-gather's output)."""
    names = ("all_reduce", "broadcast", "reduce_scatter_tensor", "all_gather_into_tensor",
             "reduce_scatter_single", "all_gather_single")
    for name in names:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any):
            if "reduce_scatter" in _name:
                tensor = kwargs["input"] if "input" in kwargs else args[1]
            else:
                tensor = args[0] if args else kwargs.get("output", kwargs.get("tensor"))
            TRAFFIC[_name] = TRAFFIC.get(_name, 0) + tensor.numel() * tensor.element_size()
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def build(engine: str, world: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    config = tiny_bert_config(num_layers=LAYERS, hidden=HIDDEN, heads=4, intermediate=4 * HIDDEN)
    model = MultiExitModel(BertModel(config, add_pooling_layer=False),
                           MultiExitConfig(num_labels=2))
    model.train()
    if engine == "ddp":
        return model, torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.encoder.layers:  # one FSDP2 unit per transformer layer, and the root
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, model


def groups(logits: list[torch.Tensor], labels: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    if k == 2:
        return {"final": exit_cross_entropy(logits[-1], labels),
                "sd": self_distillation_loss(logits, labels)}
    return {f"exit{i + 1}": exit_cross_entropy(x, labels) for i, x in enumerate(logits)}


def batch(rank: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return {"input_ids": torch.randint(0, vocab, (BATCH, TOKENS), generator=generator),
            "attention_mask": torch.ones(BATCH, TOKENS, dtype=torch.long),
            "labels": torch.randint(0, 2, (BATCH,), generator=generator)}


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def release() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_variant(engine: str, world: int, k: int | None, steps: int) -> dict[str, Any]:
    """`k` None: plain training (summed loss, the engine's own reduction)."""
    model, stepped = build(engine, world)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    surgery = None if k is None else Surgery(stepped, optimizer, "upgrad", include=["*"])
    data = batch(dist.get_rank(), 1000)
    n = sum(p.numel() for p in model.parameters())
    times, traffic = [], []
    release()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_bytes("VmRSS")
    for _ in range(steps + 1):  # the first step builds buffers: not timed
        TRAFFIC.clear()
        dist.barrier()
        start = time.perf_counter()
        logits = stepped(data["input_ids"], data["attention_mask"])
        losses = groups(list(logits), data["labels"], k or 2)
        if surgery is None:
            sum(losses.values()).backward()
        else:
            surgery.backward(losses)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
        traffic.append(dict(TRAFFIC))
    peak = status_bytes("VmHWM") - before
    rows = 0
    if surgery is not None and surgery.collector._buffer is not None:
        rows = surgery.collector._buffer.numel()
    step_traffic = traffic[-1]
    if engine == "ddp" and surgery is None:
        step_traffic = {**step_traffic, "all_reduce (DDP reducer)": n * 4}
    result = {"seconds": statistics.median(times[1:]), "peak_bytes": peak, "rows_numbers": rows,
              "n": n, "traffic_bytes": sum(step_traffic.values()), "traffic": step_traffic}
    del surgery, optimizer, stepped, model
    release()
    return result


def worker(out: Path, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    count_traffic()
    world = dist.get_world_size()
    rows: list[dict[str, Any]] = []
    for engine in ("ddp", "fsdp2"):
        plain = run_variant(engine, world, None, steps)
        for k in (2, 6):
            surgery = run_variant(engine, world, k, steps)
            n = surgery["n"]
            rows.append({
                "engine": engine, "world": world, "k": k,
                "rows_flat_gradients": surgery["rows_numbers"] / n,
                "extra_peak_flat_gradients": (surgery["peak_bytes"] - plain["peak_bytes"])
                / (4 * n),
                "time_ratio": surgery["seconds"] / plain["seconds"],
                "traffic_ratio": surgery["traffic_bytes"] / plain["traffic_bytes"]
                if plain["traffic_bytes"] else None,
                "plain": plain, "surgery": surgery})
    if dist.get_rank() == 0:
        out.write_text(json.dumps(rows, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    table: list[dict[str, Any]] = []
    for world in args.worlds:
        part = args.out.with_suffix(f".world{world}.tmp")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={world}", __file__, "--worker", str(part),
                   "--steps", str(args.steps)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        table += json.loads(part.read_text())
        part.unlink()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps({"commit": commit, "steps": args.steps, "rows": table},
                                   indent=1))
    print("| engine | world | k | rows (flat grads) | goal | extra peak (flat grads) "
          "| time x plain | traffic x plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        goal = row["k"] / row["world"] + 0.1 if row["engine"] == "fsdp2" else row["k"]
        traffic = ("-" if row["traffic_ratio"] is None or row["world"] == 1
                   else f"{row['traffic_ratio']:.2f}")
        print(f"| {row['engine']} | {row['world']} | {row['k']} | "
              f"{row['rows_flat_gradients']:.2f} | <= {goal:.2f} | "
              f"{row['extra_peak_flat_gradients']:.2f} | {row['time_ratio']:.2f} | {traffic} |")


if __name__ == "__main__":
    main()
