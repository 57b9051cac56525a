"""Data parallelism on torch.distributed, as `torchrun` launches it.

Every process holds the whole model and works on its share of each global batch. `Surgery`
all-reduces the per-group gradient matrix (and the gradients outside it) once per optimizer
step, *before* combining, so every process combines the same matrix and takes the same step:
a run on N processes equals the one-process run with the same global batch. Nothing here wraps
the model (no DDP): the combiner needs the per-group rows, which DDP would have summed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradsurg.errors import ConfigError

__all__ = ["SINGLE_PROCESS", "DataParallel", "is_main_process"]


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (read from the environment torchrun sets,
    so it works before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the job: `rank` of `world_size` (1 = no distribution)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes files; the others only train."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, backend: str | None = None) -> DataParallel:
        """Join the process group that `torchrun` describes in the environment, if any.

        Backend: `nccl` when CUDA is available, else `gloo` (CPU), unless given.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return SINGLE_PROCESS
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if not dist.is_initialized():
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend=chosen)
        return cls(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", dist.get_rank())))

    def shard(self, rows: Sequence[int]) -> tuple[list[int], float]:
        """This rank's contiguous part of a global batch and its share of the rows.

        Parts differ in size by at most one. A rank left without rows (a last batch smaller
        than the world) gets the first row with share 0, so it still joins the all-reduce.
        """
        rows = list(rows)
        if not self.enabled:
            return rows, 1.0
        base, extra = divmod(len(rows), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        mine = rows[start:start + base + (1 if self.rank < extra else 0)]
        if not mine:
            return rows[:1], 0.0
        return mine, len(mine) / len(rows)

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over all ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_module_(self, module: nn.Module) -> None:
        """Make every rank start from rank 0's weights and buffers."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (small objects only)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = DataParallel()
