"""The data-parallel engines users already wrap their models in (torch DDP, FSDP2), seen by
gradsurg. Everything engine-specific lives here; `Surgery`, the collector and the combiners
only ask this module.

Gradient surgery needs every loss group's gradient, which an engine's own reduction would sum
away, so each engine's reduction is turned off or redirected and gradsurg reduces what it
needs once per step, on the engine's own process group:

- DDP (`DistributedDataParallel`): its gradient all-reduce is switched off for good, as its
  `no_sync()` does for a while; gradsurg all-reduces the `[k, n]` rows once per step (the
  `AllReduce` stage). Buffers are still broadcast from rank 0 before each forward, as DDP does.
- FSDP2 (`fully_shard`): every row's backward pass reduce-scatters that row, so each rank keeps
  its shard of every row (`[k, n / world]`); the k x k Gramian is all-reduced, the combiner's
  weights are the same on every rank, and each rank writes its shard of the combined gradient
  into `.grad` (a `DTensor`). Only combiners that are exact on shards run there
  (`Combiner.exact_on_shards`); the others are refused by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradsurg.errors import ConfigError, GradsurgError

__all__ = [
    "DDPTakeover",
    "fsdp_mesh",
    "full_model_state",
    "full_optimizer_state",
    "is_sharded",
    "load_full_optimizer_state",
    "local",
    "reducer_errors",
    "refuse_fsdp1",
    "shard_model",
    "sharded_grad",
    "unwrap_ddp",
]


def unwrap_ddp(model: nn.Module) -> tuple[nn.Module, nn.parallel.DistributedDataParallel | None]:
    """The module a DDP wrapper holds (its parameter names without `module.`), and the wrapper."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module, model
    return model, None


class DDPTakeover:
    """Turns a DDP wrapper's gradient all-reduce off while gradsurg reduces the rows itself.

    DDP's reducer expects one backward pass per forward and all-reduces every gradient as it
    arrives; k backward passes (one per loss group) would be reduced k times or refused
    ("marked ready twice"). With `require_backward_grad_sync` off, the forward does not arm
    the reducer, which is what `no_sync()` does. DDP then also stops broadcasting buffers
    before the next forward; `after_backward` asks for that broadcast again.
    """

    def __init__(self, wrapper: nn.parallel.DistributedDataParallel) -> None:
        self.wrapper = wrapper
        wrapper.require_backward_grad_sync = False

    def after_backward(self) -> None:
        self.wrapper.require_forward_param_sync = True  # rank 0's buffers before the next forward

    def release(self) -> None:
        self.wrapper.require_backward_grad_sync = True


# ---- FSDP2 -------------------------------------------------------------------------------------


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without torch.distributed.tensor
        return None
    return DTensor


def is_sharded(parameter: Tensor) -> bool:
    """True for a parameter that FSDP2 (or any DTensor engine) has sharded."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(parameter, dtensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's part of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def sharded_grad(parameter: Tensor, values: Tensor) -> Tensor:
    """A gradient for `parameter` whose local part is `values` (no copy): a DTensor laid out
    like the parameter when it is sharded, else `values` itself."""
    if not is_sharded(parameter):
        return values
    dtensor = _dtensor_type()
    assert dtensor is not None
    return dtensor.from_local(values, parameter.device_mesh, parameter.placements,
                              shape=parameter.shape, stride=parameter.stride(),
                              run_check=False)


def fsdp_mesh(params: list[Tensor]) -> Any | None:
    """The one 1-D device mesh the sharded `params` live on (None when none is sharded).

    Mixed sharded and plain trainable parameters, several meshes, or a mesh of more than one
    dimension (HSDP, tensor parallel) are refused: the rows' shards would not line up.
    """
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return None
    if len(sharded) != len(params):
        raise ConfigError(
            f"{len(params) - len(sharded)} trainable parameter(s) are not sharded by FSDP2 while "
            f"{len(sharded)} are; apply fully_shard to the root module too, so every trainable "
            "parameter is sharded")
    meshes = {id(p.device_mesh) for p in sharded}
    mesh = sharded[0].device_mesh
    if len(meshes) > 1 or mesh.ndim != 1:
        raise ConfigError(
            "gradsurg supports FSDP2 on one 1-D device mesh (fully_shard over all ranks); this "
            f"model uses {len(meshes)} mesh(es) of {mesh.ndim} dimension(s) (HSDP or tensor "
            "parallel), which it does not support")
    for p in sharded:
        if any(type(placement).__name__ != "Shard" for placement in p.placements):
            raise ConfigError(f"gradsurg supports FSDP2's Shard placements only; a parameter "
                              f"has {p.placements}")
    return mesh


def refuse_fsdp1(model: nn.Module) -> None:
    """FSDP1 (`FullyShardedDataParallel`, what HF Trainer's `fsdp` option and Lightning's
    `strategy="fsdp"` use) keeps parameters in flat shards whose gradients are reduced as one
    sum, so per-group rows cannot be kept apart; refused with the engines that work."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return
    if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
        raise ConfigError(
            "the model is wrapped in FullyShardedDataParallel (FSDP1, e.g. Trainer's fsdp "
            "option or Lightning's strategy='fsdp'), whose flat shards sum the loss groups' "
            "gradients; gradsurg runs under DDP, or under FSDP2 (torch.distributed.fsdp."
            "fully_shard) in your own loop")


# ---- errors the engines raise that a user's code can cause ------------------------------------

_REDUCER_MESSAGES = ("marked as ready", "mark a variable ready", "DDP reducer",
                     "allreduced by DDP", "Expected to have finished reduction")


@contextlib.contextmanager
def reducer_errors() -> Iterator[None]:
    """Turn DDP's reducer errors into one line that says what happened and the fix.

    They come from a forward that ran through a DistributedDataParallel wrapper Surgery was not
    given: that wrapper's reducer expects one backward pass, gradsurg takes k.
    """
    try:
        yield
    except RuntimeError as error:
        if not any(message in str(error) for message in _REDUCER_MESSAGES):
            raise
        raise GradsurgError(
            "the model's forward ran through a DistributedDataParallel wrapper that Surgery was "
            "not given, so DDP's reducer expected one backward pass and got one per loss "
            "group; build the Surgery from the wrapper (Surgery(ddp_model, ...)) or call "
            "surgery.use_ddp(ddp_model) before the first forward") from None


def process_group_of(mesh: Any) -> Any:
    """The process group of a 1-D device mesh."""
    return mesh.get_group()


def group_rank_and_size(group: Any) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def all_reduce_(tensor: Tensor, group: Any) -> Tensor:
    """Sum `tensor` over `group`'s ranks, in place."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def zero_grads(params: list[Tensor]) -> None:
    for p in params:
        p.grad = None


def has_nonzero(tensor: Tensor | None) -> bool:
    return tensor is not None and bool(local(tensor).ne(0).any())


def sum_of_squares(tensors: list[Tensor]) -> Tensor:
    """Sum of squared entries of the local parts of `tensors`, float64 (0 for none)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    parts = [local(t) for t in tensors]
    norms = torch._foreach_norm(parts)
    return torch.stack([n.to(torch.float64).to(norms[0].device) for n in norms]).pow(2).sum()


# ---- whole-model views of an FSDP2 model (checkpoints, evaluation on one rank) ----------------


def shard_model(model: nn.Module, blocks: list[nn.Module], device: torch.device) -> Any:
    """`fully_shard` each of `blocks`, then the root, over every rank of the default process
    group; returns the mesh. The model's parameters must already agree across ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


def _full_on_rank0() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state dict on rank 0 (empty elsewhere); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_on_rank0())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter names, on rank 0 (empty elsewhere), so
    a checkpoint holds no shards; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_on_rank0())


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Shard a whole optimizer state (`full_optimizer_state`) into this rank's optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
