"""`cr_mogm`: CR-MOGM's moving average of another combiner's weights (Zhou et al. 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import (
    COMBINERS,
    Combined,
    Combiner,
    DtypeAwareWeighting,
    GramianWeighting,
    is_real,
    refuse_multi_batch,
    require,
)
from gradsurg.combiners.gramian import weighted_rows
from gradsurg.errors import ConfigError


@COMBINERS.register
class CRMOGM(GramianWeighting):
    """Another combiner's row weights, smoothed across steps by an exponential moving average.

        w_hat_t = the weights `inner` picks at step t (its output is w_hat_t @ G)
        w_t     = alpha w_{t-1} + (1 - alpha) w_hat_t,   w_0 = w_hat_1 (or `initial`)
        g       = w_t @ G

    Zhou, Zhang, Jiang, Yang & Ye, "On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond" (NeurIPS 2022), the correction that makes MGDA-style weights
    converge under stochastic gradients; torchjd 0.18's `CRMOGMWeighting` (alpha 0.9 by
    default, the first step's weights as the start unless `initial` is given). `inner`
    (default `upgrad`) must choose weights from the Gramian (`mgda`, `upgrad`, `dualproj`,
    `imtlg`, `cagrad`, `nash_mtl`, ...) or be fixed-weight (`sum`, `mean`); its state is kept
    too. The paper lets alpha grow towards 1 as the learning rate decays (Corollary 1); here
    it is fixed. Scale: that of `inner` (k times torchjd's for the mean-scaled ones). State
    (`state_dict`): the smoothed weights by group name and `inner`'s state; a group not seen
    before starts from its current weight.
    """

    name = "cr_mogm"
    nested = ("inner",)

    def __init__(self, *, inner: Combiner | str | Mapping[str, Any] = "upgrad",
                 alpha: float = 0.9, initial: Mapping[str, float] | None = None) -> None:
        if not isinstance(inner, Combiner):
            inner = COMBINERS.build(inner, where="combiner.inner")
        refuse_multi_batch(inner, inside="cr_mogm", where="combiner.inner")
        fixed = type(inner).linear_weights is not Combiner.linear_weights  # sum, mean
        if not isinstance(inner, GramianWeighting) and not fixed:
            raise ConfigError(f"combiner 'cr_mogm': inner {inner.name!r} does not pick row "
                              "weights (it must weigh the rows, e.g. mgda, upgrad, sum)")
        require(is_real(alpha) and 0 <= alpha <= 1, self.name, "alpha", "a number in [0, 1]",
                alpha)
        if initial is not None:
            require(isinstance(initial, Mapping) and all(is_real(v) for v in initial.values()),
                    self.name, "initial", "a {group: weight} mapping", initial)
        self.inner, self.alpha = inner, float(alpha)
        self.initial = None if initial is None else {str(g): float(v) for g, v in initial.items()}
        self.smoothed: dict[str, float] = {}  # by group name

    def group_names(self) -> list[str]:
        return sorted(set(self.inner.group_names()) | set(self.initial or {}))

    def resolve(self, names: list[str]) -> None:
        self.inner.bind(names)
        if self.initial is not None and set(self.initial) != set(names):
            raise ConfigError(f"combiner 'cr_mogm': initial must give a weight for each loss "
                              f"group {names}, got {sorted(self.initial)}")

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        assert gram is not None and self.names is not None
        fresh, info = self._inner_weights(matrix, gram)
        start = self.initial if self.initial is not None and not self.smoothed else {}
        previous = torch.tensor(
            [self.smoothed.get(g, start.get(g, float(w))) for g, w in zip(self.names, fresh)],
            dtype=torch.float64)
        weights = self.alpha * previous + (1 - self.alpha) * fresh
        self.smoothed = {**self.smoothed, **dict(zip(self.names, weights.tolist()))}
        info = {f"cr_mogm/{key.replace('/', '.')}": value for key, value in info.items()}
        info["cr_mogm/change"] = float((weights - fresh).abs().sum())
        return Combined(weighted_rows(weights, matrix, gram), info)

    def _inner_weights(self, matrix: Tensor, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        fixed = self.inner.linear_weights()
        if fixed is not None:
            return torch.tensor(fixed, dtype=torch.float64), {}
        if isinstance(self.inner, DtypeAwareWeighting):
            weights, info = self.inner.weights_for(gram, matrix.dtype)
        else:
            assert isinstance(self.inner, GramianWeighting)
            weights, info = self.inner.weights(gram)
        return weights.detach().to(device="cpu", dtype=torch.float64), info

    def state_dict(self) -> dict[str, Any]:
        names = sorted(self.smoothed)
        return {"names": names,
                "weights": torch.tensor([self.smoothed[g] for g in names], dtype=torch.float64),
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(g) for g in state["names"]]
        weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu()
        if weights.shape != (len(names),):
            raise ValueError(f"cr_mogm state: {tuple(weights.shape)} weights for "
                             f"{len(names)} groups")
        self.smoothed = dict(zip(names, weights.tolist()))
        self.inner.load_state_dict(state["inner"])
