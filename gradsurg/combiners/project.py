"""`project`: GEM / A-GEM-style one-sided projection, as RomeBERT's gradient regularization."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting, row_index
from gradsurg.errors import ConfigError


@COMBINERS.register
class Project(GramianWeighting):
    """Project the target group's gradient off the reference's when they conflict.

    With target t and reference r:
        if g_t . g_r < 0:  g_t <- g_t - (g_t . g_r / ||g_r||^2) g_r
        g = g_t + g_r + sum of all other groups
    Only the target moves; the reference is kept whole. RomeBERT's paper projects the final
    exit's gradient (target `final`) against self-distillation's (reference `sd`); its code
    does the reverse on MNLI and QQP, which is `target: sd, reference: final` here.
    """

    name = "project"

    def __init__(self, *, target: str, reference: str) -> None:
        if target == reference:
            raise ConfigError(f"combiner 'project': target and reference are both {target!r}")
        self.target = target
        self.reference = reference

    def group_names(self) -> list[str]:
        return [self.target, self.reference]

    def resolve(self, names: list[str]) -> None:
        self.rows = (row_index(names, self.target, role="target", combiner=self.name),
                     row_index(names, self.reference, role="reference", combiner=self.name))

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        t, r = self.rows
        coefficient = projection_coefficient(gram, t, r)
        weights = torch.ones(gram.shape[0], dtype=torch.float64, device=gram.device)
        weights[r] -= coefficient
        return weights, {"project/fired": float(coefficient != 0.0)}


def projection_coefficient(gram: Tensor, t: int, r: int) -> float:
    """c such that the projected target is g_t - c g_r: (g_t . g_r) / ||g_r||^2 on conflict, else 0.

    Kept separate from the row weights because 1 - c rounds away a small c, while g_t - c g_r
    does not: tests check the projection itself through this number.
    """
    dot, reference_sq = gram[t, r].item(), gram[r, r].item()
    return dot / reference_sq if dot < 0 and reference_sq > 0 else 0.0
