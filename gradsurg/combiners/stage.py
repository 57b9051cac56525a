"""The combine stage: the combiner's gradient written into the selected parameters' `.grad`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from gradsurg.combiners.base import Combiner
from gradsurg.combiners.gramian import gramian
from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.engines import sharded_grad
from gradsurg.pipeline import Stage, StepGradients


class Combine(Stage):
    """Pipeline stage: `.grad` of the selected parameters <- combiner(matrix, names).

    Diagnostics: `grad_norm/<group>` and `cosine/<a>/<b>` (from the Gramian, one pass shared
    with the combiner), `grad_norm/combined`, and whatever the combiner reports under its own
    name (`project/fired`, `pcgrad/conflicts`, ...). After the one-backward shortcut of a
    fixed-weight combiner there is no matrix: the summed gradient is scaled instead.
    State: `combiner` (e.g. PCGrad's generator, GradVac's targets).
    """

    def __init__(self, combiner: Combiner, data_parallel: DataParallel = SINGLE_PROCESS) -> None:
        self.combiner = combiner
        #: Under FSDP2 (`sharded`) the rows are this rank's columns: the Gramian and the norm
        #: are summed over ranks, and each rank writes its shard of the combined gradient.
        self.data_parallel = data_parallel

    def run(self, step: StepGradients) -> None:
        if step.matrix is None:
            if step.shortcut_weight != 1.0:
                for p in step.layout.params:
                    if p.grad is not None:
                        p.grad.mul_(step.shortcut_weight)
            return
        names = list(step.names)
        if getattr(self.combiner, "needs_layout", False):  # e.g. blockwise: columns by block
            self.combiner.use_layout(step.layout)  # type: ignore[attr-defined]
        gram = gramian(step.matrix)  # one pass; shared by the combiner and diagnostics
        if self.data_parallel.sharded:
            self.data_parallel.all_reduce_(gram)  # k x k: the whole rows' Gramian on every rank
        combined = self.combiner(step.matrix, names, gram=gram)
        step.matrix = None  # the rows are spent; the buffer may be reused next step
        for p, view in zip(step.layout.params, step.layout.views(combined.gradient)):
            p.grad = sharded_grad(p, view)
        step.diagnostics.update(combined.info)
        step.diagnostics.update(gram_diagnostics(gram, names))
        step.diagnostics["grad_norm/combined"] = float(
            self.data_parallel.norm([combined.gradient]))

    def state_dict(self) -> dict[str, Any]:
        return {"combiner": self.combiner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.combiner.load_state_dict(dict(state["combiner"]))


def gram_diagnostics(gram: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per-group gradient norms and pairwise cosines from the Gramian (one device sync)."""
    values = gram.tolist()
    norms = [math.sqrt(max(values[i][i], 0.0)) for i in range(len(names))]
    out = {f"grad_norm/{name}": norms[i] for i, name in enumerate(names)}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            denominator = norms[i] * norms[j]
            cosine = values[i][j] / denominator if denominator > 0 else 0.0
            out[f"cosine/{names[i]}/{names[j]}"] = cosine
    return out
