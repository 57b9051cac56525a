"""`balanced_sum`: every group's gradient rescaled to the groups' mean norm, then summed."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import GramianWeighting


class BalancedSum(GramianWeighting):
    """Sum of the non-zero rows, each first rescaled to the mean of their norms.

        n_i = ||g_i||,   S = {i : n_i > 0},   m = mean_{i in S} n_i
        g   = sum_{i in S} (m / n_i) g_i

    A one-shot magnitude balance: a group whose loss happens to be large cannot dominate the
    step, nor can a small one be drowned, while the step keeps the groups' typical size.
    The direction is the sum of the unit directions, so rescaling one group changes only the
    length of the step (through m). Zero rows have no direction and add nothing; all-zero
    input gives 0. The weights are ratios of norms read off the Gramian's float64 diagonal,
    so they stay finite for rows of any scale.
    """

    name = "balanced_sum"
    #: shown by `gradsurg plugins`
    tested_against = "a numpy reference; scale properties; installed through its entry point"

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        norms = gram.diagonal().clamp_min(0).sqrt()
        nonzero = norms > 0
        weights = torch.zeros_like(norms)
        spread = 1.0
        if bool(nonzero.any()):
            active = norms[nonzero]
            weights[nonzero] = active.mean() / active
            spread = float(active.max() / active.min())
        info = {"balanced_sum/zero_rows": float((~nonzero).sum()),
                "balanced_sum/norm_spread": spread}  # largest / smallest non-zero norm
        return weights, info
