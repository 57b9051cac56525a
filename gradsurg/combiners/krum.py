"""`krum`: Krum / Multi-Krum, Byzantine-robust selection of gradients (Blanchard et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting, require
from gradsurg.errors import ConfigError


@COMBINERS.register
class Krum(GramianWeighting):
    """The group gradients closest to their neighbours, averaged; on `sum`'s scale.

        score(i) = sum of the k - f - 2 smallest ||g_i - g_j||^2 over j != i
        S        = the m rows of lowest score
        g        = k * (1/m) sum_{i in S} g_i

    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent" (NeurIPS 2017): Krum (m = 1) and Multi-Krum (m = `n_selected`)
    with f = `n_byzantine` rows that may be arbitrary; it needs k >= f + 3 groups (checked
    when the groups are bound). Distances come from the Gramian, in float64. Rows tied in score
    at the cut share the places left equally, so the output does not depend on the rows'
    order (torchjd keeps the lower row; the two differ only on such ties).

    Differences: the paper scores by squared distances; torchjd 0.18's `Krum` sums the plain
    distances (`squared: false` here gives its selection). The output is k times the paper's
    (the mean of the selected rows), to be on `sum`'s scale like the other combiners. Meant
    for many similar groups (workers, shards), not for a few losses that disagree: with loss
    groups it discards the ones farthest from the rest.
    """

    name = "krum"

    def __init__(self, *, n_byzantine: int = 0, n_selected: int = 1,
                 squared: bool = True) -> None:
        for option, value, low in (("n_byzantine", n_byzantine, 0), ("n_selected", n_selected, 1)):
            require(not isinstance(value, bool) and isinstance(value, int) and value >= low,
                    self.name, option, f"an integer >= {low}", value)
        require(isinstance(squared, bool), self.name, "squared", "true or false", squared)
        self.n_byzantine, self.n_selected, self.squared = n_byzantine, n_selected, squared

    def resolve(self, names: list[str]) -> None:
        needed = max(self.n_byzantine + 3, self.n_selected)
        if len(names) < needed:
            raise ConfigError(f"combiner 'krum': needs at least {needed} loss groups "
                              f"(n_byzantine + 3 and n_selected), got {names}")

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        gram = gram.detach().to(device="cpu", dtype=torch.float64)
        k = gram.shape[0]
        squares = gram.diagonal()
        distances = (squares[:, None] + squares[None, :] - 2 * gram).clamp_min(0)
        if not self.squared:
            distances = distances.sqrt()
        closest = k - self.n_byzantine - 2
        others = distances + torch.diag(torch.full((k,), torch.inf, dtype=torch.float64))
        scores = others.sort(dim=1).values[:, :closest].sum(dim=1)
        # The n_selected lowest scores; rows tied at the cut share the places left, so the
        # result does not depend on the rows' order (torchjd keeps the lower row instead).
        # (scores within rounding of each other, 1e-9 of the largest, count as tied)
        cut = torch.sort(scores).values[self.n_selected - 1]
        slack = 1e-9 * float(scores[torch.isfinite(scores)].abs().max().clamp_min(1e-300))
        below, tied = scores < cut - slack, (scores - cut).abs() <= slack
        weights = torch.zeros(k, dtype=torch.float64)
        weights[below] = k / self.n_selected
        places = self.n_selected - int(below.sum())
        weights[tied] = k / self.n_selected * places / int(tied.sum())
        info = {"krum/selected_first": float(torch.argmin(scores))}
        return weights, info
