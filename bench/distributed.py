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


class Variant:
    """One model under one engine: plain training (`k` None) or surgery over k groups."""

    def __init__(self, engine: str, world: int, k: int | None) -> None:
        self.model, self.stepped = build(engine, world)
        self.k = k
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.surgery = (None if k is None
                        else Surgery(self.stepped, self.optimizer, "upgrad", include=["*"]))
        self.data = batch(dist.get_rank(), 1000)
        self.n = sum(p.numel() for p in self.model.parameters())

    def step(self) -> tuple[float, dict[str, int]]:
        TRAFFIC.clear()
        dist.barrier()
        start = time.perf_counter()
        logits = self.stepped(self.data["input_ids"], self.data["attention_mask"])
        losses = groups(list(logits), self.data["labels"], self.k or 2)
        if self.surgery is None:
            sum(losses.values()).backward()
        else:
            self.surgery.backward(losses)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return time.perf_counter() - start, dict(TRAFFIC)

    def rows(self) -> int:
        buffer = self.surgery.collector._buffer if self.surgery is not None else None
        return 0 if buffer is None else buffer.numel()


VARIANTS = {"plain": None, "k2": 2, "k6": 6}


def time_and_traffic(engine: str, world: int, steps: int) -> dict[str, Any]:
    """All variants built at once and stepped round by round (the first round untimed)."""
    built = {name: Variant(engine, world, k) for name, k in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    traffic: dict[str, dict[str, int]] = {}
    for round_index in range(steps + 1):
        for name, variant in built.items():
            seconds, moved = variant.step()
            if round_index:
                times[name].append(seconds)
            traffic[name] = moved
    n = built["plain"].n
    if engine == "ddp":  # DDP's C++ reducer all-reduces every gradient once per step
        traffic["plain"] = {**traffic["plain"], "all_reduce (DDP reducer)": 4 * n}
    return {"n": n, "seconds": {name: statistics.median(t) for name, t in times.items()},
            "traffic_bytes": {name: sum(t.values()) for name, t in traffic.items()},
            "traffic": traffic, "rows_numbers": {name: v.rows() for name, v in built.items()}}


def peak_growth(engine: str, world: int, variant: str, steps: int) -> int:
    """This process's resident-set high-water mark over `steps` steps of one variant, above
    the resident set once the model is built (a fresh process per variant)."""
    built = Variant(engine, world, VARIANTS[variant])
    release()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = status_bytes("VmRSS")
    for _ in range(steps):
        built.step()
    return status_bytes("VmHWM") - before


def worker(out: Path, steps: int, engine: str, variant: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    count_traffic()
    world = dist.get_world_size()
    if variant is None:
        result: Any = time_and_traffic(engine, world, steps)
    else:
        result = peak_growth(engine, world, variant, steps)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


def launch(world: int, steps: int, engine: str, variant: str | None, out: Path) -> list[Any]:
    part = out.with_suffix(f".{engine}.{world}.{variant}.tmp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", __file__, "--worker", str(part), "--steps",
               str(steps), "--engine", engine]
    if variant is not None:
        command += ["--variant", variant]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(part.read_text())
    part.unlink()
    return result


def measure(world: int, engine: str, steps: int, out: Path) -> list[dict[str, Any]]:
    timed = launch(world, steps, engine, None, out)[0]  # rank 0's clock and counts
    peaks = {name: max(launch(world, steps, engine, name, out)) for name in VARIANTS}
    n = timed["n"]
    rows = []
    for name, k in VARIANTS.items():
        if k is None:
            continue
        row_part = timed["rows_numbers"][name] / n
        extra = (peaks[name] - peaks["plain"]) / (4 * n)
        plain_traffic = timed["traffic_bytes"]["plain"]
        rows.append({
            "engine": engine, "world": world, "k": k, "rows_flat_gradients": row_part,
            "extra_peak_flat_gradients": extra, "graph_and_transient_flat_gradients":
            extra - row_part, "time_ratio": timed["seconds"][name] / timed["seconds"]["plain"],
            "traffic_ratio": (timed["traffic_bytes"][name] / plain_traffic
                              if world > 1 and plain_traffic else None),
            "seconds": {"plain": timed["seconds"]["plain"], "surgery": timed["seconds"][name]},
            "peak_bytes": {"plain": peaks["plain"], "surgery": peaks[name]},
            "traffic": {"plain": timed["traffic"]["plain"], "surgery": timed["traffic"][name]}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["ddp", "fsdp2"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.engine, args.variant)
        return
    table = [row for world in args.worlds for engine in ("ddp", "fsdp2")
             for row in measure(world, engine, args.steps, args.out)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps({"commit": commit, "steps": args.steps, "threads": 1,
                                    "cpus": os.cpu_count(), "rows": table}, indent=1))
    print("| engine | world | k | rows (flat grads) | goal | extra peak | of which graph "
          "and transients | time x plain | traffic x plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        goal = row["k"] / row["world"] + 0.1 if row["engine"] == "fsdp2" else row["k"]
        traffic = "-" if row["traffic_ratio"] is None else f"{row['traffic_ratio']:.2f}"
        print(f"| {row['engine']} | {row['world']} | {row['k']} | "
              f"{row['rows_flat_gradients']:.2f} | <= {goal:.2f} | "
              f"{row['extra_peak_flat_gradients']:.2f} | "
              f"{row['graph_and_transient_flat_gradients']:.2f} | {row['time_ratio']:.2f} | "
              f"{traffic} |")


if __name__ == "__main__":
    main()
