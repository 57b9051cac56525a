"""`gradvac`: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting, SeededDraws
from gradsurg.combiners.pcgrad import shuffled_pairs
from gradsurg.combiners.qp import cosine_matrix
from gradsurg.errors import ConfigError


@COMBINERS.register
class GradVac(SeededDraws, GramianWeighting):
    """PCGrad with adaptive targets: each pair of groups is pushed towards the cosine it has
    had on average, instead of only away from conflict.

        for i: g_i' = g_i; for j in shuffled(others):
            phi = cos(g_i', g_j);  t = phi_hat[i, j]
            if phi < t:
                g_i' <- g_i' + ||g_i'|| (t sqrt(1 - phi^2) - phi sqrt(1 - t^2))
                                / (||g_j|| sqrt(1 - t^2)) * g_j      (now cos(g_i', g_j) = t)
            phi_hat[i, j] <- (1 - beta) t + beta phi
        g = sum_i g_i'

    Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
    Massively Multilingual Models" (ICLR 2021), Algorithm 1, with one parameter group (the
    whole model; the paper also keeps separate targets per layer). The targets phi_hat start
    at 0, which makes the first step exactly PCGrad with the same visiting order; phi is
    measured on the current g_i' before its correction. As in PCGrad, the output is the sum of
    the modified rows (the scale of `sum`).

    `beta` is the EMA rate of the targets (the paper's beta; its value 1e-2 is the default
    here, while LibMTL and torchjd default to 0.5). The order comes from a seeded generator.
    The generator and the targets are state (`state_dict`), kept per pair of group names: a
    pair not seen before starts at 0. Pairs involving a zero gradient have no cosine and are
    skipped (no correction, no EMA update); a target of exactly +-1 cannot be reached by a
    finite correction, so the correction is skipped then too.
    """

    name = "gradvac"

    def __init__(self, *, beta: float = 0.01, seed: int = 0) -> None:
        if (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float))
            or not math.isfinite(beta)
            or not 0.0 <= beta <= 1.0
        ):
            raise ConfigError(f"combiner 'gradvac': beta must be a number in [0, 1], got {beta!r}")
        self.beta = float(beta)
        self._seed(seed)
        self.targets = torch.zeros(0, 0, dtype=torch.float64)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0]
        norms, cosines = cosine_matrix(gram)
        # row i of `unit` holds g_i' in the unit directions u_m = g_m / ||g_m||
        unit = torch.diag(norms)
        corrections = 0
        for i, j in shuffled_pairs(k, self.generator):
            if norms[j] == 0:
                continue
            row = unit[i]
            norm = math.sqrt(max(float(row @ cosines @ row), 0.0))
            size = float(row.abs().sum())
            if norm <= 1e-7 * size or norm == 0.0:  # g_i' is 0 up to rounding: no angle
                continue
            phi = min(max(float(row @ cosines[:, j]) / norm, -1.0), 1.0)
            target = float(self.targets[i, j])
            if phi < target:
                target_sine = math.sqrt(max(1.0 - target * target, 0.0))
                if target_sine > 0:
                    sine = math.sqrt(max(1.0 - phi * phi, 0.0))
                    # in units of u_j = g_j / ||g_j||: the paper's factor times ||g_j||
                    unit[i, j] += norm * (target * sine - phi * target_sine) / target_sine
                    corrections += 1
            self.targets[i, j] = (1.0 - self.beta) * target + self.beta * phi
        added = (unit - torch.diag(norms)).sum(dim=0)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        weights = 1.0 + torch.where(norms > 0, added / safe, torch.zeros_like(added))
        off_diagonal = ~torch.eye(k, dtype=torch.bool)
        info = {
            "gradvac/corrections": float(corrections),
            "gradvac/mean_target": float(self.targets[off_diagonal].mean()) if k > 1 else 0.0,
        }
        return weights.to(gram.device), info

    def resolve(self, names: list[str]) -> None:
        """Re-key the targets to the new binding, keeping the pairs already known."""
        if names == self.names:
            return
        old = {name: index for index, name in enumerate(self.names or [])}
        targets = torch.zeros(len(names), len(names), dtype=torch.float64)
        for a, first in enumerate(names):
            for b, second in enumerate(names):
                if first in old and second in old:
                    targets[a, b] = self.targets[old[first], old[second]]
        self.targets = targets

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "names": list(self.names or []),
            "targets": self.targets.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        targets = torch.as_tensor(state["targets"], dtype=torch.float64).cpu()
        if targets.shape != (len(names), len(names)):
            raise ValueError(
                f"gradvac state: targets of shape {tuple(targets.shape)} for {len(names)} groups"
            )
        super().load_state_dict(state)
        self.names, self.targets = names, targets.clone()
