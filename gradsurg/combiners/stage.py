"""The combine stage: the combiner's gradient written into the selected parameters' `.grad`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import Combiner
from gradsurg.combiners.blocks import MEASURED_KEY, BlockGramians, active_facts
from gradsurg.combiners.gramian import gramian
from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.engines import sharded_grad
from gradsurg.errors import GradsurgError
from gradsurg.pipeline import Stage, StepGradients


class Combine(Stage):
    """Pipeline stage: `.grad` of the selected parameters <- combiner(matrix, names).

    Diagnostics: `grad_norm/<group>` and `cosine/<a>/<b>` (from the Gramian, one pass shared
    with the combiner), `grad_norm/combined`, and whatever the combiner reports under its own
    name (`project/fired`, `pcgrad/conflicts`, ...). After the one-backward shortcut of a
    fixed-weight combiner there is no matrix: the summed gradient is scaled instead.
    With `blocks` (`Surgery(..., conflict_blocks=...)`), also `cosine/<block>/<a>/<b>` and
    `conflict/<block>/<a>/<b>` of the groups reaching each block, read off the matrix before
    the combiner runs, so the update is the same with or without them, and `MEASURED_KEY`
    (1 on such a step, 0 on one without a matrix or with a non-finite row).
    State: `combiner` (e.g. PCGrad's generator, GradVac's targets).

    A multi-batch step (`step.batches` b > 1, rows `<group>@<batch>`): the combiner gets the
    stacked matrix with the groups' names; `grad_norm/<group>` and the cosines describe the
    mean of the b batches' rows (the same keys as a one-batch step); parameters outside the
    selection hold the sum over b batches, divided by b here (one batch's scale).
    """

    def __init__(self, combiner: Combiner, data_parallel: DataParallel = SINGLE_PROCESS, *,
                 blocks: BlockGramians | None = None) -> None:
        self.combiner = combiner
        self.blocks = blocks
        #: Under FSDP2 (`sharded`) the rows are this rank's columns: the Gramian and the norm
        #: are summed over ranks, and each rank writes its shard of the combined gradient.
        self.data_parallel = data_parallel

    def run(self, step: StepGradients) -> None:
        if self.blocks is not None:  # 1 once `_block_facts` has measured this step
            step.diagnostics[MEASURED_KEY] = 0.0
        if step.matrix is None:
            if step.shortcut_weight != 1.0:
                for p in step.layout.params:
                    if p.grad is not None:
                        p.grad.mul_(step.shortcut_weight)
            return
        names = list(step.names)
        groups = names if step.batches == 1 else [
            name.rpartition("@")[0] for name in names[: len(names) // step.batches]]
        if getattr(self.combiner, "needs_layout", False):  # e.g. blockwise: columns by block
            self.combiner.use_layout(step.layout)  # type: ignore[attr-defined]
        gram = gramian(step.matrix)  # one pass; shared by the combiner and diagnostics
        if self.data_parallel.sharded:
            self.data_parallel.all_reduce_(gram)  # k x k: the whole rows' Gramian on every rank
            gram = (gram + gram.T) / 2  # the ranks' partial sums round apart; keep it symmetric
        step.bad_rows = nonfinite_rows(step.matrix, gram, names,
                                       confirm=not self.data_parallel.sharded)
        if step.bad_rows:
            # No combiner sees a NaN/inf row: some would drop it and return a finite step,
            # some fail inside torch, stateful ones would keep it. The selected gradients are
            # NaN instead, so the non-finite rule skips (raises, or hands the step to a
            # GradScaler) alike for every combiner, and `ignore` applies what the sum would.
            gradient = step.matrix.new_full((step.matrix.shape[1],), float("nan"))
            info: dict[str, float] = {}
        else:
            block_info = self._block_facts(step, groups)  # before a combiner may reuse rows
            combined = self.combiner(step.matrix, groups, gram=gram)
            gradient, info = combined.gradient, {**combined.info, **block_info}
        step.matrix = None  # the rows are spent; the buffer may be reused next step
        for p, view in zip(step.layout.params, step.layout.views(gradient)):
            p.grad = sharded_grad(p, view)
        if step.batches > 1:
            for p in step.outside:
                if p.grad is not None:
                    p.grad.div_(step.batches)
        step.diagnostics.update(info)
        step.diagnostics.update(gram_diagnostics(batch_mean_gramian(gram, step.batches),
                                                 groups))
        step.diagnostics["grad_norm/combined"] = float(self.data_parallel.norm([gradient]))

    def _block_facts(self, step: StepGradients, groups: list[str]) -> dict[str, float]:
        """Each block's cosines and conflicts. Under FSDP2 a rank's block columns are its
        shards of the block's parameters, so the ranks' block Gramians sum to the whole
        block's: one all-reduce of all of them makes them exact (as for the whole Gramian)."""
        if self.blocks is None:
            return {}
        assert step.matrix is not None
        blocks, grams = self.blocks(step.matrix, step.layout)
        if self.data_parallel.sharded:
            self.data_parallel.all_reduce_(grams)
            grams = (grams + grams.transpose(1, 2)) / 2
        values = batch_mean_gramian(grams, step.batches).tolist()  # one device sync
        info: dict[str, float] = {MEASURED_KEY: 1.0}
        for block, gram in zip(blocks, values):
            info.update(active_facts(block, groups, gram))
        return info

    def state_dict(self) -> dict[str, Any]:
        return {"combiner": self.combiner.state_dict(), "combiner_name": self.combiner.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The combiner's state; one from another combiner is refused by name (a state saved
        before the name was recorded, by its keys), not a bare KeyError."""
        name = self.combiner.name
        saved = state.get("combiner_name")
        if saved is not None and saved != name:
            raise GradsurgError(f"surgery state: saved by combiner {saved!r}, cannot be loaded "
                                f"into combiner {name!r}; build the Surgery with {saved!r}")
        if "combiner" not in state:
            raise GradsurgError("surgery state: no 'combiner' entry; not a Surgery.state_dict()")
        try:
            self.combiner.load_state_dict(dict(state["combiner"]))
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
            raise GradsurgError(
                f"surgery state: does not fit combiner {name!r} ({type(error).__name__}: "
                f"{str(error)[:120]}); was it saved by another combiner?") from None


def nonfinite_rows(matrix: Tensor, gram: Tensor, names: Sequence[str], *,
                   confirm: bool = True) -> list[str]:
    """The groups whose row holds a NaN or inf, read off the Gramian's diagonal (finite for
    every finite row: it is computed in float64 on rescaled rows when it must be), each
    suspect confirmed on its row (`confirm=False` under FSDP2, where a rank holds only its
    columns and the summed Gramian is what every rank agrees on)."""
    diagonal = gram.diagonal()
    if bool(torch.isfinite(diagonal).all()):
        return []
    suspects = (~torch.isfinite(diagonal)).nonzero().flatten().tolist()
    return [names[i] for i in suspects
            if not confirm or not bool(torch.isfinite(matrix[i]).all())]


def batch_mean_gramian(gram: Tensor, batches: int) -> Tensor:
    """The Gramian of the mean of `batches` stacked batches' rows, from theirs (of each
    Gramian in a stack `[..., b k, b k]`)."""
    if batches == 1:
        return gram
    k = gram.shape[-1] // batches
    lead = gram.shape[:-2]
    return gram.reshape(*lead, batches, k, batches, k).sum(dim=(-4, -2)) / batches**2


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
