"""Smooth Tchebycheff scalarization: a smooth maximum of the normalized log-losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradsurg.weightings.base import (
    WEIGHTINGS,
    LossWeighting,
    check_number,
    check_preference,
    positive,
)


@WEIGHTINGS.register
class STCH(LossWeighting):
    """Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization" (ICML 2024), eq. (9):

        g_mu(x | lambda) = mu log sum_i exp(lambda_i (f_i(x) - z*_i) / mu)

    applied as the paper's multi-task experiments do (its official code, STCH_MTL): the
    objectives are the log-losses normalized by a nadir point, f_i = log(L_i / n_i), with the
    ideal point z* = 0 in that space, and the result is scaled by k:  L = k g_mu. The nadir
    n_i is group i's mean loss over the last of `warmup_epochs` warm-up epochs, during which
    the model trains on sum_i log L_i (equal weights on the log-losses). The gradient is
    sum_i w_i grad L_i with w_i = k p_i lambda_i / L_i, p = softmax(lambda * f / mu), so
    group i's weighted loss is w_i L_i with w_i held constant; in warm-up, w_i = 1 / L_i.
    `preference` is lambda (default all 1, as the official code); small `mu` approaches the
    plain Tchebycheff max, large `mu` an equal weighting of the log-losses.
    State (buffers): epochs seen, the warm-up sums, the nadir point.
    """

    name = "stch"

    def __init__(self, groups: Sequence[str], *, mu: float = 1.0, warmup_epochs: int = 1,
                 preference: Sequence[float] | None = None) -> None:
        super().__init__(groups)
        self.mu = check_number(mu, name=self.name, key="mu", low=0)
        self.warmup_epochs = int(check_number(warmup_epochs, name=self.name,
                                              key="warmup_epochs", low=1, low_open=False,
                                              integer=True))
        preference = check_preference(preference, name=self.name, groups=self.groups)
        k = self.k
        self.register_buffer("preference", torch.tensor(preference, dtype=torch.float64))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sums", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("nadir", torch.ones(k, dtype=torch.float64))
        self.register_buffer("has_nadir", torch.zeros((), dtype=torch.bool))

    def weigh(self, losses: Tensor) -> Tensor:
        values = positive(losses)
        if not bool(self.has_nadir):
            return self._applied(1.0 / values, losses)
        preference = self.preference.to(values.device)
        f = torch.log(values / self.nadir.to(values.device))
        p = torch.softmax(preference * f / self.mu, dim=0)
        return self._applied(self.k * p * preference / values, losses)

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        if int(self.epochs) == self.warmup_epochs - 1:  # the last warm-up epoch
            self.sums += losses.to(self.sums)
            self.count += 1

    def epoch_end(self) -> None:
        self.epochs += 1
        if int(self.epochs) == self.warmup_epochs and int(self.count) > 0:
            self.nadir.copy_(self.sums / self.count)
            self.has_nadir.fill_(True)

    def describe(self) -> dict[str, float]:
        facts = super().describe()
        if bool(self.has_nadir):
            facts.update({f"nadir/{g}": float(v) for g, v in zip(self.groups,
                                                                  self.nadir.tolist())})
        return facts
