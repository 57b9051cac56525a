"""IMTL-L: learned loss scales that make every scaled loss equal to one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradsurg.weightings.base import (
    WEIGHTINGS,
    LossWeighting,
    check_initial_weight,
    check_number,
)


@WEIGHTINGS.register
class IMTLL(LossWeighting):
    """Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), the loss balance IMTL-L:

        L = sum_i exp(s_i) L_i - s_i

    d/ds_i = exp(s_i) L_i - 1 = 0 at exp(s_i) L_i = 1: the scales drive every scaled loss
    towards 1, so no group dominates by its loss's size. s is a parameter (`scales`, starting
    at `init`) trained by the model's optimizer; group i's row is exp(s_i) grad L_i.
    """

    name = "imtll"

    def __init__(self, groups: Sequence[str], *, init: float = 0.0) -> None:
        super().__init__(groups)
        init = check_number(init, name=self.name, key="init")
        check_initial_weight(math.exp(min(init, 1000.0)), name=self.name, key="init",
                             value=init, formula=f"e^{init:g}")
        self.scales = nn.Parameter(torch.full((self.k,), init))

    def weigh(self, losses: Tensor) -> Tensor:
        s = self.scales.to(losses.dtype)
        return torch.exp(s) * losses - s

    def weights(self) -> Tensor:
        return torch.exp(self.scales.detach().to(torch.float64)).cpu()

    def describe(self) -> dict[str, float]:
        values = self.scales.detach().tolist()
        return {**super().describe(),
                **{f"scale/{g}": float(v) for g, v in zip(self.groups, values)}}
