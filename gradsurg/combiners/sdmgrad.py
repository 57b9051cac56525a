"""`sdmgrad`: stochastic direction-oriented multi-objective gradient descent (Xiao, Ban &
Ji, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, is_real, require
from gradsurg.combiners.cross_batch import CrossBatchWeighting
from gradsurg.combiners.moco import project_to_simplex
from gradsurg.errors import ConfigError


@COMBINERS.register
class SDMGrad(CrossBatchWeighting):
    """MGDA's weights pulled toward a preferred direction, by projected SGD on two batches'
    cross matrix; the step from a third batch:

        A  = J1 J2^T / (s^2 + 1e-8),   s = mean_i sqrt(max(A_ii, 0))
        v  = A (w + lam p) (+ momentum v),   w <- Proj_simplex(w - lr v)   (n_iter times)
        g  = k J3^T (w + lam p) / (1 + lam)

    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms" (NeurIPS 2023), Algorithm 1 (SDMGrad): p is the preference vector
    (default 1/k: the target direction is the mean gradient) and lam how strongly the step is
    pulled toward J p (lam = 0: MGDA's weights; large: the preferred weighted sum). w starts
    at 1/k and carries over between steps. The normalization by s^2 (which makes lr free of
    the gradients' scale) and the momentum come from the official code (section 6.1 of the
    paper); momentum 0 is the paper's plain projected SGD with step lr / (s^2 + 1e-8).
    Defaults lr 10, momentum 0.5, n_iter 20, lam 0.3 (the authors' experiments; torchjd's).

    `preference`: `{group: weight}` naming every group (weights >= 0, not all 0), used as
    given. Needs three batches per step (`Surgery.backward([l1, l2, l3])`). State: w by group
    name. Cost: three batches' backward passes per step and n_iter k x k products.
    """

    name = "sdmgrad"

    def __init__(self, *, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20,
                 lam: float = 0.3, preference: Mapping[str, float] | None = None) -> None:
        require(is_real(lr) and lr > 0, self.name, "lr", "a finite number > 0", lr)
        require(is_real(momentum) and 0 <= momentum < 1, self.name, "momentum",
                "a number in [0, 1)", momentum)
        require(not isinstance(n_iter, bool) and isinstance(n_iter, int) and n_iter >= 1,
                self.name, "n_iter", "an integer >= 1", n_iter)
        require(is_real(lam) and lam >= 0, self.name, "lam", "a finite number >= 0", lam)
        if preference is not None:
            require(isinstance(preference, Mapping) and bool(preference)
                    and all(is_real(v) and v >= 0 for v in preference.values())
                    and any(v > 0 for v in preference.values()),
                    self.name, "preference",
                    "a {group: weight} mapping with weights >= 0, not all 0", preference)
        super().__init__()
        self.lr, self.momentum, self.n_iter, self.lam = (float(lr), float(momentum), n_iter,
                                                         float(lam))
        self.preference = (None if preference is None
                           else {str(g): float(v) for g, v in preference.items()})
        self.preferred = torch.zeros(0, dtype=torch.float64)

    def group_names(self) -> list[str]:
        return sorted(self.preference or {})

    def resolve(self, names: list[str]) -> None:
        super().resolve(names)
        if self.preference is None:
            self.preferred = torch.full((len(names),), 1.0 / max(len(names), 1),
                                        dtype=torch.float64)
            return
        missing = [name for name in names if name not in self.preference]
        unknown = sorted(set(self.preference) - set(names))
        if missing or unknown:
            raise ConfigError(
                f"combiner 'sdmgrad': preference must give a weight to each loss group "
                f"{names} and to no other; " + (f"missing {missing}" if missing else
                                               f"{unknown} are not among them"))
        self.preferred = torch.tensor([self.preference[name] for name in names],
                                      dtype=torch.float64)

    def step(self, cross: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
        scale = cross.diagonal().clamp_min(0).sqrt().mean()
        normalized = cross / (scale**2 + 1e-8)
        pull = self.lam * self.preferred
        w, velocity = kept, None
        for _ in range(self.n_iter):
            grad = normalized @ (w + pull)
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = project_to_simplex(w - self.lr * velocity)
        return w, (w + pull) / (1 + self.lam)
