"""`graddrop`: gradient sign dropout (Chen et al., NeurIPS 2020, "Just Pick a Sign")."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, SeededDraws


@COMBINERS.register
class GradDrop(SeededDraws, Combiner):
    """Per coordinate, keep only the groups whose sign a random draw favours; sum what is kept.

        P = 1/2 (1 + sum_i g_i / sum_i |g_i|)          (positive sign purity, per coordinate)
        U ~ Uniform[0, 1)                               (one draw per coordinate)
        M_i = [P > U] [g_i > 0] + [P < U] [g_i < 0]
        g = sum_i M_i g_i

    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing
    Deep Multitask Models with Gradient Sign Dropout" (NeurIPS 2020), Algorithm 1 without leak
    and with f the identity (torchjd's `GradDrop` defaults). The paper applies it to gradients
    at an activation layer summed over the batch; here, as in torchjd and LibMTL, to the
    selected parameters' gradients. Where all groups agree in sign P is 0 or 1 and the sum is
    kept whole; a coordinate where every group is 0 has P = 1/2 and stays 0.

    The output is a masked sum, on `sum`'s scale. U comes from a seeded CPU generator whose
    state is checkpointed (`state_dict`), like PCGrad's. Cost: per coordinate, it needs the
    matrix itself (no Gramian): a few passes over k x n and n uniform draws per step.
    """

    name = "graddrop"
    shard_refusal = ("it draws one random number per coordinate of the whole gradient from one "
                     "generator, which column shards would draw differently.")

    def __init__(self, *, seed: int = 0) -> None:
        self._seed(seed)

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        n = matrix.shape[1]
        total = matrix.sum(dim=0)
        magnitude = torch.zeros_like(total)
        for row in matrix:
            magnitude.add_(row.abs())
        agreement = torch.where(magnitude > 0, total / magnitude, torch.zeros_like(total))
        purity = 0.5 * (1.0 + agreement)
        draw = torch.rand(n, generator=self.generator, dtype=matrix.dtype).to(matrix.device)
        positive, negative = purity > draw, purity < draw
        out = torch.zeros_like(total)
        kept = torch.zeros((), dtype=torch.float64, device=matrix.device)
        for row in matrix:
            mask = torch.where(row > 0, positive, negative & (row < 0))
            out.add_(row * mask)
            kept += mask.sum()
        nonzero = float(sum(int(torch.count_nonzero(row)) for row in matrix))
        info = {"graddrop/kept": float(kept) / nonzero if nonzero else 1.0}
        return Combined(out, info)
