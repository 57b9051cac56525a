"""The cases of tests/test_several_devices.py: each trains a tiny model and returns its final
weights, run under `torchrun --nproc_per_node=2` (`python several_devices_cases.py OUT`) and,
for the reference, in one process on the same global batches.

Every case uses two micro-batches per optimizer step and clipping, so accumulation, the
reduction and the global norm are all exercised.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS
from gradsurg.distributed import SINGLE_PROCESS

#: Options of the combiners that need some; every other registered combiner is built bare.
OPTIONS: dict[str, dict[str, Any]] = {
    "project": {"target": "a", "reference": "b"},
    "merge": {"groups": ["a", "b"], "inner": "upgrad", "into": "ab", "then": "sum"},
    # 20 inner steps at lr 10 amplify the float32 rounding between one and two processes'
    # sums to ~1e-5 (measured), above the 1e-6 these cases allow; 5 steps: ~3e-8
    "sdmgrad": {"n_iter": 5},
}
GLOBAL_ROWS = 16  # two optimizer steps of two micro-batches of 4 rows
MICRO = 4


def combiner_specs() -> dict[str, Any]:
    """Every registered combiner (built-ins and installed plugins) with usable options."""
    return {name: {"name": name, **OPTIONS.get(name, {})} for name in COMBINERS.names()}


class Layered(nn.Module):
    """A trunk of three blocks (one FSDP2 unit each) and three heads: k = 3 groups."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh())
                                     for _ in range(3)])
        self.heads = nn.ModuleList([nn.Linear(6, 3) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        return [head(x) for head in self.heads]


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return (torch.randn(GLOBAL_ROWS, 6, generator=generator),
            torch.randint(0, 3, (GLOBAL_ROWS,), generator=generator))


def group_losses(outputs: list[torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    ce = nn.functional.cross_entropy
    return {"a": ce(outputs[0], y), "b": ce(outputs[1], (y + 1) % 3),
            "c": 0.5 * outputs[2].pow(2).mean()}


def flat_weights(model: nn.Module) -> torch.Tensor:
    parts = []
    for p in model.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        parts.append(full.detach().flatten())
    return torch.cat(parts)


def rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def own_loop(combiner: Any, engine: str, *, diagnostics: dict[str, float] | None = None,
             **surgery_options: Any) -> torch.Tensor:
    """SGD, 2 steps x 2 micro-batches, clipping; `engine`: none, ddp or fsdp2. The last
    step's diagnostics go into `diagnostics` when given."""
    rank, world = rank_world()
    model = Layered()
    x, y = data()
    stepped: nn.Module = model
    if engine == "ddp":
        stepped = nn.parallel.DistributedDataParallel(model)
    elif engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    options: dict[str, Any] = {"data_parallel": SINGLE_PROCESS} if engine == "none" else {}
    surgery = Surgery(stepped, optimizer, combiner, accumulation_steps=2, max_grad_norm=0.5,
                      **options, **surgery_options)
    for start in range(0, GLOBAL_ROWS, 2 * MICRO):
        for micro in range(2):
            rows = slice(start + micro * MICRO, start + (micro + 1) * MICRO)
            if engine != "none":  # this rank's half of the micro-batch
                span = MICRO // world
                first = rows.start + rank * span
                rows = slice(first, first + span)
            # sdmgrad, modo: three batches per call, here the rows at three input scales
            batches = [group_losses(stepped(x[rows] * (1 + 0.1 * b)), y[rows])
                       for b in range(surgery.combiner.batches_per_step)]
            halves = [{name: loss / 2 for name, loss in losses.items()} for losses in batches]
            surgery.backward(halves if len(halves) > 1 else halves[0])
        optimizer.step()
        optimizer.zero_grad()
    if diagnostics is not None:
        diagnostics.update(surgery.diagnostics)
    return flat_weights(model)


def block_conflicts(engine: str) -> dict[str, float] | str:
    """The last step's per-layer cosines and conflicts (`conflict_blocks`) under `engine`,
    upgrad's update unchanged; an error as its line."""
    facts: dict[str, float] = {}
    try:
        own_loop("upgrad", engine, diagnostics=facts, conflict_blocks="per_layer")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return {key: value for key, value in facts.items() if key.count("/") == 3}


def fsdp_row_memory() -> torch.Tensor:
    """Under FSDP2: [k, this rank's numel] rows and the whole model's numel."""
    _, world = rank_world()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model = Layered()
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    surgery = Surgery(model, None, "upgrad", include=["*"])
    x, y = data()
    surgery.collector.add(group_losses(model(x[:4]), y[:4]), weight=0.5)
    matrix = surgery.collector._matrix
    assert matrix is not None
    local_numel = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    return torch.tensor([*matrix.values.shape, local_numel, total], dtype=torch.float64)


# ---- the integrations --------------------------------------------------------------------------


class Net(nn.Module):
    """README's integration model: a trunk and two heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(16, 2)

    def groups(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        ce = nn.functional.cross_entropy
        return {"a": ce(self.a(h), y), "b": ce(self.b(h), 1 - y)}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.groups(x, y)


def integration_data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(7)
    return torch.utils.data.TensorDataset(torch.randn(32, 4, generator=generator),
                                          torch.randint(0, 2, (32,), generator=generator))


SURGERY = {"combiner": "upgrad", "include": ["trunk.*"]}


def trainer_case(out: Path) -> torch.Tensor:
    """SurgeryTrainer: global batch 8 (8 in one process, 4 per rank on two), accumulation 2."""
    from transformers import TrainingArguments

    from gradsurg.integrations.transformers import SurgeryTrainer

    class InOrder(SurgeryTrainer):  # the same rows in one process and on two
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return torch.utils.data.SequentialSampler(self.train_dataset)

    _, world = rank_world()
    rows = [{"x": x, "y": y} for x, y in integration_data()]
    args = TrainingArguments(output_dir=str(out / "trainer"),
                             per_device_train_batch_size=8 // world,
                             gradient_accumulation_steps=2, max_grad_norm=0.5,
                             num_train_epochs=1, learning_rate=0.05,
                             lr_scheduler_type="constant", optim="sgd", report_to="none",
                             save_strategy="no", use_cpu=True, logging_steps=1,
                             disable_tqdm=True)
    model = Net()
    trainer = InOrder(model=model, args=args, train_dataset=rows, surgery=dict(SURGERY))
    trainer.train()
    return flat_weights(model)


def lightning_case(out: Path) -> torch.Tensor:
    """SurgeryModule: global batch 8, accumulation 2, clipping; strategy ddp on two ranks."""
    import lightning as L

    from gradsurg.integrations.lightning import SurgeryModule

    class LitNet(SurgeryModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def configure_surgery(self) -> dict[str, Any]:
            return {"combiner": "upgrad", "include": ["net.trunk.*"]}

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.loss_groups(self.net.groups(*batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    _, world = rank_world()
    rows = integration_data()
    extra: dict[str, Any] = {"devices": 1}
    sampler = None
    if world > 1:  # Lightning's own DistributedSampler shuffles; the same rows as one process
        extra = {"devices": 2, "strategy": "ddp", "use_distributed_sampler": False}
        sampler = torch.utils.data.DistributedSampler(rows, shuffle=False)
    trainer = L.Trainer(max_epochs=1, accumulate_grad_batches=2, gradient_clip_val=0.5,
                        accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(out / "lightning"), **extra)
    model = LitNet()
    loader = torch.utils.data.DataLoader(rows, batch_size=8 // world, sampler=sampler)
    trainer.fit(model, loader)
    return flat_weights(model.net)


def accelerate_case(out: Path) -> torch.Tensor:
    """README's Accelerate loop: the prepared (DDP-wrapped on two ranks) model to Surgery."""
    from accelerate import Accelerator

    from gradsurg.integrations.accelerate import backward

    del out
    _, world = rank_world()
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(integration_data(), batch_size=8 // world)
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    surgery = Surgery(prepared, optimizer, **SURGERY)
    for x, y in loader:
        with accelerator.accumulate(prepared):
            backward(accelerator, surgery, prepared(x, y))
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(prepared.parameters(), 0.5)
            optimizer.step()
            optimizer.zero_grad()
    return flat_weights(model)


INTEGRATIONS: dict[str, Callable[[Path], torch.Tensor]] = {
    "trainer": trainer_case, "lightning": lightning_case, "accelerate": accelerate_case}


def unwrapped_ddp_message() -> str:
    """The Surgery is given the plain module while the forward runs through DDP."""
    model = Layered()
    wrapper = nn.parallel.DistributedDataParallel(model)
    surgery = Surgery(model, None, "upgrad")
    x, y = data()
    try:
        surgery.backward(group_losses(wrapper(x[:2]), y[:2]))
    except Exception as error:  # the message is what the test checks
        return f"{type(error).__name__}: {error}"
    return "no error"


# ---- failures on one rank -----------------------------------------------------------------------


def error_line(run: Callable[[], Any]) -> str:
    try:
        run()
    except Exception as error:  # the message is what the test checks
        return f"{type(error).__name__}: {error}"
    return "no error"


def one_rank_differs(case: str) -> str:
    """Rank 1 alone: an extra group (`groups`), or a group with no graph, which fails in its
    Surgery, with `include` given (`raises`) or the default selection (`raises_selecting`)."""
    rank, _ = rank_world()
    model = Layered()
    x, y = data()
    include = None if case == "raises_selecting" else ["*"]
    surgery = Surgery(model, None, "upgrad", include=include)
    losses = group_losses(model(x[:2]), y[:2])
    if rank == 1 and case == "groups":
        losses["d"] = losses["c"] * 2
    if rank == 1 and case.startswith("raises"):
        losses["b"] = torch.tensor(1.0)  # reaches no parameter: this rank's error
    return error_line(lambda: surgery.backward(losses))


def nonfinite_on_one_rank() -> torch.Tensor:
    """Step 1's loss is NaN on rank 1 only (on the whole global batch in one process):
    every rank skips that step, then trains on. Weights and skipped steps."""
    rank, world = rank_world()
    model = Layered()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    options: dict[str, Any] = {"data_parallel": SINGLE_PROCESS} if world == 1 else {}
    surgery = Surgery(model, optimizer, "pcgrad", **options)
    x, y = data()
    for step in range(2):
        rows = slice(step * 8, step * 8 + 8)
        if world > 1:
            rows = slice(rows.start + rank * 4, rows.start + rank * 4 + 4)
        losses = group_losses(model(x[rows]), y[rows])
        poisoned = step == 0 and (rank == 1 or world == 1)
        if poisoned:
            losses["a"] = losses["a"] * float("nan")
        surgery.backward(losses)
        optimizer.step()
        optimizer.zero_grad()
    return torch.cat([flat_weights(model), torch.tensor([float(surgery.skipped_steps)])])


FAILURES = ("groups", "raises", "raises_selecting")


def unsupported_engines() -> dict[str, str]:
    """FSDP1 given to a Surgery, and FSDP2 applied after the Surgery was built (as a framework
    that shards inside its own setup would): one line each, naming what works."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    _, world = rank_world()
    fsdp1 = FullyShardedDataParallel(Layered(), device_id=torch.device("cpu"))
    late = Layered()
    surgery = Surgery(late, None, "upgrad")
    fully_shard(late, mesh=init_device_mesh("cpu", (world,)))
    return {"fsdp1": error_line(lambda: Surgery(fsdp1, None, "upgrad")),
            "sharded_late": error_line(lambda: surgery.use_engine(late))}


def main(out: Path) -> None:
    from datetime import timedelta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails, bounded
    rank, _ = rank_world()
    results: dict[str, Any] = {}
    for name, spec in combiner_specs().items():
        for engine in ("ddp", "fsdp2"):
            try:
                results[f"{engine}/{name}"] = own_loop(spec, engine)
            except Exception as error:
                results[f"{engine}/{name}"] = f"{type(error).__name__}: {error}"
                if engine == "ddp":
                    traceback.print_exc()
    for engine in ("ddp", "fsdp2"):
        results[f"block_conflicts/{engine}"] = block_conflicts(engine)
    results["fsdp2_memory"] = fsdp_row_memory()
    results["unwrapped_ddp"] = unwrapped_ddp_message()
    for case in FAILURES:
        results[f"failure/{case}"] = one_rank_differs(case)
    results["nonfinite_one_rank"] = nonfinite_on_one_rank()
    results["unsupported"] = unsupported_engines()
    for name, case in INTEGRATIONS.items():
        results[name] = case(out / f"rank{rank}")
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
