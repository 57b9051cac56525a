"""`nash_mtl`: the Nash bargaining step (Navon et al., ICML 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting, require
from gradsurg.combiners.cagrad import gramian_precision
from gradsurg.combiners.fair_utility import fair_weights


@COMBINERS.register
class NashMTL(DtypeAwareWeighting):
    """The step every group would agree to: the Nash bargaining solution over the ball.

        d* = argmax_{||d|| <= eps} sum_i log(g_i . d)
        d* = sum_i a_i g_i  with  G a = 1 / a   (elementwise)

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game" (ICML 2022), Algorithm 1. Each group's utility is log(g_i . d), so the
    direction ignores how long each g_i is; the system is solved on the cosine matrix by
    Newton's method (`gradsurg.combiners.fair_utility`, exact to a 1e-12 residual) rather than
    the paper's 20 rounds of convex programs, warm-started from the previous step's solution.

    Scaling: the paper steps along d* itself, whose length is fixed in utility units
    (a^T G a = k), not comparable to `sum`. Here the weights are a normalized so that
    sum_i w_i ||g_i|| = sum_i ||g_i||: the direction of d*, with identical rows (and
    orthogonal rows of equal length) giving their plain sum. When 0 is in the convex hull of
    the unit directions no step helps every group and the output is 0 (info
    `nash_mtl/stationary`); zero rows get weight 0. The paper's `max_norm` clipping is left to
    the clipping stage.

    `update_every` is the paper's update_weights_every: the weights are solved every that many
    steps and reused in between (for speed). State (`state_dict`): the step count, the last
    weights and solution, keyed by group names. Cost: the Gramian, one min-norm QP and a
    Newton solve (typically 5-15 k x k solves) per update.
    """

    name = "nash_mtl"

    def __init__(self, *, update_every: int = 1) -> None:
        require(
            not isinstance(update_every, bool) and isinstance(update_every, int)
            and update_every >= 1,
            self.name, "update_every", "an integer >= 1", update_every,
        )
        self.update_every = update_every
        self.steps = 0
        self.last_weights = torch.zeros(0, dtype=torch.float64)
        self.last_solution = torch.zeros(0, dtype=torch.float64)

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        known = self.last_solution.numel() == gram.shape[0]  # solved for these groups
        reuse = known and self.steps % self.update_every != 0
        self.steps += 1
        if reuse:
            info = {"nash_mtl/updated": 0.0, "nash_mtl/stationary": 0.0,
                    "nash_mtl/iterations": 0.0, "nash_mtl/residual": 0.0}
            return self.last_weights.to(gram.device), info
        start = self.last_solution if known else None
        weights, solution, facts = fair_weights(
            gram, alpha=1.0, precision=gramian_precision(dtype), start=start
        )
        self.last_weights, self.last_solution = weights, solution
        info = {"nash_mtl/updated": 1.0, **{f"nash_mtl/{key}": v for key, v in facts.items()}}
        return weights.to(gram.device), info

    def resolve(self, names: list[str]) -> None:
        if names != self.names:  # other groups: no weights to reuse or warm-start from
            self.last_weights = torch.zeros(0, dtype=torch.float64)
            self.last_solution = torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "names": list(self.names or []),
            "weights": self.last_weights.clone(),
            "solution": self.last_solution.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu()
        solution = torch.as_tensor(state["solution"], dtype=torch.float64).cpu()
        if weights.shape != (len(names),) or solution.shape != (len(names),):
            raise ValueError(f"nash_mtl state: weights for {len(names)} groups expected")
        self.steps = int(state["steps"])
        self.names, self.last_weights, self.last_solution = names, weights, solution
