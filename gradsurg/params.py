"""Choosing the parameters that surgery operates on, and viewing them as one flat vector."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from gradsurg.engines import local
from gradsurg.errors import ConfigError

NamedParameters = list[tuple[str, nn.Parameter]]


def trainable_parameters(model: nn.Module) -> NamedParameters:
    """`(name, parameter)` for every parameter that requires grad (shared ones once)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def match_patterns(
    named: NamedParameters,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> NamedParameters:
    """Keep parameters whose name matches any `include` glob and no `exclude` glob.

    A pattern that matches nothing is an error: it is almost always a typo, and a silent empty
    selection would turn surgery off without a word.
    """
    names = [name for name, _ in named]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            if not any(fnmatchcase(name, pattern) for name in names):
                raise ConfigError(
                    f"{kind} pattern {pattern!r} matches no trainable parameter "
                    f"(e.g. {', '.join(names[:3])})"
                )
    selected = [
        (name, p)
        for name, p in named
        if (include is None or any(fnmatchcase(name, pat) for pat in include))
        and not any(fnmatchcase(name, pat) for pat in exclude or ())
    ]
    if not selected and named and (include is not None or exclude):
        # e.g. `include: []` or `exclude: ['*']`: surgery would silently become a plain sum
        raise ConfigError(f"include {list(include) if include is not None else None} / exclude "
                          f"{list(exclude or [])} select no trainable parameter, so surgery "
                          "would do nothing")
    return selected


def reached_parameters(loss: Tensor, candidates: Iterable[Tensor]) -> set[int]:
    """Ids of the `candidates` that `loss` depends on, found by walking its autograd graph.

    Walking the graph costs no gradient computation, so the default parameter set ("reached by
    more than one group") can be found before the first backward pass.
    """
    wanted = {id(p) for p in candidates}
    found: set[int] = set()
    if loss.grad_fn is None:
        return found
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in wanted:
            found.add(id(variable))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return found


@dataclass(frozen=True)
class FlatLayout:
    """Where each selected parameter lives inside one flat vector of length `size`."""

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    offsets: tuple[int, ...]
    size: int
    dtype: torch.dtype
    device: torch.device
    #: Each parameter's shape in the vector: its own, or its local shard's under FSDP2.
    shapes: tuple[torch.Size, ...] = ()

    @classmethod
    def of(cls, named: NamedParameters) -> FlatLayout:
        if not named:
            return cls((), (), (), 0, torch.float32, torch.device("cpu"))
        dtypes = {p.dtype for _, p in named}
        devices = {local(p).device for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ConfigError(
                "selected parameters must share one dtype and device, got "
                f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}; narrow `include`"
            )
        offsets, total = [], 0
        shapes = [local(p).shape for _, p in named]  # a sharded parameter: this rank's part
        for shape in shapes:
            offsets.append(total)
            total += shape.numel()
        return cls(
            names=tuple(name for name, _ in named),
            params=tuple(p for _, p in named),
            offsets=tuple(offsets),
            size=total,
            dtype=dtypes.pop(),
            device=devices.pop(),
            shapes=tuple(shapes),
        )

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of `flat[..., size]` shaped like each parameter (no copy)."""
        lead = flat.shape[:-1]
        return [
            flat[..., start : start + shape.numel()].view((*lead, *shape))  # () for a scalar
            for start, shape in zip(self.offsets, self.shapes)
        ]

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter tensors (None = zeros) into one flat vector."""
        flat = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for view, tensor in zip(self.views(flat), tensors):
            if tensor is not None:
                view.copy_(tensor)
        return flat
