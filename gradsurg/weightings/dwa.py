"""Dynamic Weight Average: weights from how fast each loss fell over the last two epochs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradsurg.weightings.base import WEIGHTINGS, LossWeighting, check_number


@WEIGHTINGS.register
class DWA(LossWeighting):
    """Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (CVPR 2019), DWA:

        lambda_i(t) = K exp(w_i(t-1) / T) / sum_j exp(w_j(t-1) / T),
        w_i(t-1)    = L_i(t-1) / L_i(t-2)

    L_i(t) is group i's mean training loss over epoch t (the mean of the steps' global-batch
    losses, as the paper's code averages them); K = the number of groups, so the weights sum
    to K (`sum`'s scale); T = `temperature` (the paper's 2). In epochs 1 and 2 every weight
    is 1. A group whose loss fell less than the others' gets more weight. State (buffers):
    the last two epoch means, the running sum of the current epoch, the weights.
    """

    name = "dwa"

    def __init__(self, groups: Sequence[str], *, temperature: float = 2.0) -> None:
        super().__init__(groups)
        self.temperature = check_number(temperature, name=self.name, key="temperature", low=0)
        k = self.k
        self.register_buffer("current", torch.ones(k, dtype=torch.float64))
        self.register_buffer("history", torch.ones(2, k, dtype=torch.float64))  # t-2, t-1
        self.register_buffer("epochs", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sums", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def weigh(self, losses: Tensor) -> Tensor:
        return self._applied(self.current.to(losses.device), losses)

    def weights(self) -> Tensor:
        return self.current.detach().cpu().clone()

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        self.sums += losses.to(self.sums)
        self.count += 1

    def epoch_end(self) -> None:
        if int(self.count) == 0:
            return
        mean = self.sums / self.count
        self.history.copy_(torch.stack([self.history[1], mean]))
        self.epochs += 1
        self.sums.zero_()
        self.count.zero_()
        if int(self.epochs) >= 2:
            ratios = self.history[1] / self.history[0]
            self.current.copy_(self.k * torch.softmax(ratios / self.temperature, dim=0))
