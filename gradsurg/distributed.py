"""Data parallelism on torch.distributed, as `torchrun` launches it.

Every process works on its share of each global batch. Without an engine, or under DDP (whose
own all-reduce `gradsurg.engines` switches off), `Surgery` all-reduces the per-group gradient
matrix (and the gradients outside it) once per optimizer step, *before* combining, so every
process combines the same matrix and takes the same step: a run on N processes equals the
one-process run with the same global batch. Under FSDP2 (`sharded`) the engine has already
reduce-scattered every row; only the losses, the non-finite flags, the Gramian and norms are
reduced here.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradsurg.engines import sum_of_squares
from gradsurg.errors import ConfigError, RanksError
from gradsurg.pipeline import Stage, StepGradients

__all__ = ["COLLECTIVE_TIMEOUT", "SINGLE_PROCESS", "AllReduce", "DataParallel",
           "is_main_process"]

#: How long `gradsurg run`'s ranks wait for each other in one collective before failing.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


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
    #: The process group to reduce on (None: the default group).
    group: Any = None
    #: FSDP2: each rank holds its shard of every row and gradient (`gradsurg.engines`).
    sharded: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes files; the others only train."""
        return self.rank == 0

    @classmethod
    def detect(cls, model: nn.Module | None = None) -> DataParallel:
        """The data parallelism a `Surgery` without `data_parallel=` must use.

        An initialized process group of several ranks is joined as it is. Several processes
        without one (torchrun, no `init_process_group`) are refused: the ranks' weights would
        drift apart without a word. (`Surgery` finds DDP and FSDP2 engines itself.)
        """
        del model
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            raise ConfigError(
                f"WORLD_SIZE={world_size} but no process group is initialized, so the ranks "
                "would train apart; call torch.distributed.init_process_group() before "
                "creating Surgery (or pass data_parallel=DataParallel.from_environment()), or "
                "data_parallel=SINGLE_PROCESS for deliberately independent runs")
        return SINGLE_PROCESS

    @classmethod
    def of_group(cls, group: Any, *, sharded: bool = False) -> DataParallel:
        """This process's place in an engine's process group (DDP's, or FSDP2's mesh's)."""
        return cls(dist.get_rank(group), dist.get_world_size(group),
                   int(os.environ.get("LOCAL_RANK", dist.get_rank())), group=group,
                   sharded=sharded)

    @classmethod
    def from_environment(cls, backend: str | None = None, *,
                         timeout: timedelta = COLLECTIVE_TIMEOUT) -> DataParallel:
        """Join the process group that `torchrun` describes in the environment, if any.

        Backend: `nccl` when CUDA is available, else `gloo` (CPU), unless given. `timeout`:
        how long a rank waits in a collective for the others before it fails (one error
        line) instead of hanging.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return SINGLE_PROCESS
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if not dist.is_initialized():
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend=chosen, timeout=timeout)
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

    def all_reduce_(self, tensor: Tensor, *, op: Any = None) -> Tensor:
        """Sum (or `op`) `tensor` over all ranks, in place; a timed-out wait is one line."""
        if self.enabled:
            try:
                dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=self.group)
            except RuntimeError as error:
                if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
                    raise
                raise RanksError(
                    f"rank {self.rank}: the other ranks did not join the step's reduction in "
                    "time; one of them failed or hangs (its own error says why)") from None
        return tensor

    def agree(self, names: Sequence[str], *, failed: str | None = None) -> None:
        """Before any reduction of a step: every rank has the same loss groups and none failed.

        One small all-reduce (max of the values and of their negations) of a fingerprint of
        the group names, their count and a failure flag. A rank whose step failed calls it
        with `failed` (its error) so the others stop too instead of waiting for it; ranks
        whose groups differ would otherwise reduce mismatched matrices or wait forever.
        """
        if not self.enabled:
            return
        fingerprint = float(zlib.crc32("\x1f".join(names).encode()))
        header = torch.tensor([fingerprint, float(len(names)), 1.0 if failed else 0.0],
                              dtype=torch.float64)
        both = torch.cat([header, -header])
        self.all_reduce_(both, op=dist.ReduceOp.MAX)
        highest, lowest = both[:3], -both[3:]
        if failed is not None:
            return  # the caller raises its own error
        if bool(highest[2] > 0):
            raise RanksError(f"rank {self.rank}: another rank failed in this step (its own "
                                "error says why); stopping every rank")
        if bool((highest[:2] != lowest[:2]).any()):
            raise RanksError(
                f"rank {self.rank}: the ranks disagree on the loss groups (this rank has "
                f"{list(names)}); every rank must pass the same groups in the same order")

    def norm(self, tensors: Sequence[Tensor]) -> Tensor:
        """2-norm of all `tensors` together, float64; sharded, of every rank's shards."""
        squares = sum_of_squares(list(tensors))
        if self.sharded and self.enabled:
            self.all_reduce_(squares)
        return squares.sqrt()

    def broadcast_module_(self, module: nn.Module) -> None:
        """Make every rank start from rank 0's weights and buffers."""
        if not self.enabled:
            return
        source = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=source, group=self.group)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (small objects only)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.group)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = DataParallel()


class AllReduce(Stage):
    """Pipeline stage: sums the step over ranks before anything else looks at it.

    The matrix goes in place in one call; the plain gradients, the share-weighted losses and
    the non-finite flags travel together in one flat buffer, so every rank combines the global
    batch's matrix and all ranks skip a bad step together.
    """

    def __init__(self, data_parallel: DataParallel) -> None:
        self.data_parallel = data_parallel

    def run(self, step: StepGradients) -> None:
        self.data_parallel.agree(step.names)  # same groups everywhere, no rank failed
        sharded = self.data_parallel.sharded  # FSDP2 has reduce-scattered rows and gradients
        if step.matrix is not None and not sharded:
            self.data_parallel.all_reduce_(step.matrix)
        grads = [] if sharded else [p.grad for p in step.plain_parameters()
                                    if p.grad is not None]
        names = list(step.losses)
        dtype = grads[0].dtype if grads else torch.float32
        device = grads[0].device if grads else step.layout.device
        extras = [step.losses[name].reshape(1) for name in names]
        extras += [step.bad_losses[name].reshape(1) for name in names
                   if name in step.bad_losses]
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [x.to(device=device, dtype=dtype) for x in extras])
        self.data_parallel.all_reduce_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        for name in names:
            step.losses[name] = flat[offset].float()
            offset += 1
        for name in names:
            if name in step.bad_losses:
                step.bad_losses[name] = flat[offset] > 0
                offset += 1
