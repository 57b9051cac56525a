"""`dbmtl`: DB-MTL's gradient-magnitude balancing (Lin et al., 2023, "Dual-Balancing")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, is_real, require
from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.combiners.tracking import TrackedRows


@COMBINERS.register
class DBMTL(Combiner):
    """Running averages of the group gradients, each stretched to the longest one, summed.

        m_i <- beta m_i + (1 - beta) g_i                 (m_i = 0 before the first step)
        g   = sum_i (max_j ||m_j|| / ||m_i||) m_i

    Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029,
    2023), the gradient-magnitude half; its loss-scale half (log losses) is a loss weighting,
    not a combiner. The averages start at 0 as in the paper's code (LibMTL), so the first
    step's output is (1 - beta) times the balanced sum of the gradients. `beta` defaults to
    0.9 (LibMTL's DB_beta); LibMTL's optional beta / step^sigma decay is not included. A
    zero average has no direction and gets weight 0.

    Scale: every average takes the largest one's length (the largest norm, not the paper's
    mean), summed: on `sum`'s scale; identical rows give (1 - beta^t) times their sum after t
    steps. State (`state_dict`): the averages by group name, k x n numbers. Cost: per
    coordinate: k x n extra memory, one pass to update it, and its Gramian.
    """

    name = "dbmtl"
    shard_refusal = ("its k x n running averages and their norms would have to be sharded "
                     "and reduced too (not implemented).")

    def __init__(self, *, beta: float = 0.9) -> None:
        require(is_real(beta) and 0 <= beta < 1, self.name, "beta", "a number in [0, 1)", beta)
        self.beta = float(beta)
        self.tracked = TrackedRows(rate=1.0 - self.beta, start="zero")

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        averages = self.tracked.update(matrix)
        averaged_gram = gramian(averages)
        norms = averaged_gram.diagonal().clamp_min(0).sqrt()
        top = norms.max() if norms.numel() else torch.zeros((), dtype=torch.float64)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        weights = torch.where(norms > 0, top / safe, torch.zeros_like(norms))
        info = {"dbmtl/largest_stretch": float(weights.max()) if weights.numel() else 0.0}
        return Combined(weighted_rows(weights, averages, averaged_gram), info)

    def resolve(self, names: list[str]) -> None:
        self.tracked.bind(names)

    def state_dict(self) -> dict[str, Any]:
        return self.tracked.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracked.load_state_dict(state)
        self.names = self.tracked.names  # the averages' groups are the binding now
