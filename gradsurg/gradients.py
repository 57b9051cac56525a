"""The gradient collector: which parameters get surgery, and one step's per-group rows.

Micro-batches add up: every `add` backward-passes each group's loss into its row of the
`[k, n]` `GradientMatrix` (gradsurg.gradient_matrix) over the selected parameters (or, for a
fixed-weight combiner, one backward pass of the summed loss), parameters outside the selection
get the plain sum in `.grad`, and the losses' values and non-finite flags are summed alongside.
`take` hands the step over to the pipeline.

Default selection (`gradsurg.selection`): every trainable parameter that more than one group
can move, judged on the first micro-batch (all ranks together): a non-zero gradient from more
than one group, or an exactly zero gradient from every group that reaches it (a
zero-initialised adapter such as LoRA's `lora_A`). Reading the gradients, not only the graph,
keeps the choice independent of how a model packs its outputs: `torch.stack(exit_logits)`
links every exit head to every loss in the graph, while each head's gradient is non-zero for
its own groups only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from gradsurg.distributed import DataParallel
from gradsurg.engines import has_nonzero, local, reducer_errors
from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.gradient_matrix import BackwardMode, GradientMatrix, resolve_mode
from gradsurg.params import (
    FlatLayout,
    NamedParameters,
    match_patterns,
    reached_parameters,
    trainable_parameters,
)
from gradsurg.pipeline import StepGradients
from gradsurg.selection import shared_parameters, shared_without_graph


class GradientCollector:
    """Selects parameters once, then collects each step's rows, plain gradients and losses."""

    def __init__(self, model: nn.Module, *, include: Sequence[str] | None,
                 exclude: Sequence[str] | None, mode: BackwardMode, reuse_buffer: bool,
                 data_parallel: DataParallel, check_finite: bool) -> None:
        self.trainable: NamedParameters = trainable_parameters(model)
        if not self.trainable:
            raise ConfigError("the model has no trainable parameters")
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude or [])
        self.mode: BackwardMode = mode
        self.reuse_buffer = reuse_buffer
        self.data_parallel = data_parallel
        self.check_finite = check_finite
        self.layout: FlatLayout | None = None
        self.outside: list[nn.Parameter] = []
        self.micro_batches = 0
        self._names: tuple[str, ...] | None = None
        self._matrix: GradientMatrix | None = None
        self._shortcut_weight: float | None = None
        self._buffer: Tensor | None = None
        self._losses: dict[str, Tensor] = {}
        self._bad: dict[str, Tensor] = {}
        #: Whether the losses' graphs hold torch's reentrant checkpointing (None: not seen yet).
        self._reentrant: bool | None = None

    @property
    def sharded(self) -> bool:
        """FSDP2: the rows and gradients are this rank's shards (`gradsurg.engines`)."""
        return self.data_parallel.sharded

    @property
    def pending(self) -> bool:
        """True while micro-batches were collected that no `take` has handed on."""
        return self.micro_batches > 0

    def add(self, losses: Mapping[str, Tensor], *, weight: float | Sequence[float] | None,
            scale: object = None, shortcut_weight: float | None = None,
            needs_shared: bool = False, batches: int = 1) -> None:
        """Collect one micro-batch.

        `weight`: this rank's share of the global batch (data parallel), multiplied into the
        losses (one per loss when the losses come from several batches). `scale`: a loss
        scale whose `scale(loss)` is applied before backward.
        `shortcut_weight`: the combiner's one weight when the matrix can be skipped this step
        (decided per step, at its first micro-batch). `needs_shared`: the combiner acts on
        shared parameters, so selecting none of them is an error. `batches`: the losses are
        that many batches' groups in turn (a multi-batch combiner); the parameters are selected
        on the first batch's, as for a one-batch step.
        """
        names = tuple(losses)
        if not names:
            raise GradsurgError("surgery.backward() needs at least one loss group")
        if self._names is not None and names != self._names:
            raise GradsurgError(
                f"loss groups changed within one optimizer step: {list(self._names)} "
                f"then {list(names)}")
        values = [_scalar(name, loss) for name, loss in losses.items()]
        if isinstance(weight, Sequence):
            values = [value * part for value, part in zip(values, weight, strict=True)]
        elif weight is not None:
            values = [value * weight for value in values]
        for name, value in zip(names, values):
            detached = value.detach().float()
            previous = self._losses.get(name)
            self._losses[name] = detached if previous is None else previous + detached
        if scale is not None:
            values = [scale.scale(value) for value in values]  # type: ignore[attr-defined]
        if self.check_finite:
            for name, value in zip(names, values):  # flags stay on device: no sync here
                bad = ~torch.isfinite(value.detach())
                previous = self._bad.get(name)
                self._bad[name] = bad if previous is None else previous | bad
        if self.sharded and weight is not None:
            # FSDP2's reduce-scatter averages over ranks; the share weighting already did
            values = [value * self.data_parallel.world_size for value in values]
        first_of_step = self.micro_batches == 0
        self._names = names
        self.micro_batches += 1
        with reducer_errors():
            if self._reentrant is None:  # decided once, on the first micro-batch
                self._reentrant = uses_reentrant_checkpoint(values)
            if self._reentrant:
                self._check_reentrant(shortcut_weight if first_of_step
                                      else self._shortcut_weight)
            if self.layout is None:
                first = len(names) // batches  # the first batch's groups decide the selection
                if self.sharded:
                    self._check_sharded_reach(names, values)
                    self._select_sharded(names[:first], values[:first],
                                         needs_shared=needs_shared)
                elif self._reentrant:
                    self._check_sharded_reach(names, values)  # the graph hides the params
                    if self.include is not None:
                        self._select_by_patterns()
                    else:  # sum: every parameter gets the plain sum, selected or not
                        self._use_layout([])
                else:
                    reached = self._check_reach(names, values)
                    if self.include is None:
                        self._select_by_gradients(names[:first], values[:first],
                                                  reached[:first], needs_shared=needs_shared)
                    else:
                        self._select_by_patterns()
            if first_of_step:
                self._shortcut_weight = shortcut_weight
            if self._shortcut_weight is not None:
                # g = w * sum_i g_i on the selected parameters and the plain sum elsewhere: one
                # backward pass of the summed loss; the pipeline scales the selected gradients.
                live = [loss for loss in values if loss.requires_grad]
                if live:
                    inputs = (None if self.sharded or self._reentrant
                              else [p for _, p in self.trainable])
                    torch.autograd.backward(sum(live), inputs=inputs)
                return
            self._accumulate(names, values, first_of_step=first_of_step)

    def take(self) -> StepGradients:
        """The collected step, ready for the pipeline; the collector starts a new step."""
        assert self.layout is not None and self._names is not None
        matrix = self._matrix.values if self._matrix is not None else None
        step = StepGradients(
            names=self._names, layout=self.layout, matrix=matrix,
            trainable=[p for _, p in self.trainable], outside=self.outside,
            losses=self._losses, bad_losses=self._bad,
            shortcut_weight=self._shortcut_weight if matrix is None else 1.0)
        self.discard()
        return step

    def discard(self) -> None:
        """Forget what was collected since the last `take` (the gradients stay where they are)."""
        self._matrix = None
        self._names = None
        self._shortcut_weight = None
        self._losses = {}
        self._bad = {}
        self.micro_batches = 0

    # ---- internals --------------------------------------------------------------------------

    def _accumulate(self, names: tuple[str, ...], values: list[Tensor], *,
                    first_of_step: bool) -> None:
        assert self.layout is not None
        if first_of_step:
            self._release_stale_grads(self.layout)
            self._matrix = GradientMatrix(names, self.layout, buffer=self._buffer,
                                          sharded=self.sharded)
            self._buffer = self._matrix.values if self.reuse_buffer else None
        assert self._matrix is not None
        self._matrix.accumulate(values, self.outside,
                                mode=resolve_mode(self.mode, self.layout.device,
                                                  sharded=self.sharded))

    def _check_reach(self, names: tuple[str, ...], values: list[Tensor]) -> list[set[int]]:
        """Each group's reached parameter ids; a group that reaches none is an error."""
        params = [p for _, p in self.trainable]
        reached = [reached_parameters(value, params) for value in values]
        for name, ids in zip(names, reached):
            if not ids:
                raise GradsurgError(
                    f"loss group {name!r} reaches no trainable parameter (no gradient path "
                    "from its loss to the model); compute it from the model's outputs")
        return reached

    def _check_reentrant(self, shortcut_weight: float | None) -> None:
        """Reentrant checkpointing gives one gradient for the summed loss and nothing else
        (no `autograd.grad`, no `inputs=`): `sum` works as one backward pass, `mean` needs
        `include` (which parameters get 1/k cannot be read off the gradients), and a combiner
        that needs each group's gradient is refused with what to use instead."""
        if shortcut_weight is None:
            raise GradsurgError(
                "the model uses reentrant gradient checkpointing (torch.utils.checkpoint with "
                "use_reentrant=True), whose backward pass cannot give each loss group its own "
                "gradient, which this combiner (or diagnostics_every) needs; use "
                "use_reentrant=False (the same memory saving; Hugging Face: "
                "gradient_checkpointing_kwargs={'use_reentrant': False}), or the sum combiner")
        if shortcut_weight != 1.0 and self.include is None and self.layout is None:
            raise GradsurgError(
                "the model uses reentrant gradient checkpointing (torch.utils.checkpoint with "
                "use_reentrant=True), which hides its parameters from the per-group gradients "
                "the default selection reads; pass include=[...] (or use_reentrant=False)")

    def _check_sharded_reach(self, names: tuple[str, ...], values: list[Tensor]) -> None:
        """Under FSDP2 the graph's leaves are gathered copies, not the parameters, so only a
        loss with no graph at all is known to reach nothing before its backward pass."""
        for name, value in zip(names, values):
            if not value.requires_grad:
                raise GradsurgError(
                    f"loss group {name!r} reaches no trainable parameter (its loss has no "
                    "autograd graph); compute it from the model's outputs")

    def _select_sharded(self, names: tuple[str, ...], values: list[Tensor], *,
                        needs_shared: bool) -> None:
        """FSDP2: `include` globs, or the default rule read from each group's own backward
        pass (the sharded gradients, all ranks together), once, on the first micro-batch."""
        if self.include is not None:
            self._select_by_patterns()
            return
        candidates = match_patterns(self.trainable, exclude=self.exclude)
        params = [p for _, p in candidates]
        nonzero = torch.zeros(len(names), len(candidates))
        for row, value in enumerate(values):
            for p in params:
                p.grad = None
            torch.autograd.backward(value, retain_graph=True)
            nonzero[row] = torch.tensor([has_nonzero(p.grad) for p in params],
                                        dtype=nonzero.dtype)
        for _, p in self.trainable:
            p.grad = None
        device = local(params[0]).device if params else torch.device("cpu")
        nonzero = self.data_parallel.all_reduce_(nonzero.to(device)).cpu()
        self._use_shared(names, candidates, shared_without_graph(nonzero),
                         needs_shared=needs_shared)

    def _select_by_patterns(self) -> None:
        selected = match_patterns(self.trainable, include=self.include, exclude=self.exclude)
        if not selected:
            raise ConfigError(f"include {self.include} with exclude {self.exclude} selects no "
                              "trainable parameter, so the combiner would do nothing; widen "
                              "include or narrow exclude")
        self._use_layout(selected)

    def _select_by_gradients(self, names: tuple[str, ...], values: list[Tensor],
                             reached: list[set[int]], *, needs_shared: bool) -> None:
        """First micro-batch without `include`: the parameters more than one group can move
        (`gradsurg.selection`: a non-zero gradient from several groups, or zero from every
        group that reaches it, as a zero-initialised adapter's is). Costs one extra backward
        pass per group, once; only parameters the graph links to several groups are looked
        at."""
        counts: dict[int, int] = {}
        for ids in reached:
            for pid in ids:
                counts[pid] = counts.get(pid, 0) + 1
        candidates = [(n, p) for n, p in match_patterns(self.trainable, exclude=self.exclude)
                      if counts.get(id(p), 0) > 1]
        all_reduce = None
        if self.data_parallel.enabled:
            self.data_parallel.agree(names)
            device = candidates[0][1].device if candidates else torch.device("cpu")

            def all_reduce(flags: Tensor) -> Tensor:
                return self.data_parallel.all_reduce_(flags.to(device)).cpu()

        shared = shared_parameters(names, values, candidates, reached, all_reduce=all_reduce)
        self._use_shared(names, candidates, shared, needs_shared=needs_shared)

    def _use_shared(self, names: tuple[str, ...], candidates: NamedParameters,
                    shared: list[bool], *, needs_shared: bool) -> None:
        """Select the candidates flagged in `shared` (one flag per candidate)."""
        selected = [item for item, flag in zip(candidates, shared) if flag]
        if not selected and needs_shared and len(names) > 1:
            raise ConfigError(
                f"no trainable parameter gets a gradient from more than one of the loss groups "
                f"{list(names)}, so the combiner would do nothing; choose the parameters with "
                "include=[...]")
        self._use_layout(selected)

    def _use_layout(self, selected: NamedParameters) -> None:
        self.layout = FlatLayout.of(selected)
        chosen = {id(p) for _, p in selected}
        self.outside = [p for _, p in self.trainable if id(p) not in chosen]

    def _release_stale_grads(self, layout: FlatLayout) -> None:
        """Before a step's first matrix backward the selected `.grad`s must be None or zero.

        Anything else (the last step's gradient when `zero_grad` was forgotten, or a plain
        backward's) would be silently dropped, so it is refused instead.
        """
        for name, p in zip(layout.names, layout.params):
            if p.grad is None:
                continue
            if has_nonzero(p.grad):
                raise GradsurgError(
                    f"parameter {name!r} already has a non-zero gradient at a step's first "
                    "micro-batch. Accumulating micro-batches by calling surgery.backward "
                    "several times per optimizer step? Pass accumulation_steps=N to Surgery "
                    "(or last_micro_batch=True on each step's last call), so they are combined "
                    "together: zero_grad() between them would drop the earlier ones. "
                    "Otherwise call optimizer.zero_grad() after each optimizer.step()")
            p.grad = None


def uses_reentrant_checkpoint(values: Sequence[Tensor]) -> bool:
    """Whether a loss's graph holds a node of torch's reentrant checkpointing."""
    seen: set[int] = set()
    stack = [value.grad_fn for value in values if value.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "CheckpointFunctionBackward":
            return True
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False


def _scalar(name: str, loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise GradsurgError(f"loss group {name!r} must be a scalar tensor")
    return loss.reshape(())
