"""Parameter blocks: sets of the flat vector's columns chosen by parameter name, and the
per-block cosines of the groups' gradients.

Shared by the combiner `blockwise` (each block combined on its own) and `Surgery(...,
conflict_blocks=...)` (each block's cosines logged, whatever the combiner): both split the
columns the same way and log the same keys, so a conflict map means the same from either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from torch import Tensor

from gradsurg.combiners.gramian import gramian
from gradsurg.errors import ConfigError
from gradsurg.params import FlatLayout

#: `per_layer`: parameters grouped by their name up to the first numbered part
#: (`encoder.layers.3.attention.query.weight` -> `encoder.layers.3`); the others form `other`.
PER_LAYER = "per_layer"
_NUMBERED = re.compile(r"^(.*?\.\d+)(\.|$)")

Blocks = str | list[str]
Spans = list[tuple[int, int]]
#: Logged by `Surgery(..., conflict_blocks=...)` each step: 1 when the step measured its block
#: cosines, 0 when it skipped the matrix (sum or mean between `diagnostics_every` steps). A log
#: line's mean is then the share of its steps measured, so a map counts measured steps, not
#: logged ones; a log without it (e.g. `blockwise`, which measures every step) counts all.
MEASURED_KEY = "conflict_blocks/measured"


def blocks_problem(blocks: object) -> str | None:
    """What is wrong with a `blocks` value (None: `per_layer` or a non-empty list of globs)."""
    if isinstance(blocks, str):
        return None if blocks == PER_LAYER else (f"must be {PER_LAYER!r} or a list of "
                                                 "parameter name globs")
    if (not isinstance(blocks, Sequence) or not blocks
            or not all(isinstance(b, str) and b for b in blocks)):
        return "must be a non-empty list of parameter name globs"
    return None


def check_blocks(blocks: object, *, name: str) -> Blocks:
    """`blocks` as a block spec; a bad one is a one-line error saying what `name` must be."""
    problem = blocks_problem(blocks)
    if problem is not None:
        raise ConfigError(f"{name} {problem}, got {blocks!r}")
    return blocks if isinstance(blocks, str) else list(blocks)  # type: ignore[arg-type]


def layer_of(name: str) -> str:
    match = _NUMBERED.match(name)
    return match.group(1) if match else "other"


def block_spans(layout: FlatLayout, blocks: Blocks, *, where: str) -> dict[str, Spans]:
    """Block name -> its column ranges in `layout` (adjacent parameters merged), in the
    order of the parameters. With globs every parameter must match exactly one, and every
    glob some parameter."""
    names = list(layout.names)
    if blocks == PER_LAYER:
        assignment = {name: layer_of(name) for name in names}
    else:
        assignment = {}
        for name in names:
            hits = [glob for glob in blocks if fnmatchcase(name, glob)]
            if len(hits) != 1:
                raise ConfigError(
                    f"{where}: parameter {name!r} matches "
                    f"{'no block' if not hits else f'several blocks {hits}'}; every "
                    "selected parameter must fall in exactly one of the blocks")
            assignment[name] = hits[0]
        for glob in blocks:
            if glob not in assignment.values():
                raise ConfigError(f"{where}: block {glob!r} matches no selected parameter")
    ranges: dict[str, Spans] = {}
    for name, start, shape in zip(names, layout.offsets, layout.shapes):
        spans = ranges.setdefault(assignment[name], [])
        end = start + shape.numel()
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)  # adjacent parameters: one slice
        else:
            spans.append((start, end))
    return ranges


def block_columns(matrix: Tensor, spans: Spans) -> Tensor:
    """The block's columns of `matrix` (a view when they are one slice)."""
    if len(spans) == 1:
        return matrix[:, spans[0][0]:spans[0][1]]
    return torch.cat([matrix[:, a:b] for a, b in spans], dim=1)


def block_facts(block: str, names: list[str], values: list[list[float]]) -> dict[str, float]:
    """`cosine/<block>/<a>/<b>` and `conflict/<block>/<a>/<b>` (1 when the cosine is
    negative, so its mean over steps is the share of steps in conflict) of every pair of the
    block's active groups, from their Gramian's entries."""
    facts: dict[str, float] = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            denominator = (values[i][i] * values[j][j]) ** 0.5
            cosine = values[i][j] / denominator if denominator > 0 else 0.0
            facts[f"cosine/{block}/{names[i]}/{names[j]}"] = cosine
            facts[f"conflict/{block}/{names[i]}/{names[j]}"] = float(cosine < 0)
    return facts


def active_facts(block: str, names: Sequence[str], gram: Tensor | list[list[float]]
                 ) -> dict[str, float]:
    """`block_facts` over the groups whose gradient is non-zero on the block (those that
    reach it this step)."""
    values = gram.tolist() if isinstance(gram, Tensor) else gram
    active = [i for i in range(len(names)) if values[i][i] > 0]
    return block_facts(block, [names[i] for i in active],
                       [[values[i][j] for j in active] for i in active])


class BlockGramians:
    """Each block's Gramian of a matrix's rows, the blocks laid out once per layout."""

    def __init__(self, blocks: object, *, where: str) -> None:
        self.blocks = check_blocks(blocks, name=where)
        self.where = where
        self.layout: FlatLayout | None = None
        self.spans: dict[str, Spans] = {}

    def __call__(self, matrix: Tensor, layout: FlatLayout) -> tuple[list[str], Tensor]:
        """The block names and their Gramians, `[blocks, k, k]` float64 (one pass over the
        matrix in all)."""
        if layout is not self.layout:
            self.spans = block_spans(layout, self.blocks, where=self.where)
            self.layout = layout
        grams = [gramian(block_columns(matrix, spans)) for spans in self.spans.values()]
        return list(self.spans), torch.stack(grams)
