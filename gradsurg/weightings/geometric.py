"""Geometric loss strategy (GLS): train on the geometric mean of the groups' losses."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.weightings.base import WEIGHTINGS, LossWeighting, positive


@WEIGHTINGS.register
class Geometric(LossWeighting):
    """Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
    Strategy for Multi-Task Learning" (CVPR Workshops 2019), the geometric loss strategy:

        L = (prod_i L_i)^(1/k)

    Its gradient is sum_i w_i grad L_i with w_i = L / (k L_i), so group i's weighted loss is
    w_i L_i with w_i held constant: the weighted losses sum to exactly L and, under `sum`,
    give exactly grad L. A group whose loss is small gets a large weight: the relative, not
    the absolute, decrease of each loss counts. No state. Losses must be positive (they are
    floored at 1e-20).
    """

    name = "geometric"

    def weigh(self, losses: Tensor) -> Tensor:
        values = positive(losses)
        logs = torch.log(values)
        weights = torch.exp(logs.mean() - logs) / self.k  # G / (k L_i), without overflow
        return self._applied(weights, losses)
