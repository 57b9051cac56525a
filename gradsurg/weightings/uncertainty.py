"""Uncertainty weighting: each group's loss scaled by a learned homoscedastic variance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError
from gradsurg.weightings.base import (
    WEIGHTINGS,
    LossWeighting,
    check_initial_weight,
    check_number,
)


@WEIGHTINGS.register
class Uncertainty(LossWeighting):
    """Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics" (CVPR 2018), eq. (7) with the paper's s_i := log sigma_i^2:

        half=True  (default):  L = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i
                               (= 1/(2 sigma_i^2) L_i + log sigma_i, the paper's eq. 7)
        half=False:            L = sum_i exp(-s_i) L_i + s_i   (the common simplification)

    Both have the same minimizer in s (s_i = log L_i); the second is twice the first. s is a
    parameter (`log_vars`, starting at `init`) trained by the model's optimizer; each group's
    row is exp(-s_i) grad L_i (times 0.5 with `half`). Weight logged: that multiplier.
    """

    name = "uncertainty"

    def __init__(self, groups: Sequence[str], *, half: bool = True, init: float = 0.0) -> None:
        super().__init__(groups)
        if not isinstance(half, bool):
            raise ConfigError(f"weighting 'uncertainty': half={half!r} is invalid; allowed: "
                              "true or false")
        self.half = half
        init = check_number(init, name=self.name, key="init")
        factor = 0.5 if half else 1.0
        check_initial_weight(factor * math.exp(-max(init, -1000.0)), name=self.name,
                             key="init", value=init,
                             formula=f"{'0.5 ' if half else ''}e^-({init:g})")
        self.log_vars = nn.Parameter(torch.full((self.k,), init))

    def weigh(self, losses: Tensor) -> Tensor:
        s = self.log_vars.to(losses.dtype)
        weighted = torch.exp(-s) * losses + s
        return 0.5 * weighted if self.half else weighted

    def weights(self) -> Tensor:
        with torch.no_grad():
            multiplier = torch.exp(-self.log_vars.detach().to(torch.float64)).cpu()
        return 0.5 * multiplier if self.half else multiplier

    def describe(self) -> dict[str, float]:
        values = self.log_vars.detach().tolist()
        return {**super().describe(),
                **{f"log_var/{g}": float(v) for g, v in zip(self.groups, values)}}
