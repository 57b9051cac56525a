"""`excess_mtl`: ExcessMTL's weights from each group's estimated excess risk (He et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, is_real, require
from gradsurg.combiners.gramian import weighted_rows

#: Added to the accumulated squares before the root, and to the baseline before dividing.
EPSILON = 1e-7


@COMBINERS.register
class ExcessMTL(Combiner):
    """Weights moved by exponentiated gradient towards the groups far from their optimum.

        S_i   <- S_i + g_i * g_i                      (per coordinate, from 0)
        E_i    = sum_c g_ic^2 / sqrt(S_ic + 1e-7)     (excess risk, diagonal AdaGrad Hessian)
        a     <- softmax(log a + eta E_i / (E0_i + 1e-7)),   a = 1/k at the start
        g      = k * sum_i a_i g_i

    He et al., "Robust Multi-Task Learning with Excess Risks" (ICML 2024, PMLR 235),
    eqs. 6, 7 and 9, as torchjd 0.18's `ExcessMTL`: E0 is the first step's E (the official
    code's behaviour; that first step then uses E itself, not the ratio), or, with
    `warmup_steps` W > 0, the mean of E over W steps during which the weights stay uniform
    (the paper's Appendix C.1). `eta` is the robust step size (default 1). The weights start at
    1/k as in the paper (the official code and LibMTL start at 1). Scale: k times torchjd's
    (uniform weights give `sum`). State (`state_dict`): S (k x n, the input's dtype), the
    weights, E0 and the warm-up sums, by group name; a group seen for the first time starts
    fresh (S = 0, weight 1/k renormalized, E0 from its next step). Cost: per coordinate: k x n
    extra memory and two passes.
    """

    name = "excess_mtl"
    shard_refusal = ("its excess risks sum over every coordinate of a k x n running state, "
                     "which would have to be sharded and reduced too (not implemented).")

    def __init__(self, *, eta: float = 1.0, warmup_steps: int = 0) -> None:
        require(is_real(eta) and eta > 0, self.name, "eta", "a finite number > 0", eta)
        require(not isinstance(warmup_steps, bool) and isinstance(warmup_steps, int)
                and warmup_steps >= 0, self.name, "warmup_steps", "an integer >= 0",
                warmup_steps)
        self.eta, self.warmup_steps = float(eta), warmup_steps
        self.squares: Tensor | None = None  # [k, n]
        self.logits = torch.zeros(0, dtype=torch.float64)  # log a, up to a constant
        self.baseline = torch.full((0,), math.nan, dtype=torch.float64)  # E0 (nan: not yet)
        self.warmup_sums = torch.zeros(0, dtype=torch.float64)
        self.steps = 0

    def resolve(self, names: list[str]) -> None:
        old = {name: i for i, name in enumerate(self.names or [])}
        k = len(names)
        logits = torch.full((k,), math.log(1.0 / k), dtype=torch.float64)
        baseline = torch.full((k,), math.nan, dtype=torch.float64)
        sums = torch.zeros(k, dtype=torch.float64)
        rows = []
        for i, name in enumerate(names):
            if name in old and old[name] < self.logits.numel():
                j = old[name]
                logits[i], baseline[i], sums[i] = self.logits[j], self.baseline[j], \
                    self.warmup_sums[j]
            rows.append(old.get(name))
        if self.squares is not None:
            fresh = torch.zeros(k, self.squares.shape[1], dtype=self.squares.dtype)
            for i, j in enumerate(rows):
                if j is not None and j < self.squares.shape[0]:
                    fresh[i] = self.squares[j]
            self.squares = fresh
        self.logits = logits - torch.logsumexp(logits, 0) if k else logits
        self.baseline, self.warmup_sums = baseline, sums

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        k, n = matrix.shape
        if self.squares is None:
            self.squares = torch.zeros(k, n, dtype=matrix.dtype, device=matrix.device)
        if self.squares.shape != (k, n):
            raise ValueError(f"excess_mtl: the selected parameters changed ({self.squares.shape[1]}"
                             f" -> {n} numbers); its per-coordinate state cannot follow")
        self.squares = self.squares.to(matrix.device)
        self.squares.addcmul_(matrix, matrix)
        excess = torch.zeros(k, dtype=torch.float64)
        for start in range(0, n, 1 << 20):
            rows = matrix[:, start : start + (1 << 20)].to(torch.float64)
            sums = self.squares[:, start : start + (1 << 20)].to(torch.float64)
            excess += (rows * rows / torch.sqrt(sums + EPSILON)).sum(dim=1).cpu()
        self.steps += 1
        info = {"excess_mtl/warming_up": 0.0}
        if self.steps <= self.warmup_steps:
            self.warmup_sums += excess
            info["excess_mtl/warming_up"] = 1.0
        else:
            new = torch.isnan(self.baseline)
            if self.warmup_steps > 0:
                start_values = self.warmup_sums / self.warmup_steps
                self.baseline = torch.where(new, start_values, self.baseline)
                ratio = excess / (self.baseline + EPSILON)
            else:
                ratio = torch.where(new, excess, excess / (self.baseline + EPSILON))
                self.baseline = torch.where(new, excess, self.baseline)
            logits = self.logits + self.eta * ratio
            self.logits = logits - torch.logsumexp(logits, 0)
        weights = k * torch.softmax(self.logits, 0)
        info["excess_mtl/max_weight"] = float(weights.max()) / k
        return Combined(weighted_rows(weights, matrix, gram), info)

    def state_dict(self) -> dict[str, Any]:
        squares = self.squares if self.squares is not None else torch.zeros(0, 0)
        return {"names": list(self.names or []), "squares": squares.detach().cpu().clone(),
                "logits": self.logits.clone(), "baseline": self.baseline.clone(),
                "warmup_sums": self.warmup_sums.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        squares = torch.as_tensor(state["squares"])
        self.squares = squares.clone() if squares.numel() else None
        self.logits = torch.as_tensor(state["logits"], dtype=torch.float64).clone()
        self.baseline = torch.as_tensor(state["baseline"], dtype=torch.float64).clone()
        self.warmup_sums = torch.as_tensor(state["warmup_sums"], dtype=torch.float64).clone()
        self.steps = int(state["steps"])
        self.names = names or None
