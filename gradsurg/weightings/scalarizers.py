"""Preference scalarizations of the loss vector: PBI (MOEA/D) and COSMOS."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.weightings.base import (
    WEIGHTINGS,
    LossWeighting,
    check_number,
    check_preference,
    per_group_numbers,
)

#: Added under PBI's square root so its gradient stays finite on the preference ray (torchjd's).
PBI_EPSILON = 1e-12


class PreferenceScalarization(LossWeighting):
    """A scalarization f(L; r) of the losses with a preference vector r, applied as weights:
    group i's weighted loss is w_i L_i with w_i = df/dL_i held constant, so the rows the
    combiner receives are the scalarization's gradient split by group (under `sum`, exactly
    grad f). r is `preference` (one positive number per group, default all 1), or, with
    `resample: true`, drawn from a Dirichlet(`concentration`) after every optimizer step from
    a generator seeded by `seed` (the papers resample to cover the Pareto front). State
    (buffers): the current preference and the generator's state."""

    def __init__(self, groups: Sequence[str], *, preference: Sequence[float] | None = None,
                 resample: bool = False, concentration: float = 1.0, seed: int = 0) -> None:
        super().__init__(groups)
        preference = check_preference(preference, name=self.name, groups=self.groups)
        if not isinstance(resample, bool):
            raise ConfigError(f"weighting {self.name!r}: resample={resample!r} is invalid; "
                              "allowed: true or false")
        self.resample = resample
        self.concentration = check_number(concentration, name=self.name, key="concentration",
                                          low=0)
        seed = int(check_number(seed, name=self.name, key="seed", integer=True))
        self.register_buffer("preference", torch.tensor(preference, dtype=torch.float64))
        self.register_buffer("generator_state", torch.Generator().manual_seed(seed).get_state())

    def scalarize(self, values: Tensor, preference: Tensor) -> Tensor:
        """f(L; r) on float64 values; differentiated to get the weights."""
        raise NotImplementedError

    def weigh(self, losses: Tensor) -> Tensor:
        values = losses.detach().to(device="cpu", dtype=torch.float64).requires_grad_()
        with torch.enable_grad():
            (weights,) = torch.autograd.grad(self.scalarize(values, self.preference.cpu()),
                                             values)
        return self._applied(weights.to(losses.device), losses)

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        if not self.resample:
            return
        generator = torch.Generator()
        generator.set_state(self.generator_state)
        gammas = torch._standard_gamma(torch.full((self.k,), self.concentration,
                                                  dtype=torch.float64), generator=generator)
        self.preference.copy_(gammas / gammas.sum())
        self.generator_state.copy_(generator.get_state())

    @property
    def current_preference(self) -> Tensor:
        """The ray this step weighs by, scaled to sum 1 (a point of the simplex, as the
        Dirichlet draws are): what a preference-conditioned model is fed this step. Read it
        before `surgery.backward`; the step's end draws the next one (`resample`)."""
        return (self.preference / self.preference.sum()).detach().clone()

    def describe(self) -> dict[str, float]:
        facts = super().describe()
        facts.update({f"preference/{g}": float(v)
                      for g, v in zip(self.groups, self.preference.tolist())})
        return facts


def check_reference(reference: object, *, name: str, groups: Sequence[str]) -> list[float]:
    """PBI's reference point: one finite number per loss group (default all 0)."""
    return per_group_numbers(reference, name=name, key="reference", groups=groups,
                             default=0.0)


@WEIGHTINGS.register
class PBI(PreferenceScalarization):
    """Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition"
    (IEEE TEC 2007), penalty-based boundary intersection around the reference point z:

        d1 = (L - z) . r_hat,   d2 = ||L - z - d1 r_hat||,   f = d1 + theta d2,
        r_hat = r / ||r||

    `theta` (default 5, the paper's) penalizes the distance to the preference ray. With
    theta > 1 a loss below its share of the ray gets a negative weight (the penalty pulls the
    losses onto the ray, raising the lower one): meant for steering towards one trade-off,
    as in MOEA/D, not for minimizing every loss; on the digits recipe theta 2 sent the final
    exit to chance. As in
    torchjd 0.18's `PBI`, 1e-12 is added under d2's square root so the gradient stays finite
    on the ray. `reference` is z (one finite number per group; default 0, torchjd's `None`,
    which suits non-negative losses): MOEA/D's ideal point, a lower bound on the losses. It
    is configuration, not state (no buffer), so checkpoints keep their keys. See
    `PreferenceScalarization` for how f becomes weights.
    """

    name = "pbi"

    def __init__(self, groups: Sequence[str], *, theta: float = 5.0,
                 reference: Sequence[float] | None = None, **options) -> None:
        super().__init__(groups, **options)
        self.theta = check_number(theta, name=self.name, key="theta", low=0, low_open=False)
        self.reference = torch.tensor(check_reference(reference, name=self.name,
                                                      groups=self.groups), dtype=torch.float64)

    def scalarize(self, values: Tensor, preference: Tensor) -> Tensor:
        values = values - self.reference
        direction = preference / preference.norm()
        along = values @ direction
        perpendicular = values - along * direction
        return along + self.theta * torch.sqrt(perpendicular @ perpendicular + PBI_EPSILON)


@WEIGHTINGS.register
class COSMOS(PreferenceScalarization):
    """Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning" (ICDM 2021), the COSMOS objective:

        f = r . L - lambda cos(r, L)

    `lambda_` (default 1; the paper uses 0.01 to 8) rewards losses aligned with the
    preference. The paper also feeds r to the model as an input, sampled per step: with
    `resample: true`, `current_preference` is the step's ray, for `PreferenceConditioned`
    (any model) or the multi-exit recipe key `preference_conditioning`. See
    `PreferenceScalarization` for how f becomes weights.
    """

    name = "cosmos"

    def __init__(self, groups: Sequence[str], *, lambda_: float = 1.0, **options) -> None:
        super().__init__(groups, **options)
        self.lambda_ = check_number(lambda_, name=self.name, key="lambda_", low=0,
                                    low_open=False)

    def scalarize(self, values: Tensor, preference: Tensor) -> Tensor:
        cosine = (preference @ values) / (preference.norm() * values.norm().clamp_min(1e-300))
        return preference @ values - self.lambda_ * cosine
