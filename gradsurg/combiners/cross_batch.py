"""The shape shared by `sdmgrad` and `modo`: simplex weights from two independent batches'
gradients, the direction from a third batch's.

Both methods estimate MGDA-like weights from the product of two batches' Jacobians,
A = J1 J2^T (row i of J_b: group i's gradient on batch b). With one batch, A would be the
Gramian J J^T, whose expectation is not E[J] E[J]^T: the weights would follow the noise
(the bias both papers remove). The step itself then uses a third batch's rows, so the weights
are independent of the gradients they weigh. That is why such a combiner needs three batches
per optimizer step (`batches_per_step`) and its matrix is the three batches' rows stacked,
`[3k, n]`; the stacked Gramian holds A as its (batch 1, batch 2) block, so nothing extra is
computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import GramianWeighting


class CrossBatchWeighting(GramianWeighting):
    """Weights `w` (on the simplex, summing to 1) from A = J1 J2^T; the output is k w @ J3,
    on the sum's scale (torchjd's weightings return w, the mean's).

    A weighting of the rows chosen from their Gramian (zero for batches 1 and 2), so it is
    exact on column shards. State: the weights kept between steps, by group name.
    """

    batches_per_step = 3

    def __init__(self) -> None:
        self.kept = torch.zeros(0, dtype=torch.float64)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0] // 3
        cross = gram[:k, k : 2 * k].to(device="cpu", dtype=torch.float64)
        start = self.kept if self.kept.numel() == k else torch.full((k,), 1.0 / max(k, 1),
                                                                    dtype=torch.float64)
        self.kept, simplex = self.step(cross, start)
        weights = torch.zeros(3 * k, dtype=torch.float64)
        weights[2 * k :] = k * simplex
        info = {f"{self.name}/largest_weight": float(simplex.max()) if k else 0.0}
        return weights.to(gram.device), info

    def step(self, cross: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
        """(the weights to keep for the next step, the weights of this step's direction)
        from the float64 cross matrix and the kept weights."""
        raise NotImplementedError

    def resolve(self, names: list[str]) -> None:
        if names != self.names:  # other groups: the weights start again from 1/k
            self.kept = torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names or []), "weights": self.kept.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu()
        if weights.numel() not in (0, len(names)):
            raise ValueError(f"{self.name} state: {weights.numel()} weights for "
                             f"{len(names)} groups")
        self.resolve(names)
        self.names, self.kept = names, weights.clone()
