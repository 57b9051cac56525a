"""`rlw`: random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting, SeededDraws


@COMBINERS.register
class RLW(SeededDraws, GramianWeighting):
    """The rows weighted by fresh random weights every step.

        z ~ N(0, I_k),   w = k softmax(z),   g = sum_i w_i g_i

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning" (TMLR 2022), with the normal distribution and softmax the paper
    uses by default (torchjd's `Random`). The paper's weights sum to 1 (`mean`'s scale);
    here to k, on `sum`'s scale, so one group keeps its gradient and identical rows give
    their sum on every draw. The output depends on which row gets which draw, so it is not
    invariant to the order of the rows, only equal in distribution.

    z comes from a seeded CPU generator whose state is checkpointed. Cost: no solve; the
    Gramian is used only to form the weighted sum safely over the whole float range.
    """

    name = "rlw"

    def __init__(self, *, seed: int = 0) -> None:
        self._seed(seed)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0]
        draw = torch.randn(k, generator=self.generator, dtype=torch.float64)
        weights = k * torch.softmax(draw, dim=0)
        info = {f"rlw/weight/{name}": float(w) for name, w in zip(self.names or [], weights)}
        return weights.to(gram.device), info
