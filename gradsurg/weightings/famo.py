"""FAMO: task weights adapted after every step so that all losses fall at the same rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.weightings.base import WEIGHTINGS, LossWeighting, check_number

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@WEIGHTINGS.register
class FAMO(LossWeighting):
    """Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS 2023).

    With task logits xi (zeros at the start), z = softmax(xi) and the losses shifted by `eps`,
    D_i = L_i + eps, the model steps along (Algorithm 1, line "update theta")

        d = sum_i c z_i / D_i * grad L_i,    c = (sum_j z_j / D_j)^(-1)

    so group i's weighted loss is (c z_i / D_i) L_i with the weight held constant: the weights
    sum to 1 (the paper's convex combination, i.e. mean scale, not `sum`'s). After the step
    the same batch is evaluated again, delta_i = log D_i(before) - log D_i(after), and

        xi <- xi - lr * step(J_z(xi)^T delta + weight_decay * xi)

    where `step` is Adam (`optimizer: adam`, default: the paper's Algorithm 2 and official
    code, lr 0.025, weight decay 1e-3) or the identity (`optimizer: sgd`: Algorithm 1 with
    beta = lr, gamma = weight_decay). A group whose loss fell less gets more weight. O(1) in
    the number of parameters: one extra forward pass without gradients per step, no per-group
    gradients. A non-finite loss change leaves xi as it is. State (buffers): xi and Adam's
    moments and step count.
    """

    name = "famo"
    needs_losses_after_step = True

    def __init__(self, groups: Sequence[str], *, lr: float = 0.025, weight_decay: float = 1e-3,
                 optimizer: Literal["adam", "sgd"] = "adam", eps: float = 1e-8) -> None:
        super().__init__(groups)
        self.lr = check_number(lr, name=self.name, key="lr", low=0)
        self.weight_decay = check_number(weight_decay, name=self.name, key="weight_decay",
                                         low=0, low_open=False)
        self.eps = check_number(eps, name=self.name, key="eps", low=0)
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"weighting 'famo': optimizer={optimizer!r} is invalid; "
                              "allowed: adam, sgd")
        self.optimizer = optimizer
        k = self.k
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def task_weights(self) -> Tensor:
        """z = softmax(xi)."""
        return torch.softmax(self.logits, dim=0)

    def weigh(self, losses: Tensor) -> Tensor:
        shifted = losses.detach().to(torch.float64) + self.eps
        ratio = self.task_weights().to(shifted.device) / shifted
        return self._applied(ratio / ratio.sum(), losses)

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        if after is None:
            raise ValueError("FAMO.step_end needs the losses re-evaluated after the step")
        before = losses.to(self.logits)
        after = after.to(self.logits)
        delta = torch.log(before + self.eps) - torch.log(after + self.eps)
        if not bool(torch.isfinite(delta).all()):
            return  # a diverged re-evaluation must not poison the logits for good
        z = self.task_weights()
        grad = z * (delta - (z * delta).sum())  # J_z^T delta; J = diag(z) - z z^T
        grad = grad + self.weight_decay * self.logits
        if self.optimizer == "sgd":
            self.logits -= self.lr * grad
            return
        self.updates += 1
        beta1, beta2 = ADAM_BETAS
        t = int(self.updates)
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        corrected = self.exp_avg / (1 - beta1**t)
        scale = (self.exp_avg_sq / (1 - beta2**t)).sqrt() + ADAM_EPS
        self.logits -= self.lr * corrected / scale

    def describe(self) -> dict[str, float]:
        z = self.task_weights().tolist()
        return {**super().describe(), **{f"z/{g}": float(v) for g, v in zip(self.groups, z)}}
