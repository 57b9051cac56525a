"""The default parameter selection: every parameter that more than one loss group can move.

`Surgery` without `include` decides once, on the first micro-batch, from each group's loss:

1. The graph says which groups *reach* a parameter. Reaching is not moving:
   `torch.stack(exit_logits)` links every exit head to every loss, yet a head's gradient
   from another exit's loss is exactly zero, whatever the weights are.
2. A parameter is shared when its gradient is non-zero for more than one group.
3. A parameter that several groups reach and whose gradient is exactly zero for *every* group
   is shared too. That is the zero-initialised adapter (peft LoRA's `lora_A` while `lora_B` is
   0, a ReZero branch while its gate is 0): its gradient is zero only because a weight after it
   is zero, and every group will move it once that weight has moved. A parameter no group uses
   (a stacked head nobody reads) is selected too and stays at zero, which changes nothing.
4. A parameter with a non-zero gradient from exactly one group and an exact zero from another
   group that reaches it belongs to the one group (the stacked head), unless that other
   group's path to it passes an all-zero trainable parameter as a factor (a zero-initialised
   weight multiplying it in). Then the zero may be the weight's and not the graph's, and a
   Hessian-vector probe decides: the group moves the parameter when the second derivative of
   its loss, between the parameter and the rest (in a fixed random direction), is non-zero.
   A model whose operations have no second derivative (e.g. PyTorch's CPU flash attention)
   is refused there, with the parameters named, rather than guessed: pass `include=[...]`.

Every decision that reads values is all-reduced over the ranks, so they all choose alike.
Under FSDP2 the graph's leaves are gathered copies, so only rules 2 and 3 apply there
(`shared_without_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError

#: Autograd nodes that multiply their inputs, with the positions (in `next_functions`) of the
#: factors: a zero factor makes the gradient of the others zero. A bias slot is not a factor.
FACTORS: dict[str, tuple[int, ...] | None] = {
    "MulBackward0": None, "MmBackward0": None, "BmmBackward0": None, "MvBackward0": None,
    "DotBackward0": None, "VdotBackward0": None, "MatmulBackward0": None,
    "OuterBackward0": None, "KronBackward0": None, "EinsumBackward0": None,
    "AddmmBackward0": (1, 2), "AddbmmBackward0": (1, 2), "BaddbmmBackward0": (1, 2),
    "AddmvBackward0": (1, 2), "AddrBackward0": (1, 2), "LinearBackward0": (0, 1),
    "ConvolutionBackward0": (0, 1), "ConvolutionBackwardOverrideable": (0, 1),
}
# and DivBackward0: a zero numerator zeroes the denominator's gradient (`_factor_pairs`)
#: How far a zero factor may sit from its parameter through single-input nodes (views,
#: transposes, casts, activations).
CHAIN = 8


def shared_parameters(names: Sequence[str], values: Sequence[Tensor],
                      candidates: Sequence[tuple[str, nn.Parameter]],
                      reached: Sequence[set[int]], *, all_reduce: Any = None) -> list[bool]:
    """Which of `candidates` (parameters some two groups reach) more than one group moves.

    `values`: the groups' losses of the first micro-batch (graphs retained); `reached`: each
    group's reached parameter ids; `all_reduce`: sums a CPU tensor over the ranks, or None.
    """
    params = [p for _, p in candidates]
    if not params:
        return []
    k, n = len(values), len(params)
    reaches = torch.tensor([[id(p) in ids for p in params] for ids in reached], dtype=torch.bool)
    nonzero = torch.zeros(k, n)
    for row, value in enumerate(values):
        if not value.requires_grad or not reaches[row].any():
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        nonzero[row] = _flags(grads, params)
    if all_reduce is not None:
        nonzero = all_reduce(nonzero)
    count = (nonzero > 0).sum(dim=0)
    # The cells that decide: a group reaches the parameter, its gradient is exactly zero, and
    # without it fewer than two groups move the parameter.
    silent = reaches & (nonzero == 0) & (count < 2).unsqueeze(0)
    if not bool(silent.any()):
        return (count > 1).tolist()
    zero = _all_zero_parameters(values)
    gated = torch.zeros(k, n, dtype=torch.bool)
    if zero:  # the same on every rank: decided from the graph and equal weights
        for row, value in enumerate(values):
            if silent[row].any():
                gated[row] = _gated(value, params, zero) & silent[row]
    if not bool(gated.any()):  # every zero is the graph's (a stacked output's)
        return (count > 1).tolist()
    probed = _probe(values, params, gated)  # [k, n + 1]: curvature flags, failure flag
    if all_reduce is not None:
        probed = all_reduce(probed)
    failed = (probed[:, n] > 0).unsqueeze(1) & gated
    count = count + ((probed[:, :n] > 0) & gated & ~failed).sum(dim=0)
    unknown = failed.sum(dim=0)
    # Unknown cells (no second derivative): a parameter no group moves for sure is taken
    # (LoRA's lora_A on a model without double backward; taking a parameter that stays at
    # zero changes nothing); one with a single sure mover is refused, not guessed.
    doubt = (count == 1) & (unknown > 0)
    if bool(doubt.any()):
        column = int(doubt.nonzero()[0])
        row = int(failed[:, column].nonzero()[0])
        culprits = [candidates[j][0] for j in doubt.nonzero().flatten().tolist()]
        raise ConfigError(
            f"the default parameter selection cannot tell whether loss group {names[row]!r} "
            f"moves {_listing(culprits)}: its gradient there is exactly zero, an all-zero "
            "(zero-initialised?) weight multiplies its path, and the model's operations have "
            "no second derivative to check with; choose the parameters with include=[...] "
            "(Surgery(..., include=...), recipe key include)")
    return ((count > 1) | ((count == 0) & (unknown > 0))).tolist()


def shared_without_graph(nonzero: Tensor) -> list[bool]:
    """The rule where no graph can be read (FSDP2: the graph's leaves are gathered copies),
    from `nonzero[group, parameter]` (non-zero gradient counts, summed over ranks): non-zero
    for more than one group, or for none (rule 3; a parameter no group reaches is taken too,
    and stays at zero). Rule 4 needs the graph: a zero caused by a zero weight on one group's
    path, next to another group's non-zero gradient, goes unseen here; pass `include`."""
    count = (nonzero > 0).sum(dim=0)
    return ((count > 1) | (count == 0)).tolist()


def _flags(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """1.0 where the gradient has a non-zero entry (one device sync for all of them)."""
    device = params[0].device
    flags = [g.ne(0).any() if g is not None else torch.zeros((), dtype=torch.bool,
                                                             device=device)
             for g in grads]
    return torch.stack([f.to(device) for f in flags]).float().cpu()


def _all_zero_parameters(values: Sequence[Tensor]) -> dict[int, Tensor]:
    """Trainable leaves the losses' graphs hold whose every entry is 0 (by id)."""
    leaves: dict[int, Tensor] = {}
    for value in values:
        for node in _nodes(value):
            variable = getattr(node, "variable", None)
            if variable is not None:
                leaves[id(variable)] = variable
    if not leaves:
        return {}
    tensors = list(leaves.values())
    flags = torch.stack([t.detach().ne(0).any().to(tensors[0].device) for t in tensors]).tolist()
    return {id(t): t for t, nonzero in zip(tensors, flags) if not nonzero}


def _nodes(value: Tensor) -> list[Any]:
    if value.grad_fn is None:
        return []
    seen: set[int] = set()
    out, stack = [], [value.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return out


def _gated(value: Tensor, params: Sequence[Tensor], zero: dict[int, Tensor]) -> Tensor:
    """For each parameter: does the graph from `value` reach it through a node that multiplies
    its path by an all-zero trainable parameter (other than itself)?"""
    index = {id(p): i for i, p in enumerate(params)}
    masks = _reach_masks(value, index)
    gated = 0
    for node in _nodes(value):
        children = [child for child, _ in node.next_functions]
        for position, others in _factor_pairs(type(node).__name__, len(children)):
            leaf = _zero_leaf(children[position], zero)
            if leaf is None:
                continue
            mask = 0
            for other in others:
                if children[other] is not None:
                    mask |= masks.get(id(children[other]), 0)
            own = index.get(id(leaf))
            gated |= mask & ~(1 << own if own is not None else 0)
    return torch.tensor([bool(gated >> i & 1) for i in range(len(params))], dtype=torch.bool)


def _factor_pairs(name: str, size: int) -> list[tuple[int, list[int]]]:
    """(factor position, the positions a zero there gates) for a multiplying node."""
    if name == "DivBackward0":
        return [(0, [1])] if size == 2 else []
    if name not in FACTORS:
        return []
    positions = [i for i in (FACTORS[name] or range(size)) if i < size]
    return [(i, [j for j in positions if j != i]) for i in positions]


def _zero_leaf(node: Any, zero: dict[int, Tensor]) -> Tensor | None:
    """The all-zero parameter at the end of a chain of single-input nodes from `node`."""
    for _ in range(CHAIN):
        if node is None:
            return None
        variable = getattr(node, "variable", None)
        if variable is not None:
            return zero.get(id(variable))
        children = [child for child, _ in node.next_functions if child is not None]
        if len(children) != 1:
            return None
        node = children[0]
    return None


def _reach_masks(value: Tensor, index: dict[int, int]) -> dict[int, int]:
    """Node id -> bit mask of the indexed parameters reachable from it (iterative DFS)."""
    masks: dict[int, int] = {}
    if value.grad_fn is None:
        return masks
    stack: list[tuple[Any, bool]] = [(value.grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in masks:
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in masks)
            continue
        variable = getattr(node, "variable", None)
        mask = 1 << index[id(variable)] if variable is not None and id(variable) in index else 0
        for child in children:
            mask |= masks.get(id(child), 0)
        masks[id(node)] = mask
    return masks


def _probe(values: Sequence[Tensor], params: Sequence[Tensor], gated: Tensor) -> Tensor:
    """[k, n + 1]: 1.0 where a group's loss has a non-zero second derivative between the
    parameter and the others (H r in a fixed random direction r), i.e. depends on it though
    its gradient is zero now; last column 1.0 where the model has no second derivative.
    Draws from its own generator, so the global random state is untouched."""
    k, n = gated.shape
    probed = torch.zeros(k, n + 1)
    for row, value in enumerate(values):
        cells = gated[row].nonzero().flatten().tolist()
        if not cells:
            continue
        leaves = [node.variable for node in _nodes(value)
                  if getattr(node, "variable", None) is not None
                  and node.variable.requires_grad]
        generator = torch.Generator().manual_seed(0)
        targets = [params[i] for i in cells]
        try:
            grads = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
            terms = [(g * torch.randn(g.shape, generator=generator).to(g)).sum()
                     for g in grads if g is not None and g.requires_grad]
            if not terms:
                continue
            second = torch.autograd.grad(sum(terms), targets, retain_graph=True,
                                         allow_unused=True)
        except RuntimeError:  # e.g. "derivative for aten::..._backward is not implemented"
            probed[row, n] = 1.0
            continue
        probed[row, cells] = _flags(second, targets)
    return probed


def _listing(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
