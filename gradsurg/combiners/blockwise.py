"""`blockwise`: combine per parameter block instead of over the whole flattened gradient."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, refuse_multi_batch
from gradsurg.combiners.blocks import (
    PER_LAYER,
    block_columns,
    block_facts,
    block_spans,
    check_blocks,
)
from gradsurg.combiners.gramian import gramian
from gradsurg.errors import ConfigError
from gradsurg.params import FlatLayout

WHERE = "combiner 'blockwise'"


@COMBINERS.register
class Blockwise(Combiner):
    """Each block of parameters combined on its own, over the groups that reach it.

        for each block b (a set of columns):   g[b] = inner_b(G[active_b, b])
        active_b = the groups whose gradient is non-zero on b (this step)

    In a multi-exit network exit i's loss reaches only the layers below it, so layer 1 sees
    every exit's gradient and the last layer one or two, and their conflicts differ from layer
    to layer; one combiner over the whole vector mixes them. Each block gets its own copy of
    `inner` (its own state, e.g. PCGrad's generator), like optax's `partition`. `blocks`:
    `per_layer`, or a list of name globs (every selected parameter must match exactly one).
    A block whose active groups lack a group `inner` names (e.g. `project`'s reference does
    not reach the block) gets the plain sum of its active rows, counted in
    `blockwise/<block>/fallback`. Diagnostics per block: `cosine/<block>/<a>/<b>` and
    `conflict/<block>/<a>/<b>` (1 when the cosine is negative: its mean over steps is the
    share of steps in conflict), plus `inner`'s own facts prefixed by the block.

    Cost: a Gramian per block (one pass over the matrix in all) and `inner`'s solve per block.
    """

    name = "blockwise"
    nested = ("inner",)
    needs_layout: ClassVar[bool] = True
    shard_refusal = ("each block's Gramian would need its own all-reduce across ranks (not "
                     "implemented).")

    def __init__(self, *, inner: Combiner | str | dict[str, Any] = "sum",
                 blocks: str | Sequence[str] = PER_LAYER) -> None:
        if not isinstance(inner, Combiner):
            inner = COMBINERS.build(inner, where="combiner.inner")
        refuse_multi_batch(inner, inside="blockwise", where="combiner.inner")
        self.inner = inner
        self.blocks = check_blocks(blocks, name=f"{WHERE}: blocks")
        self.layout: FlatLayout | None = None
        #: block name -> (column ranges, its own copy of `inner`)
        self.parts: dict[str, tuple[list[tuple[int, int]], Combiner]] = {}
        self._pending_state: dict[str, Any] = {}

    def group_names(self) -> list[str]:
        return self.inner.group_names()

    def use_layout(self, layout: FlatLayout) -> None:
        """Split the columns by parameter block (once per layout)."""
        if layout is self.layout:
            return
        ranges = block_spans(layout, self.blocks, where=WHERE)
        self.parts = {}
        for block, spans in ranges.items():
            inner = copy.deepcopy(self.inner)
            if block in self._pending_state:
                inner.load_state_dict(self._pending_state.pop(block))
            self.parts[block] = (spans, inner)
        self.layout = layout

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        if self.layout is None or self.layout.size != matrix.shape[1]:
            raise ConfigError("combiner 'blockwise' splits the columns by parameter, so it "
                              "needs the parameters' layout: Surgery gives it; before calling "
                              "it on a matrix yourself, call use_layout(FlatLayout.of(...))")
        assert self.names is not None
        out = torch.zeros(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
        info: dict[str, float] = {}
        named = set(self.inner.group_names())
        for block, (spans, inner) in self.parts.items():
            columns = block_columns(matrix, spans)
            block_gram = gramian(columns)
            active = [i for i in range(len(self.names)) if block_gram[i, i] > 0]
            if not active:
                continue
            names = [self.names[i] for i in active]
            rows = columns if len(active) == len(self.names) else columns[active]
            sub_gram = block_gram[active][:, active]
            info.update(block_facts(block, names, sub_gram.tolist()))
            if named <= set(names):
                result = inner(rows, names, gram=sub_gram)
                combined = result.gradient
                info.update({f"{block}/{key}": value for key, value in result.info.items()})
                info[f"blockwise/{block}/fallback"] = 0.0
            else:
                combined = rows.sum(dim=0)
                info[f"blockwise/{block}/fallback"] = 1.0
            start = 0
            for a, b in spans:
                out[a:b] = combined[start:start + b - a]
                start += b - a
        return Combined(out, info)

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": {block: inner.state_dict() for block, (_, inner) in self.parts.items()},
                **({"pending": self._pending_state} if self._pending_state else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        blocks = dict(state.get("blocks", {}))
        blocks.update(state.get("pending", {}))
        for block, (_, inner) in self.parts.items():
            if block in blocks:
                inner.load_state_dict(blocks.pop(block))
        self._pending_state = blocks  # blocks not laid out yet: applied by use_layout
